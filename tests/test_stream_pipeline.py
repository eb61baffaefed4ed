"""The worker's pipeline (astro_classifier/stream/pipeline.py): order, overlap, commit only
after delivery, failures that cancel later batches, drain on stop.

1. The :class:`Pipeline` with fake stages (plain functions that record what they were
   called with; the deliver fake's "commit" is the list of batches it delivered).
2. The worker's own loop (:meth:`StreamWorker._loop`) with fake Kafka clients and a fake
   processor, pipelined and serial, at-least-once and exactly-once: offsets committed in
   order, only after the outputs below them are acknowledged, the consumer used by one
   thread only, a failed batch read again.
3. The real worker with ``pipeline: false`` against a real broker
   (test_the_serial_worker_still_classifies_every_alert_once); the pipelined real worker is
   covered by the other real-broker tests (tests/test_stream_worker.py and others), which
   run the default ``pipeline: true``.
"""

from __future__ import annotations

import threading
import time

import pytest

from astro_classifier.stream.pipeline import Cancelled, Pipeline


class Stages:
    """Fake classify/deliver stages; ``committed`` is the order batches were delivered in."""

    def __init__(self, classify_s: float = 0.0, deliver_s: float = 0.0) -> None:
        self.classify_s = classify_s
        self.deliver_s = deliver_s
        self.classified: list[int] = []
        self.committed: list[int] = []
        self.threads: set[str] = set()
        self.fail_classify: set[int] = set()
        self.fail_deliver: set[int] = set()
        self.active = 0
        self.most_active = 0
        self._lock = threading.Lock()

    def _enter(self) -> None:
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            self.threads.add(threading.current_thread().name)

    def _leave(self) -> None:
        with self._lock:
            self.active -= 1

    def classify(self, messages, decoded):
        self._enter()
        try:
            time.sleep(self.classify_s)
            batch = messages[0]
            if batch in self.fail_classify:
                raise RuntimeError(f"classify of {batch} failed")
            self.classified.append(batch)
            return ("result", batch, decoded)
        finally:
            self._leave()

    def deliver(self, messages, result, _context=None):
        self._enter()
        try:
            assert result[1] == messages[0]  # the result of this very batch
            time.sleep(self.deliver_s)
            if messages[0] in self.fail_deliver:
                raise RuntimeError(f"delivery of {messages[0]} failed")
            self.committed.append(messages[0])
            return ("delivered", messages[0])
        finally:
            self._leave()


def run(pipeline: Pipeline, batches: int) -> list:
    """What the worker's loop does: submit, collecting the oldest when the pipeline is full;
    then drain. Returns the finished batches in collection order."""
    finished = []
    for n in range(batches):
        while pipeline.full:
            finished.append(pipeline.next_finished(block=True))
        pipeline.submit([n], f"decoded {n}")
    while pipeline.in_flight:
        finished.append(pipeline.next_finished(block=True))
    return finished


@pytest.mark.parametrize("overlap", [True, False])
def test_batches_are_delivered_and_collected_in_order(overlap: bool) -> None:
    stages = Stages(classify_s=0.002, deliver_s=0.001)
    pipeline = Pipeline(stages.classify, stages.deliver, overlap=overlap)
    try:
        finished = run(pipeline, 20)
    finally:
        pipeline.close()
    assert stages.committed == list(range(20))
    assert [b.messages[0] for b in finished] == list(range(20))
    for batch in finished:
        outcome = batch.future.result()
        assert outcome.delivered == ("delivered", batch.messages[0])
        assert outcome.result == ("result", batch.messages[0], f"decoded {batch.messages[0]}")
    if overlap:
        assert stages.threads == {"astroclf-classify", "astroclf-deliver"}
    else:
        assert stages.threads == {threading.current_thread().name}


def test_classify_and_deliver_overlap_and_memory_stays_bounded() -> None:
    stages = Stages(classify_s=0.05, deliver_s=0.05)
    pipeline = Pipeline(stages.classify, stages.deliver, overlap=True, max_in_flight=2)
    most_in_flight = 0
    started = time.perf_counter()
    try:
        for n in range(10):
            while pipeline.full:
                pipeline.next_finished(block=True)
            pipeline.submit([n], None)
            most_in_flight = max(most_in_flight, pipeline.in_flight)
        while pipeline.in_flight:
            pipeline.next_finished(block=True)
    finally:
        pipeline.close()
    seconds = time.perf_counter() - started
    assert stages.most_active == 2  # one batch classified while the previous one is delivered
    assert most_in_flight == 2  # bounded: the consuming thread waited for the oldest
    assert seconds < 0.9, seconds  # serial: 10 x (0.05 + 0.05) = 1.0 s; overlapped ~0.55 s


