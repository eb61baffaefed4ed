"""`astroclf stream` against what an attacker or a tired operator sends it.

Each test first reproduced its defect (found by an independent probe of the worker):

- a message whose key or headers alone exceed ``message.max.bytes`` crashed the worker in a
  loop; now its dead letter goes out with the input's headers left out or the key cut, and
  the alert behind it is classified (tansu, default settings);
- dead letters were kept in memory (up to 20,000 messages, values included): memory now stays
  flat over 1,000 dead letters of 1 MB;
- a password in the plain ``kafka`` map was logged in clear at start-up;
- a delivery that never reports was bounded by librdkafka's 300 s ``message.timeout.ms``, as
  long as ``max.poll.interval.ms``; now by the worker's own ``delivery_retry_s``;
- an unreachable bootstrap wrote thousands of log lines; a typo in a librdkafka property was a
  crash with a traceback instead of a configuration error.
"""

from __future__ import annotations

import gc
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kafka_broker import free_port, read_topic, require_stream_extra
from tests.test_stream_worker import (  # noqa: F401  (workers: a fixture)
    SIGTERM_LIMIT_S,
    all_committed,
    decode_output,
    new_topics,
    wait_until,
    workers,
    write_config,
    ztf_alert_ids,
)

require_stream_extra()


# -- 1. a key or headers larger than message.max.bytes ---------------------------------------
@pytest.mark.kafka
def test_an_oversized_key_or_header_is_cut_never_a_crash_loop(
    kafka_bootstrap: str,
    shared_data: Path,
    tmp_path: Path,
    workers,  # noqa: F811
) -> None:
    from confluent_kafka import Producer

    bootstrap = kafka_bootstrap
    topics = new_topics(bootstrap, input_partitions=1)
    config = write_config(
        tmp_path / "stream.yaml", bootstrap, topics, input_format="ztf-avro", model="atat-ztf"
    )
    alert = sorted((shared_data / "alerts" / "ztf").glob("**/*.avro"))[0].read_bytes()
    worker = workers(config, tmp_path / "worker.log").wait_ready()
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 60_000_000})
    producer.produce(topics.input, key=b"K" * 1_100_000, value=b"garbage")
    producer.produce(topics.input, key=b"h", value=b"junk", headers=[("big", b"H" * 1_100_000)])
    producer.produce(topics.input, key=b"good", value=alert)
    assert producer.flush(30) == 0
    wait_until(lambda: all_committed(bootstrap, topics), 60, "every input offset committed")
    assert worker.process.poll() is None  # never exited
    code, seconds = worker.terminate()
    assert code == 0 and seconds < SIGTERM_LIMIT_S

    outputs = read_topic(bootstrap, topics.output)
    assert sorted(decode_output(m.value())["alertId"] for m in outputs) == sorted(
        a for _, a in ztf_alert_ids(alert)
    )
    dead = read_topic(bootstrap, topics.dead_letter)
    assert len(dead) == 2
    by_offset = {int(dict(m.headers())["astroclf.source.offset"]): m for m in dead}
    big_key, big_header = by_offset[0], by_offset[1]
    headers = dict(big_key.headers())
    assert headers["astroclf.key.truncated"] == b"1100000"
    assert 0 < len(big_key.key()) < 1_000_000 and set(big_key.key()) == {ord("K")}
    assert big_key.value() == b"garbage"  # the value is kept whole: the key gave way
    headers = dict(big_header.headers())
    assert "big" not in headers and b"do not fit" in headers["astroclf.headers.dropped"]
    assert big_header.key() == b"h" and big_header.value() == b"junk"
    assert not any(e["event"] in ("worker_failed", "worker_crashed") for e in worker.events())


