"""`astroclf stream` against a real Kafka-protocol broker (tansu, tests/kafka_broker.py).

The worker runs as a subprocess (``python -m astro_classifier.cli.app stream``), so that
SIGTERM and ``kill -9`` are real; it classifies real alerts with the shipped models on
ONNX Runtime. Expected alerts are decoded here independently of astroclf (fastavro on the
message bytes) and matched against the output topic, message by message.

Runs, each asserted by several tests:

- ZTF (every alert under alerts/ztf, ztf-avro, atat-ztf), at-least-once, with bad messages
  and a container of three alerts mixed in; the first worker gets SIGTERM mid-stream and a
  second one finishes;
- Rubin wire format (alerts/lsst/wire-v7.4, schema folder), at-least-once, with bad messages;
- Rubin Avro containers (alerts/lsst/fink-v7.4), exactly-once, with bad messages;
- ZTF three times over four partitions, a second worker joining mid-stream (rebalance);
- ZTF repeated to ~2,500 messages, ``kill -9`` three times mid-stream, in both delivery modes.

Every worker gets a loopback broker, ``metrics_port: 0`` (the port is read from its log)
and small batches; the whole module takes about two minutes on two cores.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import fastavro
import pytest
import yaml

from astro_classifier.inference.model import read_metadata
from tests.kafka_broker import (
    OffsetWatcher,
    PartitionLog,
    committed_offsets,
    create_topics,
    read_topic,
    require_stream_extra,
    topic_end_offsets,
    transaction_outcomes,
    unique_name,
)

require_stream_extra()
pytestmark = pytest.mark.kafka

PROJECT_ROOT = Path(__file__).resolve().parent.parent
OUTPUT_SCHEMA = PROJECT_ROOT / "astro_classifier" / "stream" / "schemas" / "classification.avsc"
READY_TIMEOUT_S = 60.0
SIGTERM_LIMIT_S = 10.0
ASTROCLF_HEADERS = {
    "astroclf.error.class",
    "astroclf.error.message",
    "astroclf.source.topic",
    "astroclf.source.partition",
    "astroclf.source.offset",
    "astroclf.error.time",
}

AlertIds = list[tuple[str, str]]  # (object id, alert id) per alert of a message


# -- the worker as a process ----------------------------------------------------------------
class Worker:
    """One `astroclf stream` subprocess; its JSON log goes to ``log_path``."""

    def __init__(self, config: Path, log_path: Path, extra_env: dict | None = None) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("ASTROCLF_") or k == "ASTROCLF_SHARED_DATA"
        }
        env.update(extra_env or {})
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "astro_classifier.cli.app", "stream", "--config", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=PROJECT_ROOT,
        )
        self.port: int | None = None

    def events(self) -> list[dict]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def _fail(self, why: str) -> None:
        tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
        pytest.fail(f"worker {why} (exit code {self.process.poll()}); log tail:\n{tail}")

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> Worker:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._fail("exited before it was ready")
            if self.port is None:
                found = [e["port"] for e in self.events() if e["event"] == "metrics_listening"]
                self.port = found[0] if found else None
            if self.port is not None and _http_status(f"{self.url}/ready") == 200:
                return self
            time.sleep(0.05)
        self._fail(f"not ready after {timeout_s} s")
        raise AssertionError  # unreachable

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metrics(self) -> dict[tuple[str, tuple], float]:
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def terminate(self, timeout_s: float = 30.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds to exit)."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            self._fail(f"ignored SIGTERM for {timeout_s} s")
        return code, time.monotonic() - started

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill()
        self._log.close()


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@pytest.fixture(scope="module")
def workers() -> Callable[..., Worker]:
    """Start workers; any still running at the end of the module is killed."""
    started: list[Worker] = []

    def start(config: Path, log_path: Path, extra_env: dict | None = None) -> Worker:
        worker = Worker(config, log_path, extra_env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


@dataclass
class Topics:
    input: str
    output: str
    dead_letter: str
    group: str
    input_partitions: int


def new_topics(bootstrap: str, input_partitions: int) -> Topics:
    topics = Topics(
        input=unique_name("alerts"),
        output=unique_name("classifications"),
        dead_letter=unique_name("dead-letter"),
        group=unique_name("astroclf"),
        input_partitions=input_partitions,
    )
    create_topics(bootstrap, topics.input, partitions=input_partitions)
    create_topics(bootstrap, topics.output, topics.dead_letter, partitions=1)
    return topics


def write_config(path: Path, bootstrap: str, topics: Topics, **fields: object) -> Path:
    doc = {
        "bootstrap_servers": bootstrap,
        "input_topics": [topics.input],
        "group_id": topics.group,
        "output_topic": topics.output,
        "dead_letter_topic": topics.dead_letter,
        "provider": "cpu",
        "batch_size": 50,
        "max_wait_ms": 100,
        "session_timeout_ms": 6000,
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "log_level": "INFO",
        **fields,
    }
    path.write_text(
        yaml.safe_dump({k: str(v) if isinstance(v, Path) else v for k, v in doc.items()})
    )
    return path


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


def all_committed(bootstrap: str, topics: Topics) -> bool:
    """The group's committed offsets reach the end of every input partition."""
    end = topic_end_offsets(bootstrap, topics.input, topics.input_partitions)
    committed = committed_offsets(bootstrap, topics.group, topics.input, topics.input_partitions)
    # A partition that never received a message has no committed offset.
    return all(committed[p] == end[p] or end[p] == 0 for p in end)