def test_on_delivered_runs_on_the_deliver_thread_before_the_batch_is_finished() -> None:
    """The worker's metrics are recorded there: with exactly-once the deliver thread commits
    the transaction, and the counters must not lag it. A failure to record never fails a
    delivered batch."""
    seen = []

    def on_delivered(messages, outcome):
        seen.append((messages[0], threading.current_thread().name))
        if messages[0] == 1:
            raise ValueError("a metric went wrong")

    pipeline = Pipeline(
        lambda m, d: ("result", m[0]),
        lambda m, r, c: ("delivered", m[0]),
        on_delivered=on_delivered,
    )
    try:
        finished = run(pipeline, 3)
    finally:
        pipeline.close()
    assert seen == [(n, "astroclf-deliver") for n in range(3)]
    outcomes = [b.future.result() for b in finished]  # none of them failed
    assert [o.delivered for o in outcomes] == [("delivered", n) for n in range(3)]
    assert isinstance(outcomes[1].record_error, ValueError)
    assert outcomes[0].record_error is None and outcomes[2].record_error is None


def test_a_submit_past_the_bound_is_refused() -> None:
    release = threading.Event()
    pipeline = Pipeline(lambda m, d: release.wait(5), lambda m, r, c: None, max_in_flight=2)
    try:
        pipeline.submit([0], None)
        pipeline.submit([1], None)
        assert pipeline.full
        with pytest.raises(RuntimeError, match="collect one first"):
            pipeline.submit([2], None)
    finally:
        release.set()
        pipeline.close()


def test_a_delivery_is_never_started_before_the_previous_one_ends() -> None:
    """One deliver thread: batch N+1's produce and commit cannot overtake batch N's (offsets
    in order per partition; with transactions, one transaction at a time)."""
    order: list[tuple[str, int]] = []

    def deliver(messages, _result, _context):
        order.append(("start", messages[0]))
        time.sleep(0.01)
        order.append(("end", messages[0]))

    pipeline = Pipeline(lambda m, d: (None, m[0]), deliver, overlap=True)
    try:
        run(pipeline, 6)
    finally:
        pipeline.close()
    assert order == [(what, n) for n in range(6) for what in ("start", "end")]


@pytest.mark.parametrize("stage", ["classify", "deliver", "decode"])
def test_a_failure_cancels_every_later_batch_and_commits_nothing_past_it(stage: str) -> None:
    stages = Stages(classify_s=0.01, deliver_s=0.01)
    if stage == "classify":
        stages.fail_classify.add(3)
    elif stage == "deliver":
        stages.fail_deliver.add(3)
    pipeline = Pipeline(stages.classify, stages.deliver, overlap=True, max_in_flight=3)
    failed = None
    try:
        for n in range(8):
            while pipeline.full and failed is None:
                batch = pipeline.next_finished(block=True)
                if batch.future.exception() is not None:
                    failed = batch
            if failed is not None:
                break
            decoded = RuntimeError("decode of 3 failed") if stage == "decode" and n == 3 else None
            pipeline.submit([n], decoded)
        while failed is None and pipeline.in_flight:
            batch = pipeline.next_finished(block=True)
            if batch.future.exception() is not None:
                failed = batch
        assert failed is not None and failed.messages == [3]
        assert isinstance(failed.future.exception(), RuntimeError)
        later = pipeline.discard()
        assert pipeline.in_flight == 0
        assert all(isinstance(b.future.exception(), Cancelled) for b in later)
        assert [b.messages[0] for b in later] == list(range(4, 4 + len(later)))
        assert stages.committed == [0, 1, 2]  # nothing at or past the failed batch
        # After discard() the pipeline accepts batches again (the worker read them again).
        stages.fail_classify.clear()
        stages.fail_deliver.clear()
        pipeline.submit([3], None)
        assert pipeline.next_finished(block=True).future.result().delivered == ("delivered", 3)
        assert stages.committed == [0, 1, 2, 3]
    finally:
        pipeline.close()