def test_dead_letter_planning_cuts_key_and_headers_to_fit() -> None:
    from confluent_kafka import Message

    from astro_classifier.stream.batch import BatchResult, DeadLetter
    from astro_classifier.stream.delivery import AtLeastOnceDelivery, serialized_size

    delivery = AtLeastOnceDelivery(
        None, None, output_topic="out", dead_letter_topic="dlq", max_message_bytes=10_000
    )
    cases = [
        Message(topic="in", partition=0, offset=1, key=b"K" * 50_000, value=b"v" * 3_000),
        Message(topic="in", partition=0, offset=2, key=b"k", value=b"v", headers=[("h", b"x" * 50_000)]),
        Message(
            topic="in", partition=0, offset=3, key=b"K" * 50_000, value=b"v" * 50_000,
            headers=[("h", b"x" * 50_000), ("trace", b"t")],
        ),
    ]  # fmt: skip
    result = BatchResult([], [DeadLetter(m, "InputError", "bad") for m in cases], 0.0, 0.0, 0.0)
    items = delivery.plan(result)
    for item in items:
        assert serialized_size(item.key, item.value, item.headers) <= 10_000 - 512
    first, second, third = (dict(item.headers) for item in items)
    assert first["astroclf.key.truncated"] == b"50000" and items[0].value == b"v" * 3_000
    assert "astroclf.headers.dropped" in second and "h" not in second and items[1].key == b"k"
    assert "astroclf.key.truncated" not in second
    assert third["astroclf.truncated"] == b"50000" and third["astroclf.key.truncated"] == b"50000"
    assert len(items[2].key) == 1024 and "trace" not in third  # all own headers go together


def test_a_refused_dead_letter_sheds_value_then_headers_then_key() -> None:
    from confluent_kafka import Message

    from astro_classifier.stream.batch import DeadLetter
    from astro_classifier.stream.delivery import AtLeastOnceDelivery, Undeliverable

    delivery = AtLeastOnceDelivery(
        None, None, output_topic="out", dead_letter_topic="dlq", max_message_bytes=1_000_000
    )
    message = Message(
        topic="in", partition=0, offset=7, key=b"kk", value=b"v", headers=[("a", b"b")]
    )
    dead = DeadLetter(message, "InputError", "bad")
    now = None
    shapes = []
    for _ in range(5):
        try:
            item = delivery._dead_item(
                dead, now or __import__("datetime").datetime.now(), shrink=True
            )
        except Undeliverable:
            shapes.append("undeliverable")
            break
        shapes.append((item.value, item.key, "a" in dict(item.headers)))
    assert shapes == [
        (b"", b"kk", True),
        (b"", b"kk", False),
        (b"", b"k", False),
        (b"", b"", False),
        "undeliverable",
    ]


# -- 2. dead letters are not kept in memory ----------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc (Linux)")
def test_memory_stays_flat_over_a_thousand_large_dead_letters() -> None:
    from confluent_kafka import Message

    from astro_classifier.inference.model import LoadedModel
    from astro_classifier.stream import batch as batch_module
    from astro_classifier.stream.batch import BatchProcessor
    from astro_classifier.stream.delivery import AtLeastOnceDelivery

    processor = BatchProcessor(LoadedModel.load("atat-ztf", "cpu"), "ztf-avro", "avro")
    delivery = AtLeastOnceDelivery(
        None, None, output_topic="out", dead_letter_topic="dlq", max_message_bytes=2_000_000
    )
    value = b"\x00garbage" * 131_072  # 1 MiB, not Avro
    rss = []
    for batch in range(10):
        messages = [
            Message(topic="in", partition=0, offset=batch * 100 + i, key=b"k", value=value + b"")
            for i in range(100)
        ]
        items = delivery.plan(processor.process(messages))
        assert len(items) == 100 and all(item.dead is not None for item in items)
        del messages, items
        batch_module.release_headers()  # what the worker does once a batch is delivered
        gc.collect()
        rss.append(_rss_bytes())
    growth = (rss[-1] - rss[0]) / 2**20
    print(f"RSS after batches 1..10 of 100 dead letters of 1 MiB: +{growth:.0f} MiB")
    assert growth < 150, rss  # before: +100 MiB per batch (every message kept alive)
    assert len(batch_module._HEADERS_READ) == 0


