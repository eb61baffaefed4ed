"""Scale-out: two `astroclf stream` workers in one consumer group on a four-partition topic.

While real ZTF alerts stream in, a second worker joins (a rebalance hands it half of the
partitions) and later the first one leaves on SIGTERM (its partitions move to the second).
No alert may be lost. At-least-once may repeat only work that was not committed when
partitions moved; the worker commits finished work before its partitions are revoked and
drops what it fetched across a rebalance, so the duplicates are counted (and printed) and
must be none. Exactly-once: among records of committed transactions, what a
``read_committed`` consumer of a real Kafka sees, every alert exactly once.

The second worker decodes in a pool of two processes (``decode_workers: 2``), so the pool's
order and offsets are checked across the rebalances too.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from tests.kafka_broker import require_stream_extra, transaction_outcomes
from tests.test_stream_worker import (
    PRODUCE_RATE,
    SIGTERM_LIMIT_S,
    Background,
    all_committed,
    check_exactly_one_each,
    collect,
    new_topics,
    wait_for_outputs,
    wait_until,
    workers,  # noqa: F401  (fixture)
    write_config,
    ztf_alert_ids,
)

require_stream_extra()
pytestmark = pytest.mark.kafka


def _stopped(worker) -> dict:
    return next(e for e in worker.events() if e["event"] == "worker_stopped")


@pytest.mark.slow  # several worker processes against the broker, ~20-25 s each
@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_no_alert_lost_or_duplicated_when_a_worker_joins_and_one_leaves(
    delivery: str,
    kafka_bootstrap: str,
    shared_data: Path,
    tmp_path: Path,
    workers,  # noqa: F811
) -> None:
    from confluent_kafka import Producer

    bootstrap = kafka_bootstrap
    exactly_once = delivery == "exactly-once"
    topics = new_topics(bootstrap, input_partitions=4)
    config = write_config(
        tmp_path / "stream.yaml",
        bootstrap,
        topics,
        input_format="ztf-avro",
        model="atat-ztf",
        delivery=delivery,
    )
    files = sorted((shared_data / "alerts" / "ztf").glob("**/*.avro"))
    # ~12 s of stream at PRODUCE_RATE: still going after the second worker (model load, a
    # decode pool to spawn, a rebalance) has joined, even though one worker keeps up alone
    values = [path.read_bytes() for path in files] * 5
    # Default transactional ids: two members of one group on one host claim slots 0 and 1
    # (with one id they would fence each other, exactly-once).
    first = workers(config, tmp_path / "worker-a.log", {}).wait_ready()

    def produce_spread() -> None:  # over all four partitions, paced
        producer = Producer({"bootstrap.servers": bootstrap})
        started = time.monotonic()
        for i, value in enumerate(values):
            time.sleep(max(0.0, i / PRODUCE_RATE - (time.monotonic() - started)))
            producer.produce(topics.input, value=value, partition=i % 4)
            producer.poll(0)
        assert producer.flush(30) == 0

    production = Background(produce_spread)
    wait_for_outputs(bootstrap, topics.output, 100)  # the first worker is busy: join
    second = workers(
        config,
        tmp_path / "worker-b.log",
        {"ASTROCLF_DECODE_WORKERS": "2"},
    ).wait_ready()
    wait_until(
        lambda: any(e["event"] == "partitions_assigned" for e in second.events()),
        30,
        "the second worker to get partitions",
    )
    wait_for_outputs(bootstrap, topics.output, len(values) // 2)  # both busy: leave
    first_exit = first.terminate()
    production.join()
    wait_until(lambda: all_committed(bootstrap, topics), 120, "every input offset committed")
    second_exit = second.terminate()
    for code, seconds in (first_exit, second_exit):
        assert code == 0 and seconds < SIGTERM_LIMIT_S

    outcome = collect(
        bootstrap,
        topics,
        ztf_alert_ids,
        set(),
        isolation="read_committed" if exactly_once else "read_uncommitted",
    )
    assert len(outcome.inputs) == len(values) and not outcome.dead_letters
    if exactly_once:
        log = transaction_outcomes(bootstrap, topics.output)
        assert not log.open and not log.plain
        # A real Kafka hides aborted records from read_committed; tansu 0.6 does not.
        outcome.outputs = [m for m in outcome.outputs if m.offset() in log.committed]
    got = outcome.classified()
    missing = [w for w, alerts in outcome.expected.items() if not alerts <= got.get(w, Counter())]
    assert not missing, f"{len(missing)} message(s) lost their classification"
    duplicates = sum(sum(c.values()) for c in got.values()) - len(values)
    produced = [_stopped(w).get("produced", 0) for w in (first, second)]
    print(
        f"{delivery}, join then leave: {duplicates} duplicate classification(s); "
        f"produced by worker a/b: {produced}"
    )
    assert min(produced) > 0, f"the rebalance did not share the work: {produced}"
    check_exactly_one_each(outcome)  # no duplicates either
    revoked = [e for e in first.events() if e["event"] == "partitions_revoked"]
    assert len(revoked) >= 2  # the join, then the shutdown
    assert any(e["event"] == "decode_pool_ready" for e in second.events())
    if exactly_once:  # the default ids: one slot each on this host
        ids = [
            next(e for e in w.events() if e["event"] == "transactions_initialised")[
                "transactional_id"
            ]
            for w in (first, second)
        ]
        assert ids[0] != ids[1] and ids[0].endswith("-0") and ids[1].endswith("-1")


# -- kill -9 with a decode pool ---------------------------------------------------------------
@pytest.mark.slow  # several worker processes against the broker, ~20-25 s each
@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_kill_9_with_a_decode_pool_loses_nothing_and_leaves_no_process(
    delivery: str,
    kafka_bootstrap: str,
    shared_data: Path,
    tmp_path: Path,
    workers,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The kill -9 test of test_stream_worker.py, run with ``decode_workers: 2``: the same
    guarantees hold, and the pool processes of each killed worker die with it."""
    import os

    from tests import test_stream_worker

    plain_config = test_stream_worker.write_config
    monkeypatch.setattr(
        test_stream_worker,
        "write_config",
        lambda *args, **fields: plain_config(*args, **fields, decode_workers=2),
    )
    started = []

    def start(*args, **kwargs):
        worker = workers(*args, **kwargs)
        started.append(worker)
        return worker

    test_stream_worker.test_kill_9_mid_stream_loses_nothing(
        delivery, kafka_bootstrap, shared_data, tmp_path, start
    )
    assert len(started) == 4  # three killed, one stopped
    pids = []
    for worker in started:
        (ready,) = [e for e in worker.events() if e["event"] == "decode_pool_ready"]
        assert len(ready["pids"]) == 2
        pids += ready["pids"]

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0

    wait_until(lambda: not any(alive(p) for p in pids), 10, "the pool processes to exit")