PRODUCE_RATE = 250.0  # messages per second where a run must still be going when we act


class Background:
    """Run ``work`` in a thread; ``join()`` waits for it and re-raises its exception."""

    def __init__(self, work: Callable[[], object]) -> None:
        self._error: BaseException | None = None

        def run() -> None:
            try:
                work()
            except BaseException as exc:
                self._error = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def join(self, timeout_s: float = 120.0) -> None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "background production did not finish"
        if self._error is not None:
            raise self._error


def wait_for_outputs(bootstrap: str, topic: str, count: int, timeout_s: float = 60.0) -> None:
    """Until ``topic`` holds ``count`` records, looking every few milliseconds."""
    deadline = time.monotonic() + timeout_s
    with OffsetWatcher(bootstrap, topic) as output:
        while output.offsets()[0] < count:
            if time.monotonic() > deadline:
                pytest.fail(f"fewer than {count} records in {topic} after {timeout_s} s")
            time.sleep(0.005)


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes, list]]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value, headers in messages:
        producer.produce(topic, value=value, key=key, headers=headers or None)
    assert producer.flush(30) == 0


# -- independent decoding of the inputs and outputs -----------------------------------------
def ztf_alert_ids(value: bytes) -> AlertIds:
    return [(r["objectId"], str(r["candid"])) for r in fastavro.reader(io.BytesIO(value))]


def _rubin_ids(record: dict) -> tuple[str, str]:
    source = record["diaSource"]
    obj = source.get("diaObjectId") or (record.get("diaObject") or {}).get("diaObjectId")
    alert = record.get("diaSourceId") or source["diaSourceId"]
    return str(obj or source.get("ssObjectId")), str(alert)


def rubin_avro_alert_ids(value: bytes) -> AlertIds:
    return [_rubin_ids(r) for r in fastavro.reader(io.BytesIO(value))]


def rubin_wire_alert_ids(schema_dir: Path) -> Callable[[bytes], AlertIds]:
    def ids(value: bytes) -> AlertIds:
        assert value[0] == 0
        schema_id = int.from_bytes(value[1:5], "big")
        major, minor = divmod(schema_id, 100)
        schema = fastavro.schema.load_schema(
            schema_dir / str(major) / str(minor) / f"lsst.v{major}_{minor}.alert.avsc"
        )
        return [_rubin_ids(fastavro.schemaless_reader(io.BytesIO(value[5:]), schema, None))]

    return ids


def decode_output(value: bytes) -> dict:
    """An output message by the shipped Avro schema file; no byte may be left over."""
    schema = fastavro.schema.load_schema(OUTPUT_SCHEMA)
    buffer = io.BytesIO(value)
    record = fastavro.schemaless_reader(buffer, schema, None)
    assert buffer.tell() == len(value), "bytes left after the classification record"
    return record