# -- 3. secrets in the plain kafka map ---------------------------------------------------------
def test_secret_looking_kafka_properties_are_redacted(monkeypatch) -> None:
    from astro_classifier.stream.config import StreamSettings

    monkeypatch.setenv("ASTROCLF_KAFKA__SASL_PASSWORD", "hunter2-env")
    settings = StreamSettings(
        input_topics=["in"],
        output_topic="out",
        dead_letter_topic="dlq",
        kafka={
            "sasl.username": "alice",
            "ssl.key.password": "hunter2-yaml",
            "sasl.oauthbearer.client.secret": "hunter2-oauth",
            "sasl.oauthbearer.token.endpoint.url": "https://example.invalid/token",
        },
    )
    text = json.dumps(settings.redacted())
    assert "hunter2" not in text and "example.invalid" not in text
    assert settings.redacted()["kafka"]["sasl.username"] == "alice"
    assert sorted(settings.secret_kafka_properties()) == [
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.token.endpoint.url",
        "sasl_password",
        "ssl.key.password",
    ]
    assert settings.librdkafka()["sasl.password"] == "hunter2-env"  # still reaches librdkafka


def test_no_log_line_of_a_failed_start_shows_a_password(tmp_path: Path) -> None:
    """The worker, started for real, with a password in the plain map: start-up fails
    (nothing listens at the bootstrap address) and no line shows the password."""
    from tests.test_stream_worker import Topics

    topics = Topics("in", "out", "dlq", "group", 1)
    config = write_config(
        tmp_path / "stream.yaml",
        f"127.0.0.1:{free_port()}",
        topics,
        input_format="json",
        model="atat-ztf",
        startup_timeout_s=3.0,
        kafka={
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": "alice",
        },
    )
    env_password = "ASTROCLF_KAFKA__SASL_PASSWORD"
    done = _run_worker(config, {env_password: "hunter2-secret"})
    assert done.returncode == 1
    assert "hunter2" not in done.stderr
    events = _events(done.stderr)
    warning = next(e for e in events if e["event"] == "secret_in_kafka_map")
    assert warning["properties"] == ["sasl_password"]
    assert any(e["event"] == "startup_failed" for e in events)


