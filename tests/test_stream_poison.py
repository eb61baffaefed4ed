"""`astroclf stream` against bad input and failing dependencies, on a real broker (tansu).

Each test runs the worker as a subprocess (see tests/test_stream_worker.py) and checks the
error policy of astro_classifier/stream/worker.py's docstring in the topics themselves:

- poison messages (broken containers, junk, empty, a header key that is not UTF-8 sent by a
  raw Produce request, forged ``astroclf.*`` headers, a value larger than the producer's
  ``message.max.bytes``) are dead-lettered once each, the good alerts classified once each,
  and the worker stays ready;
- outputs larger than ``message.max.bytes``, in both delivery modes: their inputs are
  dead-lettered with the value cut to fit (``astroclf.truncated``), nothing duplicated;
- a Schema Registry that refuses connections, then answers 500, then recovers, and one that
  is wiped (404 for every id) after serving: nothing is dead-lettered or committed during
  the outage, everything is classified after it;
- a bug in the batch path (injected with ``sitecustomize``): exit 1 after
  ``max_consecutive_failures`` batches, nothing dead-lettered or committed;
- start-up: an unreachable bootstrap or a missing input topic fails fast with exit 1;
- the broker dies mid-stream: ``/ready`` turns 503, SIGTERM exits within ``stop_timeout_s``.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fastavro
import pytest

from tests.kafka_broker import (
    committed_offsets,
    free_port,
    produce_raw,
    read_topic,
    require_stream_extra,
    start_tansu,
    topic_end_offsets,
    transaction_outcomes,
)
from tests.test_stream_worker import (
    PRODUCE_RATE,
    SIGTERM_LIMIT_S,
    Background,
    Worker,
    _http_status,
    all_committed,
    container_bad_messages,
    counter_total,
    decode_output,
    new_topics,
    produce,
    rubin_wire_alert_ids,
    wait_for_outputs,
    wait_until,
    write_config,
    ztf_alert_ids,
)

require_stream_extra()
pytestmark = pytest.mark.kafka


@pytest.fixture
def workers():
    """Start workers; any still running at the end of the test is killed."""
    started: list[Worker] = []

    def start(config: Path, log_path: Path, extra_env: dict | None = None) -> Worker:
        worker = Worker(config, log_path, extra_env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


def ztf_files(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "alerts" / "ztf").glob("**/*.avro"))


def dead_letter_headers(message) -> dict[str, bytes]:
    headers = message.headers() or []
    names = [k for k, _ in headers]
    ours = [k for k in names if k.startswith("astroclf.")]
    assert len(ours) == len(set(ours)), f"duplicated astroclf headers: {names}"
    return dict(headers)


# -- poison messages, at-least-once ---------------------------------------------------------
def test_poison_messages_are_dead_lettered_once_and_good_alerts_classified_once(
    kafka_bootstrap: str, shared_data: Path, tmp_path: Path, workers
) -> None:
    from astro_classifier.stream.replay import replay

    bootstrap = kafka_bootstrap
    topics = new_topics(bootstrap, input_partitions=1)
    config = write_config(
        tmp_path / "stream.yaml",
        bootstrap,
        topics,
        input_format="ztf-avro",
        model="atat-ztf",
        kafka={"message.max.bytes": 20000},
    )
    files = ztf_files(shared_data)[:20]
    good = files[0].read_bytes()
    worker = workers(config, tmp_path / "worker.log").wait_ready()

    replay(files[:10], topics.input, {"bootstrap.servers": bootstrap})
    bad = container_bad_messages(good, "ztf")  # 6: broken containers, junk, empty, JSON
    forged = [("astroclf.error.class", b"Forged"), ("astroclf.source.offset", b"-5")]
    bad += [
        (b"forged", b"junk with forged headers", [*forged, ("trace", b"t-9")]),
        (b"oversized", bytes(range(256)) * 400, [("trace", b"big")]),  # 102,400 bytes
    ]
    produce(bootstrap, topics.input, bad)
    # A header key that is not UTF-8, on junk and on a good alert (raw Produce requests).
    produce_raw(bootstrap, topics.input, 0, b"bad-key-junk", b"junk", [(b"\xff\xfe", b"x")])
    produce_raw(bootstrap, topics.input, 0, b"bad-key-good", good, [(b"k\xc3\x28", b"y")])
    replay(files[10:], topics.input, {"bootstrap.servers": bootstrap})
    wait_until(lambda: all_committed(bootstrap, topics), 60, "every input offset committed")
    assert _http_status(f"{worker.url}/ready") == 200  # poison never makes it unready
    metrics = worker.metrics()
    code, seconds = worker.terminate()
    assert code == 0 and seconds < SIGTERM_LIMIT_S

    inputs = read_topic(bootstrap, topics.input)
    outputs = read_topic(bootstrap, topics.output)
    dead = read_topic(bootstrap, topics.dead_letter)
    n_bad = len(bad) + 1
    assert len(inputs) == len(files) + n_bad + 1
    # Every good alert once (21 with the one carrying a non-UTF-8 header key): no duplicate.
    got = sorted(
        (decode_output(m.value())["sourceOffset"], decode_output(m.value())["alertId"])
        for m in outputs
    )
    expected = sorted(
        (m.offset(), alert)
        for m in inputs
        if m.value() and m.value() not in {v for _, v, _ in bad} | {b"junk"}
        for _, alert in ztf_alert_ids(m.value())
    )
    assert got == expected and len(got) == len(files) + 1
    assert len(dead) == n_bad
    by_key = {m.key(): (m, dead_letter_headers(m)) for m in dead}
    assert len(by_key) == n_bad  # one dead letter per bad message
    for _, headers in by_key.values():
        assert headers["astroclf.error.class"] == b"InputError"
        assert int(headers["astroclf.source.offset"]) >= 0
    _, forged_headers = by_key[b"forged"]
    assert forged_headers["trace"] == b"t-9"
    big, big_headers = by_key[b"oversized"]
    assert big_headers["astroclf.truncated"] == b"102400"
    assert (
        0 < len(big.value()) < 20000
        and big.value() == (bytes(range(256)) * 400)[: len(big.value())]
    )
    assert big_headers["trace"] == b"big"
    junk, junk_headers = by_key[b"bad-key-junk"]
    assert junk.value() == b"junk"
    assert b"could not be read" in junk_headers["astroclf.headers.dropped"]
    truncated = [h for _, h in by_key.values() if "astroclf.truncated" in h]
    assert len(truncated) == sum(1 for _, v, _ in bad if len(v) > 20000)  # 4
    assert counter_total(metrics, "astroclf_dead_letters_truncated_total") == len(truncated)
    assert (
        counter_total(metrics, "astroclf_dead_lettered_messages_total", reason="InputError")
        == n_bad
    )
    print(f"poison run: {len(outputs) - len(expected)} duplicate classification(s)")


# -- outputs larger than message.max.bytes, both modes ---------------------------------------
@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_outputs_too_large_dead_letter_their_inputs_truncated(
    delivery: str, kafka_bootstrap: str, shared_data: Path, tmp_path: Path, workers
) -> None:
    from astro_classifier.stream.replay import replay

    bootstrap = kafka_bootstrap
    exactly_once = delivery == "exactly-once"
    topics = new_topics(bootstrap, input_partitions=1)
    config = write_config(
        tmp_path / "stream.yaml",
        bootstrap,
        topics,
        input_format="ztf-avro",
        model="atat-ztf",
        output_format="json",  # ~1 kB per classification: over the 1,000-byte limit
        delivery=delivery,
        transactional_id=f"astroclf-big-{delivery}-{tmp_path.name}",
        kafka={"message.max.bytes": 1000},
    )
    files = ztf_files(shared_data)[:8]
    worker = workers(config, tmp_path / "worker.log").wait_ready()
    replay(files, topics.input, {"bootstrap.servers": bootstrap})
    wait_until(lambda: all_committed(bootstrap, topics), 60, "every input offset committed")
    code, _ = worker.terminate()
    assert code == 0
    isolation = "read_committed" if exactly_once else "read_uncommitted"
    assert not read_topic(bootstrap, topics.output, isolation=isolation)
    dead = read_topic(bootstrap, topics.dead_letter, isolation=isolation)
    if exactly_once:
        log = transaction_outcomes(bootstrap, topics.dead_letter)
        assert not log.plain and not log.open
        dead = [m for m in dead if m.offset() in log.committed]
    assert sorted(int(dead_letter_headers(m)["astroclf.source.offset"]) for m in dead) == list(
        range(len(files))
    )
    for m in dead:
        headers = dead_letter_headers(m)
        assert headers["astroclf.error.class"] == b"MessageTooLarge"
        original = files[int(headers["astroclf.source.offset"])].read_bytes()
        assert headers["astroclf.truncated"] == str(len(original)).encode()
        assert len(m.value()) < 1000 and original.startswith(m.value())


# -- Schema Registry down, then up -----------------------------------------------------------
class RegistryStandIn:
    """A loopback Confluent Schema Registry serving the Rubin schemas of a schema folder
    (id = major * 100 + minor) and, at ``/subjects``, one subject per alert schema there;
    ``status`` 500 makes it fail; ``wiped`` makes it answer 404 for every schema id and an
    empty list of subjects (a registry whose storage was lost)."""

    def __init__(self, schema_dir: Path, port: int) -> None:
        owner = self
        self.status = 200
        self.wiped = False
        self.requests = 0
        subjects = sorted(
            f"{path.stem}-value" for path in schema_dir.glob("*/*/lsst.v*_*.alert.avsc")
        )

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                owner.requests += 1
                if owner.status != 200:
                    status, body = owner.status, b'{"error_code": 50001, "message": "down"}'
                elif self.path.rstrip("/") == "/subjects":
                    status, body = 200, json.dumps([] if owner.wiped else subjects).encode()
                else:
                    schema_id = int(self.path.rstrip("/").rsplit("/", 1)[1])
                    major, minor = divmod(schema_id, 100)
                    path = (
                        schema_dir / str(major) / str(minor) / f"lsst.v{major}_{minor}.alert.avsc"
                    )
                    if owner.wiped or not path.is_file():
                        status, body = 404, b'{"error_code": 40403, "message": "not found"}'
                    else:
                        text = fastavro.schema.to_parsing_canonical_form(
                            fastavro.schema.load_schema(path)
                        )
                        status, body = 200, json.dumps({"schema": text}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_schema_registry_outage_is_retried_never_dead_lettered(
    kafka_bootstrap: str, shared_data: Path, tmp_path: Path, workers
) -> None:
    from astro_classifier.stream.replay import replay

    bootstrap = kafka_bootstrap
    schema_dir = shared_data / "alerts" / "lsst" / "schema"
    files = sorted((shared_data / "alerts" / "lsst" / "wire-v7.4").glob("*.avro"))
    port = free_port()  # nothing listens yet: connection refused
    topics = new_topics(bootstrap, input_partitions=1)
    config = write_config(
        tmp_path / "stream.yaml",
        bootstrap,
        topics,
        input_format="rubin-wire",
        schema_registry_url=f"http://127.0.0.1:{port}",
        model="atat-lsst",
        retry_backoff_max_s=1.0,
    )
    worker = workers(config, tmp_path / "worker.log").wait_ready()
    replay(files, topics.input, {"bootstrap.servers": bootstrap})

    def retried(n: int) -> bool:
        return sum(e["event"] == "batch_retry" for e in worker.events()) >= n

    wait_until(lambda: retried(2), 30, "retries while the registry refuses connections")
    assert _http_status(f"{worker.url}/ready") == 503
    registry = RegistryStandIn(schema_dir, port)
    try:
        registry.status = 500
        wait_until(lambda: registry.requests >= 2, 30, "retries while the registry answers 500")
        assert committed_offsets(bootstrap, topics.group, topics.input)[0] < 0
        assert topic_end_offsets(bootstrap, topics.output)[0] == 0
        assert topic_end_offsets(bootstrap, topics.dead_letter)[0] == 0
        registry.status = 200  # recovers
        wait_until(lambda: all_committed(bootstrap, topics), 60, "every input offset committed")
        wait_until(lambda: _http_status(f"{worker.url}/ready") == 200, 10, "ready again")
        metrics = worker.metrics()
        code, _ = worker.terminate()
    finally:
        registry.close()
    assert code == 0
    outputs = read_topic(bootstrap, topics.output)
    assert not read_topic(bootstrap, topics.dead_letter)
    ids = rubin_wire_alert_ids(schema_dir)
    expected = sorted(alert for path in files for _, alert in ids(path.read_bytes()))
    assert sorted(decode_output(m.value())["alertId"] for m in outputs) == expected
    assert counter_total(metrics, "astroclf_retries_total", reason="Schema Registry") >= 2
    events = [e["event"] for e in worker.events()]
    assert "dead_letter" not in events


def test_a_wiped_schema_registry_is_retried_never_dead_lettered(
    kafka_bootstrap: str, shared_data: Path, tmp_path: Path, workers
) -> None:
    """A registry that served schemas, then answers 404 for every id (wiped, or a proxy or
    URL change): the 404s are the registry's fault, not the alerts'."""
    import io

    from astro_classifier.stream.replay import replay

    bootstrap = kafka_bootstrap
    schema_dir = shared_data / "alerts" / "lsst" / "schema"
    files = sorted((shared_data / "alerts" / "lsst" / "wire-v7.4").glob("*.avro"))
    # The same alerts as v7.3 (schema id 703): an id the worker has not cached yet.
    v7_4 = fastavro.schema.load_schema(schema_dir / "7" / "4" / "lsst.v7_4.alert.avsc")
    v7_3 = fastavro.schema.load_schema(schema_dir / "7" / "3" / "lsst.v7_3.alert.avsc")
    as_v7_3 = []
    for path in files:
        value = path.read_bytes()
        assert value[:5] == b"\x00" + (704).to_bytes(4, "big")
        buffer = io.BytesIO()
        fastavro.schemaless_writer(
            buffer, v7_3, fastavro.schemaless_reader(io.BytesIO(value[5:]), v7_4, None)
        )
        as_v7_3.append((None, b"\x00" + (703).to_bytes(4, "big") + buffer.getvalue(), []))
    port = free_port()
    topics = new_topics(bootstrap, input_partitions=1)
    config = write_config(
        tmp_path / "stream.yaml",
        bootstrap,
        topics,
        input_format="rubin-wire",
        schema_registry_url=f"http://127.0.0.1:{port}",
        model="atat-lsst",
        retry_backoff_max_s=1.0,
    )
    registry = RegistryStandIn(schema_dir, port)
    try:
        worker = workers(config, tmp_path / "worker.log").wait_ready()
        replay(files, topics.input, {"bootstrap.servers": bootstrap})  # schema id 704
        wait_until(lambda: all_committed(bootstrap, topics), 60, "the v7.4 alerts committed")
        assert topic_end_offsets(bootstrap, topics.output)[0] == len(files)
        registry.wiped = True
        produce(bootstrap, topics.input, as_v7_3)

        def retries() -> list[dict]:
            return [e for e in worker.events() if e["event"] == "batch_retry"]

        wait_until(lambda: len(retries()) >= 3, 30, "retries while the registry is wiped")
        assert _http_status(f"{worker.url}/ready") == 503
        for event in retries():
            assert event["dependency"] == "Schema Registry"
            assert "no longer knows schema id 704 it served before" in event["error"], event
        assert committed_offsets(bootstrap, topics.group, topics.input)[0] == len(files)
        assert topic_end_offsets(bootstrap, topics.output)[0] == len(files)
        assert topic_end_offsets(bootstrap, topics.dead_letter)[0] == 0
        registry.wiped = False  # restored
        wait_until(lambda: all_committed(bootstrap, topics), 60, "every input offset committed")
        wait_until(lambda: _http_status(f"{worker.url}/ready") == 200, 10, "ready again")
        metrics = worker.metrics()
        code, _ = worker.terminate()
    finally:
        registry.close()
    assert code == 0
    outputs = read_topic(bootstrap, topics.output)
    assert not read_topic(bootstrap, topics.dead_letter)
    ids = rubin_wire_alert_ids(schema_dir)
    values = [path.read_bytes() for path in files] + [value for _, value, _ in as_v7_3]
    expected = sorted(alert for value in values for _, alert in ids(value))
    assert sorted(decode_output(m.value())["alertId"] for m in outputs) == expected
    assert counter_total(metrics, "astroclf_retries_total", reason="Schema Registry") >= 3
    assert "dead_letter" not in [e["event"] for e in worker.events()]


# -- a bug: stop after max_consecutive_failures, nothing dead-lettered or committed ----------
def test_a_bug_stops_the_worker_without_dead_letters_or_commits(
    kafka_bootstrap: str, shared_data: Path, tmp_path: Path, workers
) -> None:
    from astro_classifier.stream.replay import replay

    bootstrap = kafka_bootstrap
    topics = new_topics(bootstrap, input_partitions=1)
    config = write_config(
        tmp_path / "stream.yaml",
        bootstrap,
        topics,
        input_format="ztf-avro",
        model="atat-ztf",
        max_consecutive_failures=2,
        retry_backoff_max_s=0.5,
    )
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import astro_classifier.stream.batch as b\n"
        "def classify(*args, **kwargs):\n"
        "    raise RuntimeError('injected bug (onnxruntime fault stand-in)')\n"
        "b.classify = classify\n"
    )
    worker = workers(config, tmp_path / "worker.log", {"PYTHONPATH": str(inject)}).wait_ready()
    replay(ztf_files(shared_data)[:5], topics.input, {"bootstrap.servers": bootstrap})
    code = worker.process.wait(60)
    assert code == 1
    events = worker.events()
    failed = [e for e in events if e["event"] == "batch_failed"]
    assert len(failed) == 2 and failed[0]["error_class"] == "RuntimeError"
    assert any(e["event"] == "worker_failed" for e in events)
    assert committed_offsets(bootstrap, topics.group, topics.input)[0] < 0
    assert topic_end_offsets(bootstrap, topics.dead_letter)[0] == 0
    assert topic_end_offsets(bootstrap, topics.output)[0] == 0


# -- start-up fails fast ---------------------------------------------------------------------
def test_start_up_fails_fast_when_kafka_is_unreachable_refuses_login_or_lacks_the_topic(
    kafka_bootstrap: str, tmp_path: Path, workers
) -> None:
    topics = new_topics(kafka_bootstrap, input_partitions=1)
    sasl = {
        "kafka": {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": "astroclf",
        },
        "kafka_secrets": {"sasl.password": "wrong"},
    }
    cases = {
        "unreachable": (f"127.0.0.1:{free_port()}", topics, "not reachable within 3.0 s", {}),
        "missing topic": (kafka_bootstrap, None, "do not exist", {}),
        # tansu refuses the SASL handshake: librdkafka reports _AUTHENTICATION
        "authentication": (kafka_bootstrap, topics, "authentication with", sasl),
    }
    for name, (bootstrap, topics_, text, extra) in cases.items():
        if topics_ is None:
            topics_ = new_topics(kafka_bootstrap, input_partitions=1)
            topics_.input = "no-such-topic-" + name.replace(" ", "-")
        config = write_config(
            tmp_path / f"{name}.yaml",
            bootstrap,
            topics_,
            input_format="json",
            model="atat-ztf",
            startup_timeout_s=3.0,
            **extra,
        )
        worker = workers(config, tmp_path / f"{name}.log")
        code = worker.process.wait(90)
        events = worker.events()
        failed = [e for e in events if e["event"] == "startup_failed"]
        assert code == 1 and failed, name
        assert text in failed[0]["error"], failed[0]
        started = next(e for e in events if e["event"] == "metrics_listening")["ts"]
        from datetime import datetime

        seconds = (
            datetime.fromisoformat(failed[0]["ts"]) - datetime.fromisoformat(started)
        ).total_seconds()
        print(f"start-up failure ({name}): {seconds:.2f} s after the metrics server started")
        assert seconds < 6.0


# -- the broker goes away mid-stream: /ready 503, SIGTERM within stop_timeout_s --------------
def test_broker_down_makes_the_worker_unready_and_sigterm_still_exits_in_time(
    shared_data: Path, tmp_path: Path, workers
) -> None:
    from confluent_kafka import Producer

    broker, bootstrap = start_tansu(tmp_path / "tansu.log")
    try:
        topics = new_topics(bootstrap, input_partitions=1)
        config = write_config(
            tmp_path / "stream.yaml",
            bootstrap,
            topics,
            input_format="ztf-avro",
            model="atat-ztf",
            stop_timeout_s=5.0,
        )
        worker = workers(config, tmp_path / "worker.log").wait_ready()
        values = [p.read_bytes() for p in ztf_files(shared_data)]

        def produce_paced() -> None:
            producer = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 5000})
            started = time.monotonic()
            for i, value in enumerate(values):
                time.sleep(max(0.0, i / PRODUCE_RATE - (time.monotonic() - started)))
                producer.produce(topics.input, value=value)
                producer.poll(0)
            producer.flush(10)

        production = Background(produce_paced)
        wait_for_outputs(bootstrap, topics.output, 50)
        broker.kill()  # mid-stream: deliveries in flight hang until the broker is back
        broker.wait(10)
        killed = time.monotonic()
        wait_until(lambda: _http_status(f"{worker.url}/ready") == 503, 30, "/ready 503")
        unready_after = time.monotonic() - killed
        assert _http_status(f"{worker.url}/healthz") == 200  # alive, just not ready
        code, seconds = worker.terminate()
        production.join(60)
        print(
            f"broker down: /ready 503 after {unready_after:.2f} s; SIGTERM exit {code} "
            f"in {seconds:.2f} s (stop_timeout_s 5)"
        )
        assert seconds < 5.0 + 1.5
    finally:
        if broker.poll() is None:
            broker.kill()
            broker.wait(10)