@dataclass
class Outcome:
    """What the topics say after a run."""

    inputs: list  # confluent_kafka.Message
    outputs: list
    dead_letters: list
    expected: dict[tuple[int, int], Counter] = field(default_factory=dict)  # (p, o) -> alerts
    bad: dict[tuple[int, int], object] = field(default_factory=dict)  # (p, o) -> input message

    def classified(self) -> dict[tuple[int, int], Counter]:
        got: dict[tuple[int, int], Counter] = defaultdict(Counter)
        for message in self.outputs:
            record = decode_output(message.value())
            got[(record["sourcePartition"], record["sourceOffset"])][
                (record["objectId"], record["alertId"])
            ] += 1
        return got


def collect(
    bootstrap: str,
    topics: Topics,
    alert_ids: Callable[[bytes], AlertIds],
    bad_values: set[bytes],
    isolation: str = "read_uncommitted",
) -> Outcome:
    inputs = read_topic(bootstrap, topics.input, topics.input_partitions)
    outcome = Outcome(
        inputs=inputs,
        outputs=read_topic(bootstrap, topics.output, isolation=isolation),
        dead_letters=read_topic(bootstrap, topics.dead_letter, isolation=isolation),
    )
    for m in inputs:
        where = (m.partition(), m.offset())
        if m.value() in bad_values or not m.value():
            outcome.bad[where] = m
        else:
            outcome.expected[where] = Counter(alert_ids(m.value()))
    return outcome


def check_output_records(outcome: Outcome, topics: Topics, model: str) -> None:
    """Every output decodes with the schema, is keyed by object id, sums to 1."""
    for message in outcome.outputs:
        record = decode_output(message.value())
        assert message.key() == record["objectId"].encode()
        assert record["classifierName"] == model
        assert record["sourceTopic"] == topics.input
        probabilities = [c["probability"] for c in record["classifications"]]
        assert [c["classId"] for c in record["classifications"]] == read_metadata(model).labels
        assert record["broadClass"] in ("transient", "stochastic", "periodic")
        assert isinstance(record["abstain"], bool)
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
        assert record["probability"] == max(probabilities)
        top = max(record["classifications"], key=lambda c: c["probability"])
        assert record["classId"] == top["classId"]
        assert record["alertTimestampMs"] > 0 and record["batchSize"] >= 1


def check_exactly_one_each(outcome: Outcome) -> None:
    got = outcome.classified()
    missing = {k: v for k, v in outcome.expected.items() if got.get(k, Counter()) != v}
    assert not missing, f"{len(missing)} message(s) without exactly their alerts' classifications"
    extra = set(got) - set(outcome.expected)
    assert not extra, f"classifications of messages that are not valid alerts: {sorted(extra)[:5]}"


def check_dead_letters(outcome: Outcome, topics: Topics) -> None:
    """Each bad message once in the dead-letter topic, unchanged, with the headers."""
    assert len(outcome.dead_letters) == len(outcome.bad)
    by_source = {}
    for dead in outcome.dead_letters:
        headers = dict(dead.headers() or [])
        assert headers.keys() >= ASTROCLF_HEADERS
        where = (int(headers["astroclf.source.partition"]), int(headers["astroclf.source.offset"]))
        assert where not in by_source, f"dead-lettered twice: {where}"
        by_source[where] = (dead, headers)
    assert set(by_source) == set(outcome.bad)
    for where, original in outcome.bad.items():
        dead, headers = by_source[where]
        assert dead.key() == original.key()
        assert (dead.value() or b"") == (original.value() or b"")
        for name, value in original.headers() or []:  # the message's own headers are kept
            assert headers[name] == value
        assert headers["astroclf.source.topic"] == topics.input.encode()
        assert headers["astroclf.error.class"] == b"InputError"
        assert (
            f"{topics.input}[{where[0]}]@{where[1]}".encode() in headers["astroclf.error.message"]
        )
        when = datetime.fromisoformat(headers["astroclf.error.time"].decode())
        assert when.utcoffset() is not None and when.utcoffset().total_seconds() == 0