def _run_worker(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "astro_classifier.cli.app", "stream", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def _events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


# -- 5. a stuck delivery is bounded by the worker ---------------------------------------------
class _StuckProducer:
    """A producer whose deliveries never report (a broker that accepts and never answers)."""

    def __init__(self) -> None:
        self.queued = 0
        self.purged = False

    def produce(self, *args, **kwargs) -> None:
        self.queued += 1

    def __len__(self) -> int:
        return self.queued

    def flush(self, timeout: float) -> int:
        return self.queued

    def poll(self, timeout: float) -> int:
        return 0

    def purge(self, in_queue: bool, in_flight: bool, blocking: bool) -> None:
        self.purged = True


def test_a_flush_that_never_completes_fails_the_batch_after_delivery_retry_s() -> None:
    from astro_classifier.stream.batch import BatchResult, Output
    from astro_classifier.stream.codecs import MessageRef
    from astro_classifier.stream.delivery import AtLeastOnceDelivery, DeliveryFailed

    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    producer = _StuckProducer()
    producer.flush = lambda timeout: sleep(timeout) or producer.queued  # type: ignore[method-assign]
    delivery = AtLeastOnceDelivery(
        producer,
        None,
        output_topic="out",
        dead_letter_topic="dlq",
        retry_for_s=30.0,
        clock=lambda: now[0],
        sleep=sleep,
    )
    out = Output(b"k", b"v", MessageRef("in", 0, 5, -1))
    result = BatchResult([out], [], 0.0, 0.0, 0.0)
    with pytest.raises(DeliveryFailed, match="delivery_retry_s"):
        delivery.deliver([], result)
    assert 30.0 < now[0] < 31.0 and producer.purged


def test_message_timeout_stays_under_max_poll_interval() -> None:
    from pydantic import ValidationError

    from astro_classifier.stream.config import StreamSettings

    base = {"input_topics": ["in"], "output_topic": "out", "dead_letter_topic": "dlq"}
    settings = StreamSettings(**base)
    assert settings.message_timeout_ms() == 120_000 < settings.max_poll_interval_ms() == 300_000
    eos = StreamSettings(**base, delivery="exactly-once")
    assert eos.message_timeout_ms() == 60_000  # librdkafka: <= transaction.timeout.ms
    assert StreamSettings(**base, kafka={"message.timeout.ms": 9000}).message_timeout_ms() == 9000
    with pytest.raises(ValidationError, match="message.timeout.ms"):
        StreamSettings(**base, kafka={"message.timeout.ms": 300_000})
    with pytest.raises(ValidationError, match="delivery_retry_s"):
        StreamSettings(**base, delivery_retry_s=400)


# -- 7. log floods and typos in librdkafka properties -----------------------------------------
def test_repeated_warnings_are_rate_limited_with_a_count() -> None:
    from astro_classifier.stream.logs import JsonLogFormatter, RepeatFilter, log_event

    now = [0.0]
    lines: list[dict] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(self.format(record)))

    handler = Capture()
    handler.setFormatter(JsonLogFormatter())
    handler.addFilter(RepeatFilter(window_s=10.0, clock=lambda: now[0]))
    logger = logging.getLogger("astro_classifier.stream")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        for i in range(100):  # 100 failures in 5 s, numbers varying
            now[0] = i * 0.05
            log_event(logging.WARNING, "kafka_error", code="_TRANSPORT", error=f"after {i}ms")
            log_event(logging.INFO, "progress", consumed=i)  # not an error: never limited
        log_event(logging.WARNING, "kafka_error", code="_AUTHENTICATION", error="refused")
        now[0] = 11.0
        log_event(logging.WARNING, "kafka_error", code="_TRANSPORT", error="after 7ms")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    errors = [line for line in lines if line["event"] == "kafka_error"]
    assert [(e["code"], e.get("repeated")) for e in errors] == [
        ("_TRANSPORT", None),
        ("_AUTHENTICATION", None),
        ("_TRANSPORT", 99),
    ]
    assert sum(line["event"] == "progress" for line in lines) == 100


def test_an_unreachable_bootstrap_writes_few_log_lines(tmp_path: Path) -> None:
    from tests.test_stream_worker import Topics

    config = write_config(
        tmp_path / "stream.yaml",
        f"127.0.0.1:{free_port()}",
        Topics("in", "out", "dlq", "group", 1),
        input_format="json",
        model="atat-ztf",
        startup_timeout_s=8.0,
        log_level="DEBUG",
    )
    done = _run_worker(config, {})
    events = _events(done.stderr)
    assert done.returncode == 1 and any(e["event"] == "startup_failed" for e in events)
    kinds = [e for e in events if e["event"] in ("log", "kafka_error")]
    print(f"unreachable bootstrap, 8 s: {len(events)} log lines, {len(kinds)} Kafka ones")
    assert len(kinds) <= 30  # one per kind per 10 s (before: ~70 per second)


def test_an_unknown_librdkafka_property_is_a_configuration_error_at_start(
    tmp_path: Path,
) -> None:
    from tests.test_stream_worker import Topics

    config = write_config(
        tmp_path / "stream.yaml",
        f"127.0.0.1:{free_port()}",
        Topics("in", "out", "dlq", "group", 1),
        input_format="json",
        model="atat-ztf",
        kafka={"securty.protocol": "PLAINTEXT"},
    )
    done = _run_worker(config, {})
    events = _events(done.stderr)
    assert done.returncode == 1
    invalid = [e for e in events if e["event"] == "config_invalid"]
    assert invalid and "securty.protocol" in invalid[0]["error"], events
    assert not any(e["event"] in ("worker_crashed", "model_ready") for e in events)
    assert "Traceback" not in done.stderr