def test_an_earlier_batch_in_delivery_still_finishes_when_a_later_one_fails() -> None:
    stages = Stages(deliver_s=0.1)
    stages.fail_classify.add(1)
    pipeline = Pipeline(stages.classify, stages.deliver, overlap=True)
    try:
        pipeline.submit([0], None)
        pipeline.submit([1], None)
        first = pipeline.next_finished(block=True)
        assert first.future.result().delivered == ("delivered", 0)
        second = pipeline.next_finished(block=True)
        assert isinstance(second.future.exception(), RuntimeError)
        assert stages.committed == [0]
    finally:
        pipeline.close()


def test_wait_idle_drains_everything_submitted_as_a_rebalance_and_a_stop_do() -> None:
    stages = Stages(classify_s=0.02, deliver_s=0.02)
    pipeline = Pipeline(stages.classify, stages.deliver, overlap=True, max_in_flight=3)
    beats = []
    pipeline.beat = lambda: beats.append(1)
    try:
        for n in range(3):
            pipeline.submit([n], None)
        pipeline.wait_idle()
        assert stages.committed == [0, 1, 2]  # delivered before the partitions would go
        assert pipeline.in_flight == 3  # still there for the loop to collect and count
        assert beats  # the waiting thread stays alive for /healthz
        assert [pipeline.next_finished(block=False).messages[0] for _ in range(3)] == [0, 1, 2]
        assert pipeline.next_finished(block=False) is None
    finally:
        pipeline.close()


def test_drop_pending_cancels_what_has_not_started_then_accepts_batches_again() -> None:
    release = threading.Event()
    delivered = []

    def deliver(messages, _result, _context):
        release.wait(5)
        delivered.append(messages[0])

    pipeline = Pipeline(lambda m, d: (None, m[0]), deliver, overlap=True, max_in_flight=3)
    try:
        for n in range(3):
            pipeline.submit([n], None)
        time.sleep(0.05)  # batch 0 is in delivery, 1 and 2 wait
        threading.Timer(0.05, release.set).start()
        pipeline.drop_pending()  # partitions lost
        outcomes = [pipeline.next_finished(block=False) for _ in range(3)]
        assert outcomes[0].future.exception() is None  # under way: finished
        assert all(isinstance(b.future.exception(), Cancelled) for b in outcomes[1:])
        assert delivered == [0]
        pipeline.submit([3], None)
        assert pipeline.next_finished(block=True).future.exception() is None
        assert delivered == [0, 3]
    finally:
        pipeline.close()


def test_close_cancels_queued_batches_and_ends_the_threads() -> None:
    stages = Stages(classify_s=0.05)
    pipeline = Pipeline(stages.classify, stages.deliver, overlap=True, max_in_flight=4)
    for n in range(4):
        pipeline.submit([n], None)
    pipeline.close(timeout_s=2.0)
    assert len(stages.committed) <= 1  # at most the batch under way when close() came
    assert not [t for t in threading.enumerate() if t.name.startswith("astroclf-")]


def test_after_close_a_stuck_stage_never_blocks_a_drain() -> None:
    """Closing the consumer runs the revoke callback, which drains: after close() a stage
    stuck for good (a hung delivery) must not hold the worker's exit."""
    stuck = threading.Event()
    pipeline = Pipeline(lambda m, d: None, lambda m, r, c: stuck.wait(10), overlap=True)
    pipeline.submit([0], None)
    time.sleep(0.05)
    started = time.perf_counter()
    pipeline.close(timeout_s=0.1)
    pipeline.wait_idle()
    pipeline.drop_pending()
    assert time.perf_counter() - started < 1.0
    assert pipeline.finished_in_order() == []  # nothing unfinished is ever committed
    stuck.set()


def test_the_pipeline_setting_defaults_on_and_reads_the_environment(monkeypatch) -> None:
    from astro_classifier.stream.config import StreamSettings

    fields = {"input_topics": ["a"], "output_topic": "b", "dead_letter_topic": "c"}
    assert StreamSettings(**fields).pipeline is True
    monkeypatch.setenv("ASTROCLF_PIPELINE", "false")
    assert StreamSettings(**fields).pipeline is False