def counter_total(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


# -- bad messages ---------------------------------------------------------------------------
def flip_bit(data: bytes, index: int) -> bytes:
    flipped = bytearray(data)
    flipped[index] ^= 0x01
    return bytes(flipped)


def container_bad_messages(container: bytes, name: str) -> list[tuple[bytes | None, bytes, list]]:
    """(key, value, headers) of broken Avro container messages and plain junk."""
    return [
        (f"{name}-truncated".encode(), container[: len(container) // 2], []),
        # The last 16 bytes of a container are a block's sync marker.
        (f"{name}-sync".encode(), flip_bit(container, len(container) - 5), [("trace", b"t-1")]),
        (None, b"", []),
        (f"{name}-magic".encode(), b"Obj\x02" + container[4:], []),
        (f"{name}-junk".encode(), bytes(range(256)) * 4, []),
        (f"{name}-json".encode(), b'{"objectId": "ZTF00fake", "candid": 1}', []),
    ]


def wire_bad_messages(wire: bytes) -> list[tuple[bytes | None, bytes, list]]:
    return [
        (b"wire-magic", b"\x01" + wire[1:], []),
        (b"wire-schema-id", wire[:1] + (9999).to_bytes(4, "big") + wire[5:], []),
        (b"wire-truncated", wire[: len(wire) // 2], [("trace", b"t-2")]),
        (b"wire-empty", b"", []),
        (b"wire-json", b'{"alertId": 1}', []),
        (b"wire-junk", b"\x00\x00\x00", []),
    ]


# -- ZTF, at-least-once, SIGTERM mid-stream, bad messages -----------------------------------
@dataclass
class ZtfRun:
    topics: Topics
    outcome: Outcome
    first_exit: tuple[int, float]
    second_exit: tuple[int, float]
    committed_at_stop: dict[int, int]
    outputs_at_stop: list
    dead_letters_at_stop: int
    second_metrics: dict
    first_totals: dict
    several_alerts: bytes
    second_health: int | None


@pytest.fixture(scope="module")
def ztf_run(kafka_bootstrap: str, shared_data: Path, tmp_path_factory, workers) -> ZtfRun:
    from astro_classifier.stream.replay import replay

    tmp = tmp_path_factory.mktemp("ztf")
    bootstrap = kafka_bootstrap
    topics = new_topics(bootstrap, input_partitions=2)
    config = write_config(
        tmp / "stream.yaml", bootstrap, topics, input_format="ztf-avro", model="atat-ztf"
    )
    files = sorted((shared_data / "alerts" / "ztf").glob("**/*.avro"))
    assert len(files) > 600

    # A container holding three alerts (same writer schema).
    records, schema = [], None
    for path in sorted((shared_data / "alerts" / "ztf" / "fink-v3.3").glob("*.avro"))[:3]:
        with path.open("rb") as f:
            reader = fastavro.reader(f)
            schema = schema or reader.writer_schema
            records += list(reader)
    several = io.BytesIO()
    fastavro.writer(several, schema, records)
    bad = container_bad_messages(files[0].read_bytes(), "ztf")

    first = workers(config, tmp / "worker-1.log").wait_ready()
    conf = {"bootstrap.servers": bootstrap}

    def produce_all() -> None:  # paced, so that the stream is still going at the SIGTERM
        replay(files[:300], topics.input, conf, rate=PRODUCE_RATE)
        produce(bootstrap, topics.input, [*bad, (b"several", several.getvalue(), [])])
        replay(files[300:], topics.input, conf, rate=PRODUCE_RATE)

    production = Background(produce_all)
    n_alerts = len(files) + len(records)

    # SIGTERM mid-stream: once a third of the alerts are classified.
    wait_for_outputs(bootstrap, topics.output, n_alerts // 3)
    first_exit = first.terminate()
    production.join()
    committed_at_stop = committed_offsets(bootstrap, topics.group, topics.input, 2)
    outputs_at_stop = read_topic(bootstrap, topics.output)
    dead_at_stop = len(read_topic(bootstrap, topics.dead_letter))
    first_totals = next(e for e in first.events() if e["event"] == "worker_stopped")

    second = workers(config, tmp / "worker-2.log").wait_ready()
    wait_until(lambda: all_committed(bootstrap, topics), 90, "every input offset committed")
    second_metrics = second.metrics()
    second_health = _http_status(f"{second.url}/healthz")
    second_exit = second.terminate()

    outcome = collect(bootstrap, topics, ztf_alert_ids, {v for _, v, _ in bad})
    return ZtfRun(
        topics,
        outcome,
        first_exit,
        second_exit,
        committed_at_stop,
        outputs_at_stop,
        dead_at_stop,
        second_metrics,
        first_totals,
        several.getvalue(),
        second_health,
    )


def test_every_ztf_alert_is_classified_exactly_once(ztf_run: ZtfRun) -> None:
    # At-least-once allows duplicates, but a SIGTERM hand-over must not cause any.
    assert len(ztf_run.outcome.expected) > 600
    check_exactly_one_each(ztf_run.outcome)
    check_output_records(ztf_run.outcome, ztf_run.topics, "atat-ztf")


def test_a_message_with_three_alerts_gives_three_classifications(ztf_run: ZtfRun) -> None:
    (where,) = [
        (m.partition(), m.offset())
        for m in ztf_run.outcome.inputs
        if m.value() == ztf_run.several_alerts
    ]
    assert sum(ztf_run.outcome.classified()[where].values()) == 3


def test_bad_ztf_messages_are_dead_lettered_unchanged(ztf_run: ZtfRun) -> None:
    assert len(ztf_run.outcome.bad) == 6
    check_dead_letters(ztf_run.outcome, ztf_run.topics)


def test_sigterm_finishes_the_batch_commits_and_exits_0(ztf_run: ZtfRun) -> None:
    for code, seconds in (ztf_run.first_exit, ztf_run.second_exit):
        assert code == 0
        assert seconds < SIGTERM_LIMIT_S
    committed = ztf_run.committed_at_stop
    end = {m.partition(): m.offset() + 1 for m in ztf_run.outcome.inputs}
    assert sum(committed.values()) < sum(end.values()), "SIGTERM came after the last batch"
    # Everything produced before the stop is covered by the committed offsets...
    for message in ztf_run.outputs_at_stop:
        record = decode_output(message.value())
        assert record["sourceOffset"] < committed[record["sourcePartition"]]
    # ... and everything below them was classified or dead-lettered by the first worker.
    done_first = {
        where
        for where in [*ztf_run.outcome.expected, *ztf_run.outcome.bad]
        if where[1] < committed[where[0]]
    }
    expected_first = sum(
        sum(ztf_run.outcome.expected[w].values())
        for w in done_first
        if w in ztf_run.outcome.expected
    )
    assert len(ztf_run.outputs_at_stop) == expected_first
    assert ztf_run.dead_letters_at_stop == len(done_first & set(ztf_run.outcome.bad))
    assert ztf_run.first_totals["produced"] == len(ztf_run.outputs_at_stop)


def test_metrics_agree_with_the_topics(ztf_run: ZtfRun) -> None:
    # The second worker did everything above the first one's committed offsets.
    outcome, metrics = ztf_run.outcome, ztf_run.second_metrics
    committed = ztf_run.committed_at_stop
    later = {w for w in [*outcome.expected, *outcome.bad] if w[1] >= committed[w[0]]}
    later_alerts = sum(sum(outcome.expected[w].values()) for w in later if w in outcome.expected)
    later_bad = len(later & set(outcome.bad))
    assert counter_total(metrics, "astroclf_consumed_messages_total") == len(later)
    assert counter_total(metrics, "astroclf_classifications_produced_total") == later_alerts
    assert (
        counter_total(metrics, "astroclf_dead_lettered_messages_total", reason="InputError")
        == later_bad
    )
    assert counter_total(metrics, "astroclf_end_to_end_latency_seconds_count") == later_alerts
    batches = counter_total(metrics, "astroclf_batches_total")
    assert batches >= 1
    assert counter_total(metrics, "astroclf_batch_size_messages_count") == batches
    assert counter_total(metrics, "astroclf_batch_size_messages_sum") == len(later)
    assert counter_total(metrics, "astroclf_inference_seconds_count") == batches
    assert counter_total(metrics, "astroclf_ready") == 1
    assert ztf_run.second_health == 200


# -- Rubin: wire format at-least-once, Avro containers exactly-once -------------------------
@dataclass
class SmallRun:
    topics: Topics
    outcome: Outcome
    metrics: dict
    exit: tuple[int, float]
    log: PartitionLog | None = None  # exactly-once: the output topic's transactions


def small_run(
    bootstrap: str,
    workers,
    tmp: Path,
    files: list[Path],
    bad: list[tuple[bytes | None, bytes, list]],
    alert_ids: Callable[[bytes], AlertIds],
    **config: object,
) -> SmallRun:
    from astro_classifier.stream.replay import replay

    topics = new_topics(bootstrap, input_partitions=2)
    path = write_config(tmp / "stream.yaml", bootstrap, topics, **config)
    worker = workers(path, tmp / "worker.log").wait_ready()
    half = len(files) // 2
    replay(files[:half], topics.input, {"bootstrap.servers": bootstrap})
    produce(bootstrap, topics.input, bad)
    replay(files[half:], topics.input, {"bootstrap.servers": bootstrap})
    wait_until(lambda: all_committed(bootstrap, topics), 60, "every input offset committed")
    metrics = worker.metrics()
    exit_ = worker.terminate()
    exactly_once = config.get("delivery") == "exactly-once"
    outcome = collect(
        bootstrap,
        topics,
        alert_ids,
        {v for _, v, _ in bad},
        isolation="read_committed" if exactly_once else "read_uncommitted",
    )
    run = SmallRun(topics, outcome, metrics, exit_)
    if exactly_once:
        run.log = transaction_outcomes(bootstrap, topics.output)
    return run


@pytest.fixture(scope="module")
def rubin_wire_run(kafka_bootstrap: str, shared_data: Path, tmp_path_factory, workers) -> SmallRun:
    schema_dir = shared_data / "alerts" / "lsst" / "schema"
    files = sorted((shared_data / "alerts" / "lsst" / "wire-v7.4").glob("*.avro"))
    assert len(files) == 5
    return small_run(
        kafka_bootstrap,
        workers,
        tmp_path_factory.mktemp("wire"),
        files,
        wire_bad_messages(files[0].read_bytes()),
        rubin_wire_alert_ids(schema_dir),
        input_format="rubin-wire",
        schema_dir=schema_dir,
        model="atat-lsst",
    )


@pytest.fixture(scope="module")
def rubin_avro_exactly_once_run(
    kafka_bootstrap: str, shared_data: Path, tmp_path_factory, workers
) -> SmallRun:
    files = sorted((shared_data / "alerts" / "lsst" / "fink-v7.4").glob("*.avro"))
    assert len(files) == 100
    return small_run(
        kafka_bootstrap,
        workers,
        tmp_path_factory.mktemp("fink-lsst"),
        files,
        container_bad_messages(files[0].read_bytes(), "fink")[:3],
        rubin_avro_alert_ids,
        input_format="rubin-avro",
        model="atat-lsst",
        delivery="exactly-once",
        transactional_id=unique_name("astroclf-fink"),
    )


@pytest.mark.parametrize("run_name", ["rubin_wire_run", "rubin_avro_exactly_once_run"])
def test_every_rubin_alert_is_classified_exactly_once(run_name: str, request) -> None:
    run: SmallRun = request.getfixturevalue(run_name)
    check_exactly_one_each(run.outcome)
    check_output_records(run.outcome, run.topics, "atat-lsst")
    check_dead_letters(run.outcome, run.topics)
    assert run.exit[0] == 0 and run.exit[1] < SIGTERM_LIMIT_S


@pytest.mark.parametrize("run_name", ["rubin_wire_run", "rubin_avro_exactly_once_run"])
def test_rubin_metrics_agree_with_the_topics(run_name: str, request) -> None:
    run: SmallRun = request.getfixturevalue(run_name)
    n_alerts = sum(sum(c.values()) for c in run.outcome.expected.values())
    m = run.metrics
    assert counter_total(m, "astroclf_consumed_messages_total") == len(run.outcome.inputs)
    assert counter_total(m, "astroclf_classifications_produced_total") == n_alerts
    assert counter_total(m, "astroclf_dead_lettered_messages_total", reason="InputError") == len(
        run.outcome.bad
    )


def test_exactly_once_writes_only_committed_transactions(rubin_avro_exactly_once_run) -> None:
    log = rubin_avro_exactly_once_run.log
    n_records = len(rubin_avro_exactly_once_run.outcome.outputs)
    assert len(log.committed) == n_records and log.commit_markers >= 1
    assert not log.aborted and not log.open and not log.plain


# -- a model with an image tower: the worker decodes the stamps -----------------------------
@pytest.fixture(scope="module")
def image_model_run(
    kafka_bootstrap: str, shared_data: Path, tmp_path_factory, workers, image_model
) -> SmallRun:
    files = sorted((shared_data / "alerts" / "ztf" / "fink-v3.3").glob("*.avro"))
    assert len(files) == 50
    return small_run(
        kafka_bootstrap,
        workers,
        tmp_path_factory.mktemp("image"),
        files,
        container_bad_messages(files[0].read_bytes(), "ztf"),
        ztf_alert_ids,
        input_format="ztf-avro",
        model=str(image_model[1]),
    )


@pytest.mark.slow
def test_a_model_with_an_image_tower_classifies_every_alert_once(image_model_run) -> None:
    """The worker decodes the stamps because the model has an image tower (issue 9): every
    alert once, by that model, its own labels, broad columns null (labels of no broad kind)."""
    run = image_model_run
    check_exactly_one_each(run.outcome)
    check_dead_letters(run.outcome, run.topics)
    assert run.exit[0] == 0
    for message in run.outcome.outputs:
        record = decode_output(message.value())
        assert record["classifierName"] == "clip-tiny-alerts"
        assert record["classId"] in ("SolarSystem", "NotSolarSystem")
        assert record["broadClass"] is None and record["probTransient"] is None
        assert sum(c["probability"] for c in record["classifications"]) == pytest.approx(
            1, abs=1e-4
        )


# -- a second worker joins: rebalance ---------------------------------------------------------
@pytest.mark.slow  # several worker processes against the broker, ~20-25 s each
def test_a_worker_joining_mid_stream_takes_over_partitions_without_duplicates(
    kafka_bootstrap: str, shared_data: Path, tmp_path: Path, workers
) -> None:
    """Scale-out: a second member joins while the first is busy. The first commits its
    finished work when its partitions are revoked and drops what it fetched across the
    rebalance, so even at-least-once delivery classifies every alert exactly once."""
    from confluent_kafka import Producer

    bootstrap = kafka_bootstrap
    topics = new_topics(bootstrap, input_partitions=4)
    config = write_config(
        tmp_path / "stream.yaml", bootstrap, topics, input_format="ztf-avro", model="atat-ztf"
    )
    files = sorted((shared_data / "alerts" / "ztf").glob("**/*.avro"))
    first = workers(config, tmp_path / "worker-a.log").wait_ready()
    values = [path.read_bytes() for path in files] * 3

    def produce_spread() -> None:  # over all four partitions, paced: ~7 s of stream
        producer = Producer({"bootstrap.servers": bootstrap})
        started = time.monotonic()
        for i, value in enumerate(values):
            time.sleep(max(0.0, i / PRODUCE_RATE - (time.monotonic() - started)))
            producer.produce(topics.input, value=value, partition=i % 4)
            producer.poll(0)
        assert producer.flush(30) == 0

    production = Background(produce_spread)
    wait_for_outputs(bootstrap, topics.output, 100)  # the first worker is busy
    second = workers(config, tmp_path / "worker-b.log").wait_ready()
    production.join()
    wait_until(lambda: all_committed(bootstrap, topics), 90, "every input offset committed")
    for worker in (first, second):
        code, seconds = worker.terminate()
        assert code == 0 and seconds < SIGTERM_LIMIT_S

    outcome = collect(bootstrap, topics, ztf_alert_ids, set())
    check_exactly_one_each(outcome)
    produced = [
        next(e for e in w.events() if e["event"] == "worker_stopped").get("produced", 0)
        for w in (first, second)
    ]
    assert sum(produced) == len(values)
    assert min(produced) > 0, f"the rebalance did not share the work: {produced}"
    revoked = [e for e in first.events() if e["event"] == "partitions_revoked"]
    assert len(revoked) >= 2  # the rebalance, then the shutdown


# -- kill -9 mid-stream ----------------------------------------------------------------------
KILL_AT = (0.15, 0.4, 0.65)  # fractions of the classifications produced


@pytest.mark.slow  # several worker processes against the broker, ~20-25 s each
@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_kill_9_mid_stream_loses_nothing(
    delivery: str, kafka_bootstrap: str, shared_data: Path, tmp_path: Path, workers
) -> None:
    """kill -9 three times while the worker is busy, restarting it each time.

    At-least-once: every alert has at least one classification. Exactly-once: among the
    records of committed transactions every alert has exactly one, and a read_committed
    consumer sees nothing else except (on tansu, which does not hide them) records of the
    transactions the kills left open and the restarted worker aborted.
    """
    from astro_classifier.stream.replay import replay

    bootstrap = kafka_bootstrap
    exactly_once = delivery == "exactly-once"
    topics = new_topics(bootstrap, input_partitions=3)
    # A short session: a killed member leaves the group when its session expires; tansu
    # then re-balances ~5 s later (restart to assignment: ~11 s at 6000 ms, ~2 s at 3000 ms).
    config = write_config(
        tmp_path / "stream.yaml",
        bootstrap,
        topics,
        input_format="ztf-avro",
        model="atat-ztf",
        delivery=delivery,
        session_timeout_ms=3000,
        transactional_id=unique_name("astroclf-crash"),
        # One output record per produce request, one request at a time: a batch's outputs
        # take ~20 ms to land instead of <1 ms, long enough for a kill to hit that window.
        kafka={"batch.size": "1000", "max.in.flight.requests.per.connection": "1"},
    )
    files = sorted((shared_data / "alerts" / "ztf").glob("**/*.avro"))
    sent = replay(files, topics.input, {"bootstrap.servers": bootstrap}, repeat=4)
    assert sent >= 2400
    n_alerts = sent  # one alert per file

    worker = workers(config, tmp_path / "worker-0.log").wait_ready()
    watermark = 0
    with OffsetWatcher(bootstrap, topics.output) as output:
        for k, fraction in enumerate(KILL_AT, start=1):
            # The moment: enough done, and a batch between its first output and its commit
            # (exactly-once: its transaction is open; at-least-once: outputs are arriving).
            deadline = next_check = time.monotonic() + 1
            deadline += 90
            while True:
                high, stable = output.offsets(at=watermark)
                busy = high > stable if exactly_once else high > watermark
                watermark = high
                if high >= fraction * n_alerts and busy:
                    break
                if time.monotonic() > next_check:
                    next_check += 1
                    if worker.process.poll() is not None:
                        worker._fail("exited by itself")
                    if time.monotonic() > deadline or all_committed(bootstrap, topics):
                        pytest.fail(f"kill {k}: no batch in flight to kill (output at {high})")
                time.sleep(0.001)
            worker.kill()
            worker = workers(config, tmp_path / f"worker-{k}.log").wait_ready()

    wait_until(lambda: all_committed(bootstrap, topics), 150, "every input offset committed")
    code, seconds = worker.terminate()
    assert code == 0 and seconds < SIGTERM_LIMIT_S

    outcome = collect(
        bootstrap,
        topics,
        ztf_alert_ids,
        set(),
        isolation="read_committed" if exactly_once else "read_uncommitted",
    )
    assert len(outcome.inputs) == sent and not outcome.dead_letters
    got = outcome.classified()
    if not exactly_once:
        missing = [
            w for w, alerts in outcome.expected.items() if not alerts <= got.get(w, Counter())
        ]
        assert not missing, f"{len(missing)} message(s) lost their classification"
        duplicates = sum(sum(c.values()) for c in got.values()) - n_alerts
        print(f"at-least-once after 3 kills: {duplicates} duplicate classification(s)")
        # Kills between a batch's outputs and its commit are what make duplicates.
        assert duplicates > 0, "no kill landed between a batch's outputs and its commit"
        return

    log = transaction_outcomes(bootstrap, topics.output)
    assert not log.open and not log.plain
    assert log.abort_markers >= 1, "no kill landed inside an open transaction"
    visible = {m.offset() for m in outcome.outputs}
    # A real Kafka hides aborted records from read_committed; tansu 0.6 does not.
    assert visible - log.aborted == log.committed
    outcome.outputs = [m for m in outcome.outputs if m.offset() in log.committed]
    check_exactly_one_each(outcome)
    print(
        f"exactly-once after 3 kills: {log.abort_markers} aborted transaction(s) holding "
        f"{len(log.aborted)} record(s), {log.commit_markers} committed"
    )