# -- the worker's loop with fake Kafka clients ------------------------------------------------
class Message:
    """The accessors of confluent_kafka.Message that the worker uses."""

    def __init__(self, partition: int, offset: int) -> None:
        self._partition, self._offset = partition, offset

    def value(self) -> bytes:
        return f"{self._partition}:{self._offset}".encode()

    def key(self) -> bytes:
        return b"k"

    def headers(self) -> list:
        return []

    def topic(self) -> str:
        return "alerts"

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)

    def error(self) -> None:
        return None


class Topic:
    """Two partitions of ``per_partition`` messages, served ``batch`` at a time, alternating
    partitions; seek() moves a partition back. Every call notes its thread (confluent_kafka
    lets one thread at a time into a Consumer: the worker must use it from one thread)."""

    def __init__(self, worker, per_partition: int = 12, batch: int = 5) -> None:
        self.worker = worker
        self.end = per_partition
        self.batch = batch
        self.position = {0: 0, 1: 0}
        self.turn = 0
        self.threads: set[str] = set()
        self.commits: list[tuple[int, int]] = []  # (partition, next offset), in commit order
        self.acked: set[bytes] = set()  # set by the producer below

    def _note(self) -> None:
        self.threads.add(threading.current_thread().name)

    def consume(self, num_messages: int, timeout: float) -> list:
        self._note()
        for _ in range(2):
            p = self.turn
            self.turn = 1 - self.turn
            start = self.position[p]
            if start < self.end:
                stop = min(start + min(self.batch, num_messages), self.end)
                self.position[p] = stop
                return [Message(p, o) for o in range(start, stop)]
        if self.worker._pipeline.in_flight == 0:
            self.worker._stop_signal = 0  # everything consumed and finished: stop
        time.sleep(0.01)
        return []

    def store_offsets(self, offsets) -> None:
        self._note()
        self.committed(offsets)

    def committed(self, offsets) -> None:
        for tp in offsets:
            # nothing is stored before every output of the messages below it is acknowledged
            assert all(f"{tp.partition}:{o}".encode() in self.acked for o in range(tp.offset))
            self.commits.append((tp.partition, tp.offset))

    def commit(self, asynchronous: bool = True) -> None:
        self._note()

    def consumer_group_metadata(self) -> str:
        self._note()
        return "group-metadata"

    def assignment(self) -> list:
        from confluent_kafka import TopicPartition

        self._note()
        return [TopicPartition("alerts", 0), TopicPartition("alerts", 1)]

    def seek(self, tp) -> None:
        self._note()
        self.position[tp.partition] = tp.offset

    def list_topics(self, *args, **kwargs) -> None:
        self._note()


class Producer:
    """Acknowledges every output at flush(); in exactly-once mode notes the transactions."""

    def __init__(self, topic: Topic) -> None:
        self.topic = topic
        self.queue: list = []
        self.outputs: list[bytes] = []
        self.group_metadata: set = set()

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None) -> None:
        self.queue.append((value, on_delivery))

    def __len__(self) -> int:
        return len(self.queue)

    def poll(self, timeout=0) -> int:
        return 0

    def flush(self, timeout=None) -> int:
        queue, self.queue = self.queue, []
        for value, on_delivery in queue:
            self.outputs.append(value)
            self.topic.acked.add(value)
            on_delivery(None, None)
        return 0

    def begin_transaction(self) -> None:
        pass

    def send_offsets_to_transaction(self, offsets, metadata, timeout=None) -> None:
        self.group_metadata.add(metadata)
        self.topic.committed(offsets)  # the transaction commits them (not the consumer)

    def commit_transaction(self, timeout=None) -> None:
        pass

    def abort_transaction(self, timeout=None) -> None:
        pass


class Processor:
    """decode/classify of BatchProcessor: one output per message, value = the message's."""

    def __init__(self, fail_once_at: tuple[int, int] | None = None) -> None:
        self.fail_once_at = fail_once_at
        self.classify_threads: set[str] = set()

    def decode(self, messages):
        return [m.value() for m in messages]

    def classify(self, messages, decoded):
        from astro_classifier.stream.batch import BatchResult, Output, message_ref

        self.classify_threads.add(threading.current_thread().name)
        where = (messages[0].partition(), messages[0].offset())
        if where == self.fail_once_at:
            self.fail_once_at = None
            raise RuntimeError("injected bug")
        outputs = [
            Output(key=b"k", value=value, source=message_ref(m), message=m)
            for m, value in zip(messages, decoded, strict=True)
        ]
        return BatchResult(outputs, [], 0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("pipeline", "delivery"),
    [(True, "at-least-once"), (True, "exactly-once"), (False, "at-least-once")],
)
@pytest.mark.parametrize("fail", [False, True])
def test_the_worker_loop_commits_in_order_after_acks_from_the_consuming_thread(
    pipeline: bool, delivery: str, fail: bool
) -> None:
    from astro_classifier.stream.config import StreamSettings
    from astro_classifier.stream.worker import StreamWorker

    settings = StreamSettings(
        input_topics=["alerts"],
        output_topic="out",
        dead_letter_topic="dlq",
        batch_size=5,
        max_wait_ms=10,
        retry_backoff_max_s=0.01,
        pipeline=pipeline,
        delivery=delivery,
        metrics_port=None,
    )
    worker = StreamWorker(settings)
    topic = Topic(worker)
    producer = Producer(topic)
    processor = Processor(fail_once_at=(1, 5) if fail else None)
    worker._consumer, worker._producer, worker._processor = topic, producer, processor
    worker._delivery = worker._make_delivery()
    worker._pipeline = Pipeline(
        processor.classify,
        worker._delivery.deliver_outputs,
        overlap=pipeline,
        on_delivered=worker._record,
    )
    try:
        assert worker._loop() == 0
    finally:
        worker._pipeline.close()
        if worker._watchdog is not None:
            worker._watchdog.cancel()

    every = {f"{p}:{o}".encode() for p in (0, 1) for o in range(12)}
    assert set(producer.outputs) == every
    if not fail:
        assert len(producer.outputs) == len(every)  # nothing twice
    for p in (0, 1):
        mine = [offset for partition, offset in topic.commits if partition == p]
        assert mine == sorted(mine) and mine[-1] == 12  # in order, up to the end
    assert topic.threads == {threading.current_thread().name}  # the consumer: one thread
    expected = {"astroclf-classify"} if pipeline else {threading.current_thread().name}
    assert processor.classify_threads == expected
    if delivery == "exactly-once":
        assert producer.group_metadata == {"group-metadata"}
    if fail:
        assert worker.metrics.batch_failures.labels(error_class="RuntimeError")._value.get() == 1
    else:
        assert worker._totals["consumed"] == worker._totals["produced"] == 24
        assert worker.metrics.produced._value.get() == 24


# -- the real worker with the pipeline off ------------------------------------------------------
@pytest.fixture
def started_workers():
    """Start `astroclf stream` subprocesses; any still running at the end is killed."""
    from tests.test_stream_worker import Worker

    started: list = []

    def start(config, log_path, extra_env=None):
        worker = Worker(config, log_path, extra_env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


@pytest.mark.kafka
@pytest.mark.slow  # 8 s each; the pipelined worker (the default) has the same runs unmarked
@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_the_serial_worker_still_classifies_every_alert_once(
    delivery: str, kafka_bootstrap: str, shared_data, tmp_path, started_workers
) -> None:
    """``pipeline: false`` against a real broker (the other real-broker tests run the default,
    pipelined worker): every Rubin alert classified once, bad messages dead-lettered,
    SIGTERM exits 0."""
    from tests.kafka_broker import unique_name
    from tests.test_stream_worker import (
        SIGTERM_LIMIT_S,
        check_dead_letters,
        check_exactly_one_each,
        check_output_records,
        container_bad_messages,
        rubin_avro_alert_ids,
        small_run,
    )

    files = sorted((shared_data / "alerts" / "lsst" / "fink-v7.4").glob("*.avro"))[:40]
    run = small_run(
        kafka_bootstrap,
        started_workers,
        tmp_path,
        files,
        container_bad_messages(files[0].read_bytes(), "fink")[:3],
        rubin_avro_alert_ids,
        input_format="rubin-avro",
        model="atat-lsst",
        delivery=delivery,
        transactional_id=unique_name("astroclf-serial"),
        pipeline=False,
        batch_size=10,
    )
    check_exactly_one_each(run.outcome)
    check_output_records(run.outcome, run.topics, "atat-lsst")
    check_dead_letters(run.outcome, run.topics)
    assert run.exit[0] == 0 and run.exit[1] < SIGTERM_LIMIT_S
    log = (tmp_path / "worker.log").read_text()
    assert '"pipeline": false' in log
