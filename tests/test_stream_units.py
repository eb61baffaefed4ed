"""The stream worker's parts that need no broker: settings, metrics endpoints, micro-batches.

Kafka itself is in tests/test_stream_worker.py (marker ``kafka``).
"""

from __future__ import annotations

import io
import json
import logging
import urllib.error
import urllib.request
from pathlib import Path

import fastavro
import numpy as np
import pydantic
import pytest
import yaml

from tests.kafka_broker import require_stream_extra

require_stream_extra()

from astro_classifier.stream.config import StreamSettings  # noqa: E402
from astro_classifier.stream.metrics import LoopHealth, MetricsServer, StreamMetrics  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STREAM_CONFIGS = sorted((PROJECT_ROOT / "configs").glob("stream_*.yaml"))
SECRET = "hunter2-do-not-log"
MINIMAL = {"input_topics": ["alerts"], "output_topic": "out", "dead_letter_topic": "dlq"}


@pytest.fixture(autouse=True)
def _no_astroclf_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read ASTROCLF_* variables: start every test without any."""
    import os

    for name in list(os.environ):
        if name.startswith("ASTROCLF_") and name != "ASTROCLF_SHARED_DATA":
            monkeypatch.delenv(name)


def _write(tmp_path: Path, doc: dict, name: str = "stream.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


# -- settings -------------------------------------------------------------------------------
def test_the_example_stream_configs_are_found() -> None:
    assert {p.name for p in STREAM_CONFIGS} >= {"stream_ztf.yaml", "stream_rubin.yaml"}


@pytest.mark.parametrize("path", STREAM_CONFIGS, ids=[p.name for p in STREAM_CONFIGS])
def test_every_example_stream_config_validates(path: Path) -> None:
    settings = StreamSettings.load(path)
    from astro_classifier.inference.model import read_metadata

    read_metadata(settings.model)  # names a shipped model
    if path.name == "stream_ztf.yaml":
        assert (settings.input_format, settings.model) == ("ztf-avro", "atat-ztf")
    if path.name == "stream_rubin.yaml":
        assert (settings.input_format, settings.model) == ("rubin-wire", "atat-lsst")
        assert settings.schema_dir is not None


def test_environment_overrides_the_file_and_arguments_override_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(
        tmp_path,
        {**MINIMAL, "batch_size": 100, "group_id": "from-file", "kafka": {"linger.ms": "7"}},
    )
    monkeypatch.setenv("ASTROCLF_BATCH_SIZE", "250")
    monkeypatch.setenv("ASTROCLF_INPUT_TOPICS", '["ztf", "ztf-2"]')
    monkeypatch.setenv("ASTROCLF_KAFKA__SASL_MECHANISM", "PLAIN")
    settings = StreamSettings.load(path, group_id="from-argument")
    assert settings.batch_size == 250
    assert settings.input_topics == ["ztf", "ztf-2"]
    assert settings.group_id == "from-argument"
    assert settings.output_topic == "out"  # untouched fields keep their file values
    conf = settings.librdkafka()
    assert conf["sasl.mechanism"] == "PLAIN"  # environment keys: underscores become dots
    assert conf["linger.ms"] == "7"  # ... merged with the file's map


def test_secrets_reach_librdkafka_but_never_repr_or_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, {**MINIMAL, "model": str(tmp_path / "missing.onnx")})
    monkeypatch.setenv("ASTROCLF_KAFKA_SECRETS__SASL_PASSWORD", SECRET)
    settings = StreamSettings.load(path)
    assert settings.librdkafka()["sasl.password"] == SECRET
    for text in (repr(settings), str(settings), json.dumps(settings.redacted())):
        assert SECRET not in text
    assert settings.redacted()["kafka_secrets"] == {"sasl_password": "**********"}

    # The worker logs its settings first thing (then fails here: the model does not exist).
    from astro_classifier.stream.worker import StreamWorker

    try:
        assert StreamWorker(settings).run() == 1
    finally:
        _remove_json_log_handler()
    err = capsys.readouterr().err
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events] == ["worker_starting", "model_load_failed"]
    assert all({"ts", "level", "event"} <= e.keys() for e in events)
    assert events[0]["settings"]["kafka_secrets"] == {"sasl_password": "**********"}
    assert SECRET not in err


def test_an_invalid_secret_is_reported_without_its_value(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from astro_classifier.cli.app import app

    path = _write(tmp_path, {**MINIMAL, "kafka_secrets": {"sasl.password": 123456789}})
    result = CliRunner().invoke(app, ["stream", "--config", str(path)])
    assert result.exit_code == 1
    assert "kafka_secrets.sasl.password" in result.output
    assert "123456789" not in result.output


def test_rubin_wire_without_a_schema_source_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, {**MINIMAL, "input_format": "rubin-wire"})
    with pytest.raises(pydantic.ValidationError, match="schema_dir or schema_registry_url"):
        StreamSettings.load(path)
    assert StreamSettings.load(path, schema_dir=tmp_path).schema_dir == tmp_path
    assert StreamSettings.load(path, schema_registry_url="http://sr:8081").schema_dir is None


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({**MINIMAL, "input_format": "rubin-wire"}, "schema_dir or schema_registry_url"),
        ({"input_topics": ["a"]}, "output_topic: Field required"),
        ({**MINIMAL, "batch_sise": 10}, "batch_sise: Extra inputs are not permitted"),
        ({**MINIMAL, "delivery": "twice"}, "delivery: Input should be"),
    ],
)
def test_cli_reports_an_invalid_config_in_one_line(
    tmp_path: Path, doc: dict, expected: str
) -> None:
    from typer.testing import CliRunner

    from astro_classifier.cli.app import app

    path = _write(tmp_path, doc)
    result = CliRunner().invoke(app, ["stream", "--config", str(path)])
    assert result.exit_code == 1
    text = " ".join(result.output.split())  # the console may wrap a long line
    assert text.startswith(f"error: {path}: invalid stream config:")
    assert expected in text
    assert "Traceback" not in result.output


def test_cli_reports_a_missing_or_unreadable_config(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from astro_classifier.cli.app import app

    result = CliRunner().invoke(app, ["stream", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1 and "stream config not found" in result.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("input_topics: [a\n")
    result = CliRunner().invoke(app, ["stream", "--config", str(broken)])
    assert result.exit_code == 1 and "invalid stream config" in result.output


def test_cli_help_explains_config_and_environment() -> None:
    from typer.testing import CliRunner

    from astro_classifier.cli.app import app

    result = CliRunner().invoke(app, ["stream", "--help"])
    assert result.exit_code == 0
    for text in ("--config", "--metrics-port", "--log-level", "ASTROCLF_", "SIGTERM"):
        assert text in result.output


def _remove_json_log_handler() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_astroclf_json_handler", False):
            root.removeHandler(handler)


# -- metrics and the HTTP endpoints ---------------------------------------------------------
def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_metrics_server_serves_metrics_health_and_readiness() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    metrics = StreamMetrics()
    health = LoopHealth(stall_after_s=60)
    ready = {"value": False}
    with MetricsServer(metrics, "127.0.0.1", 0, health.alive, lambda: ready["value"]) as server:
        assert server.port > 0  # port 0 picked a free one
        base = f"http://127.0.0.1:{server.port}"
        assert _get(f"{base}/healthz")[0] == 503  # the loop has not started
        assert _get(f"{base}/ready")[0] == 503
        health.beat()
        ready["value"] = True
        assert _get(f"{base}/healthz")[0] == 200
        assert _get(f"{base}/ready")[0] == 200

        metrics.consumed.inc(5)
        metrics.produced.inc(4)
        metrics.dead_lettered.labels(reason="InputError").inc()
        metrics.batch_size.observe(5)
        metrics.end_to_end_seconds.observe(0.02)
        status, content_type, body = _get(f"{base}/metrics")
        assert status == 200 and content_type.startswith("text/plain")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body)
            for s in family.samples
        }
        assert samples[("astroclf_consumed_messages_total", ())] == 5
        assert samples[("astroclf_classifications_produced_total", ())] == 4
        assert samples[("astroclf_dead_lettered_messages_total", (("reason", "InputError"),))] == 1
        assert samples[("astroclf_batch_size_messages_count", ())] == 1
        assert samples[("astroclf_end_to_end_latency_seconds_count", ())] == 1
        assert _get(f"{base}/nothing")[0] == 404

        health.stop()  # the loop ended
        assert _get(f"{base}/healthz")[0] == 503


def test_a_stalled_loop_is_not_healthy() -> None:
    health = LoopHealth(stall_after_s=0.0)
    health.beat()
    assert not health.alive()


def test_metrics_have_their_own_registry() -> None:
    a, b = StreamMetrics(), StreamMetrics()  # no "duplicated timeseries" error
    a.consumed.inc()
    assert b"astroclf_consumed_messages_total 0.0" in b.exposition()


def test_consumer_lag_comes_from_librdkafka_statistics() -> None:
    metrics = StreamMetrics()
    stats = {
        "topics": {
            "alerts": {
                "partitions": {
                    "0": {"consumer_lag": 12},
                    "1": {"consumer_lag": -1},  # unknown yet
                    "-1": {"consumer_lag": 0},  # librdkafka's internal partition
                }
            }
        }
    }
    metrics.update_from_librdkafka_stats(json.dumps(stats))
    text = metrics.exposition().decode()
    assert 'astroclf_consumer_lag_messages{partition="0",topic="alerts"} 12.0' in text
    assert 'partition="1"' not in text and 'partition="-1"' not in text
    metrics.forget_partitions([("alerts", 0), ("alerts", 5)])
    assert 'partition="0"' not in metrics.exposition().decode()


# -- one micro-batch without a broker -------------------------------------------------------
class FakeMessage:
    """The accessors of confluent_kafka.Message that the worker uses."""

    def __init__(
        self,
        value: bytes | None,
        offset: int,
        key: bytes | None = None,
        headers: list | None = None,
        topic: str = "alerts",
        partition: int = 0,
        timestamp_ms: int = 1_700_000_000_000,
    ) -> None:
        self._value, self._offset, self._key, self._headers = value, offset, key, headers
        self._topic, self._partition, self._timestamp = topic, partition, timestamp_ms

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def headers(self) -> list | None:
        return self._headers

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, self._timestamp)  # TIMESTAMP_CREATE_TIME

    def error(self) -> None:
        return None


@pytest.fixture(scope="module")
def ztf_model():
    from astro_classifier.inference.model import LoadedModel

    return LoadedModel.load("atat-ztf", "cpu")


def _json_alert(object_id: str, band: str, n: int = 6, alert_id: str | None = None) -> bytes:
    points = [
        {"mjd": 60000.0 + 3 * k, "band": band, "flux": 1000.0 + 50 * k, "flux_err": 20.0}
        for k in range(n)
    ]
    return json.dumps({"object_id": object_id, "alert_id": alert_id, "points": points}).encode()


def _decode_output(value: bytes) -> dict:
    schema = fastavro.schema.load_schema(
        PROJECT_ROOT / "astro_classifier" / "stream" / "schemas" / "classification.avsc"
    )
    return fastavro.schemaless_reader(io.BytesIO(value), schema, None)


def test_a_batch_dead_letters_exactly_the_messages_that_cannot_be_classified(ztf_model) -> None:
    from astro_classifier.stream.batch import UNCLASSIFIABLE, BatchProcessor

    messages = [
        FakeMessage(_json_alert("A", "g", alert_id="a1"), 10, key=b"A"),
        FakeMessage(_json_alert("B", "u"), 11, key=b"B"),  # u: not a band of atat-ztf
        FakeMessage(b"not json", 12, key=b"junk", headers=[("trace", b"t-1")]),
        # The same object twice in one batch, once unclassifiable: the right message must
        # be dead-lettered (classify() names skipped objects by id).
        FakeMessage(_json_alert("A", "y", alert_id="a2"), 13, key=b"A"),
        FakeMessage(_json_alert("A", "r", alert_id="a3"), 14, key=b"A"),
        FakeMessage(None, 15),
    ]
    result = BatchProcessor(ztf_model, "json", "avro").process(messages)

    assert [(d.message.offset(), d.error_class) for d in result.dead_letters] == [
        (11, UNCLASSIFIABLE),
        (12, "InputError"),
        (13, UNCLASSIFIABLE),
        (15, "InputError"),
    ]
    assert "object B: no points in the model's bands" in result.dead_letters[0].error_message
    records = [_decode_output(o.value) for o in result.outputs]
    assert [(r["objectId"], r["alertId"], r["sourceOffset"]) for r in records] == [
        ("A", "a1", 10),
        ("A", "a3", 14),
    ]
    assert [o.key for o in result.outputs] == [b"A", b"A"]
    for record in records:
        probabilities = [c["probability"] for c in record["classifications"]]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
        assert record["probability"] == max(probabilities)
        assert record["classifierName"] == "atat-ztf"
        assert record["batchSize"] == len(messages)
        assert record["alertTimestampMs"] == 1_700_000_000_000

    headers = dict(result.dead_letters[1].headers())
    assert headers["trace"] == b"t-1"  # the message's own headers are kept
    assert headers["astroclf.error.class"] == b"InputError"
    assert headers["astroclf.source.topic"] == b"alerts"
    assert headers["astroclf.source.partition"] == b"0"
    assert headers["astroclf.source.offset"] == b"12"
    assert b"alerts[0]@12" in headers["astroclf.error.message"]
    assert headers["astroclf.error.time"].endswith(b"+00:00")


def test_a_container_with_several_alerts_gives_one_classification_each(
    ztf_model, shared_data: Path
) -> None:
    from astro_classifier.stream.worker import BatchProcessor

    files = sorted((shared_data / "alerts" / "ztf" / "fink-v3.3").glob("*.avro"))[:3]
    records, schema = [], None
    for path in files:
        with path.open("rb") as f:
            reader = fastavro.reader(f)
            schema = schema or reader.writer_schema
            records += list(reader)
    container = io.BytesIO()
    fastavro.writer(container, schema, records)
    single = files[0].read_bytes()
    result = BatchProcessor(ztf_model, "ztf-avro", "json").process(
        [FakeMessage(container.getvalue(), 0), FakeMessage(single, 1)]
    )
    assert not result.dead_letters
    got = [
        (json.loads(o.value)["sourceOffset"], json.loads(o.value)["alertId"])
        for o in result.outputs
    ]
    assert got == [(0, str(r["candid"])) for r in records] + [(1, str(records[0]["candid"]))]


def test_when_classify_refuses_the_input_the_messages_are_classified_one_by_one(
    ztf_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    from astro_classifier.core.errors import InputError
    from astro_classifier.stream import batch

    real = batch.classify
    calls: list[int] = []  # objects per classify() call

    def refuses_huge(lcs, model):
        calls.append(len(lcs))
        if np.any(lcs.flux > 1e8):
            raise InputError("flux", "absurd flux")
        return real(lcs, model)

    monkeypatch.setattr(batch, "classify", refuses_huge)
    huge = json.loads(_json_alert("C", "g"))
    huge["points"][0]["flux"] = 1e9
    messages = [
        FakeMessage(_json_alert("A", "g"), 0),
        FakeMessage(json.dumps(huge).encode(), 1),
        FakeMessage(_json_alert("B", "r"), 2),
    ]
    result = batch.BatchProcessor(ztf_model, "json", "json").process(messages)
    assert calls == [3, 1, 1, 1]  # the batch, then each message alone
    assert [(d.message.offset(), d.error_class) for d in result.dead_letters] == [(1, "InputError")]
    assert [json.loads(o.value)["objectId"] for o in result.outputs] == ["A", "B"]


@pytest.mark.parametrize("error", [RuntimeError("bug"), FloatingPointError("onnx")])
def test_a_failure_that_is_not_the_inputs_fault_is_never_dead_lettered(
    ztf_model, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    from astro_classifier.stream import batch

    def broken(lcs, model):
        raise error

    monkeypatch.setattr(batch, "classify", broken)
    messages = [FakeMessage(_json_alert("A", "g"), 0), FakeMessage(b"junk", 1)]
    with pytest.raises(type(error)):
        batch.BatchProcessor(ztf_model, "json", "json").process(messages)


def test_a_transient_decode_failure_propagates(ztf_model, monkeypatch) -> None:
    from astro_classifier.core.errors import TransientError
    from astro_classifier.stream import batch

    def registry_down(items, input_format, schemas, cutout_size=None):
        raise TransientError("Schema Registry", "connection refused")

    monkeypatch.setattr(batch, "decode_micro_batch", registry_down)
    with pytest.raises(TransientError):
        batch.BatchProcessor(ztf_model, "json", "json").process([FakeMessage(b"x", 0)])


def test_an_output_that_cannot_be_encoded_dead_letters_its_message(
    ztf_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    from astro_classifier.stream import batch

    real = batch.encode_classification

    def refuses_b(record: dict, output_format: str) -> bytes:
        if record["objectId"] == "B":
            raise ValueError("not encodable")
        return real(record, output_format)

    monkeypatch.setattr(batch, "encode_classification", refuses_b)
    messages = [FakeMessage(_json_alert(o, "g"), k) for k, o in enumerate("ABC")]
    result = batch.BatchProcessor(ztf_model, "json", "avro").process(messages)
    assert [(d.message.offset(), d.error_class) for d in result.dead_letters] == [(1, "ValueError")]
    assert [o.key for o in result.outputs] == [b"A", b"C"]


def test_object_ids_keep_every_character(ztf_model) -> None:
    from astro_classifier.stream.batch import BatchProcessor

    odd = "Z\x00T\u00e9F/\t1"  # an embedded NUL, non-ASCII, a tab
    result = BatchProcessor(ztf_model, "json", "avro").process(
        [FakeMessage(_json_alert(odd, "g"), 0)]
    )
    assert not result.dead_letters
    assert [o.key for o in result.outputs] == [odd.encode()]
    assert _decode_output(result.outputs[0].value)["objectId"] == odd


def test_dropped_points_are_counted_by_reason(ztf_model, monkeypatch) -> None:
    from astro_classifier.stream import batch

    real = batch.decode_micro_batch

    def with_drops(items, input_format, schemas, cutout_size=None):
        decoded = real(items, input_format, schemas, cutout_size)
        decoded.batch.dropped = {"non-finite flux": 2 * len(items)}
        return decoded

    monkeypatch.setattr(batch, "decode_micro_batch", with_drops)
    messages = [FakeMessage(_json_alert(o, "g"), k) for k, o in enumerate("AB")]
    result = batch.BatchProcessor(ztf_model, "json", "avro").process(messages)
    assert result.dropped_points == {"non-finite flux": 4}


class BadHeaderMessage(FakeMessage):
    """confluent_kafka raises on a header key that is not UTF-8."""

    def headers(self) -> list | None:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")


def test_dead_letter_headers_survive_a_non_utf8_key_and_replace_astroclf_ones() -> None:
    from astro_classifier.stream.batch import H_HEADERS_DROPPED, DeadLetter

    dead = DeadLetter(BadHeaderMessage(b"v", 3), "InputError", "bad")
    headers = dead.headers()
    names = [k for k, _ in headers]
    assert (
        H_HEADERS_DROPPED in names
        and "UnicodeDecodeError" in dict(headers)[H_HEADERS_DROPPED].decode()
    )
    assert dict(headers)["astroclf.source.offset"] == b"3"

    spoofed = FakeMessage(
        b"v",
        4,
        headers=[("astroclf.error.class", b"Forged"), ("trace", b"\xff\xfe"), ("nil", None)],
    )
    headers = DeadLetter(spoofed, "InputError", "bad \udcff surrogate").headers()
    names = [k for k, _ in headers]
    assert names.count("astroclf.error.class") == 1
    assert dict(headers)["astroclf.error.class"] == b"InputError"
    assert dict(headers)["trace"] == b"\xff\xfe" and dict(headers)["nil"] is None


# -- delivery with a fake producer and consumer ---------------------------------------------
class FakeProducer:
    """Enough of confluent_kafka.Producer: ``fail(topic, value)`` picks a delivery error."""

    def __init__(self, max_bytes: int = 1_000_000, fail=lambda topic, value, attempt: None):
        from confluent_kafka import KafkaError, KafkaException

        self._KafkaError, self._KafkaException = KafkaError, KafkaException
        self.max_bytes = max_bytes
        self.fail = fail
        self.queue: list = []
        self.log: list[tuple[str, bytes | None, list | None]] = []  # produced, acknowledged
        self.txn: list[str] = []  # begin / commit / abort / offsets
        self.attempts: dict = {}

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None):
        size = len(value or b"") + len(key or b"")
        size += sum(len(k) + len(v or b"") for k, v in headers or [])
        if size > self.max_bytes:
            raise self._KafkaException(self._KafkaError(self._KafkaError.MSG_SIZE_TOO_LARGE))
        self.queue.append((topic, key, value, headers, on_delivery))

    def __len__(self) -> int:
        return len(self.queue)

    def poll(self, timeout=0):
        return 0

    def flush(self, timeout=None):
        queue, self.queue = self.queue, []
        for topic, _key, value, headers, on_delivery in queue:
            n = self.attempts[(topic, value)] = self.attempts.get((topic, value), 0) + 1
            error = self.fail(topic, value, n)
            if error is None:
                self.log.append((topic, value, headers))
            on_delivery(error, None)
        return 0

    def begin_transaction(self):
        self.txn.append("begin")

    def commit_transaction(self, timeout=None):
        self.txn.append("commit")

    def abort_transaction(self, timeout=None):
        self.txn.append("abort")

    def send_offsets_to_transaction(self, offsets, metadata, timeout=None):
        self.txn.append("offsets:" + ",".join(f"{o.partition}@{o.offset}" for o in offsets))


class FakeConsumer:
    def __init__(self) -> None:
        self.stored: list = []
        self.commits = 0

    def store_offsets(self, offsets):
        self.stored += [(o.topic, o.partition, o.offset) for o in offsets]

    def commit(self, asynchronous=True):
        self.commits += 1

    def consumer_group_metadata(self):
        return object()


def _result(outputs, dead=()):
    from astro_classifier.stream.batch import BatchResult

    return BatchResult(list(outputs), list(dead), 0.0, 0.0, 0.0)


def _output(message, value: bytes):
    from astro_classifier.stream.batch import Output, message_ref

    return Output(key=b"obj", value=value, source=message_ref(message), message=message)


def _delivery(kind, producer, consumer, **kw):
    from astro_classifier.stream import delivery

    cls = delivery.ExactlyOnceDelivery if kind == "exactly-once" else delivery.AtLeastOnceDelivery
    return cls(
        producer,
        consumer,
        output_topic="out",
        dead_letter_topic="dlq",
        max_message_bytes=producer.max_bytes,
        sleep=lambda s: None,
        **kw,
    )


def _kafka_error(name: str):
    from confluent_kafka import KafkaError

    return KafkaError(getattr(KafkaError, name))


@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_an_oversized_dead_letter_is_truncated_with_a_header(mode: str) -> None:
    from astro_classifier.stream.batch import DeadLetter

    producer, consumer = FakeProducer(max_bytes=2000), FakeConsumer()
    big = FakeMessage(b"x" * 5000, 7, key=b"k")
    good = FakeMessage(b"ok", 8)
    result = _result([_output(good, b"classification")], [DeadLetter(big, "InputError", "bad")])
    done = _delivery(mode, producer, consumer).deliver([big, good], result)
    assert done.outputs == 1 and len(done.dead_letters) == 1
    ((topic, value, headers),) = [e for e in producer.log if e[0] == "dlq"]
    assert 0 < len(value) < 2000 and b"x" * len(value) == value
    assert dict(headers)["astroclf.truncated"] == b"5000"
    if mode == "exactly-once":
        assert producer.txn == ["begin", "offsets:0@9", "commit"]
    else:
        assert consumer.stored == [("alerts", 0, 9)] and consumer.commits == 1


@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_an_output_the_broker_refuses_as_too_large_becomes_a_dead_letter(mode: str) -> None:
    """Broker-side refusal (its message.max.bytes is smaller): the output is replaced by a
    dead letter of its input; at-least-once produces again only that one."""
    producer = FakeProducer(
        fail=lambda topic, value, n: (
            _kafka_error("MSG_SIZE_TOO_LARGE") if value == b"huge output" else None
        )
    )
    consumer = FakeConsumer()
    a, b = FakeMessage(b"alert-a", 0), FakeMessage(b"alert-b", 1)
    result = _result([_output(a, b"fine"), _output(b, b"huge output")])
    done = _delivery(mode, producer, consumer).deliver([a, b], result)
    assert done.outputs == 1
    assert [d.error_class for d in done.dead_letters] == ["MessageTooLarge"]
    delivered = [(t, v) for t, v, _ in producer.log]
    if mode == "at-least-once":
        assert delivered == [("out", b"fine"), ("dlq", b"alert-b")]  # "fine" once: no duplicate
        assert consumer.commits == 1
    else:
        # The first transaction is aborted; the second holds the output and the dead letter.
        assert producer.txn == ["begin", "abort", "begin", "offsets:0@2", "commit"]
        assert delivered[-2:] == [("out", b"fine"), ("dlq", b"alert-b")]


@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_a_transient_failure_is_retried_and_never_dead_lettered(mode: str) -> None:
    producer = FakeProducer(
        fail=lambda topic, value, n: (
            _kafka_error("_MSG_TIMED_OUT") if value == b"slow" and n < 3 else None
        )
    )
    consumer = FakeConsumer()
    retries: list = []
    a, b = FakeMessage(b"a", 0), FakeMessage(b"b", 1)
    done = _delivery(mode, producer, consumer, on_retry=lambda w, n: retries.append(w)).deliver(
        [a, b], _result([_output(a, b"fast"), _output(b, b"slow")])
    )
    assert done.outputs == 2 and not done.dead_letters and len(retries) == 2
    delivered = [v for t, v, _ in producer.log]
    if mode == "at-least-once":
        assert delivered == [b"fast", b"slow"]  # the good output is not produced again
    else:
        assert producer.txn[-2:] == ["offsets:0@2", "commit"]
        assert producer.txn.count("abort") == 2


@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_a_permanent_failure_commits_nothing(mode: str) -> None:
    from astro_classifier.stream.delivery import Undeliverable

    producer = FakeProducer(fail=lambda *a: _kafka_error("TOPIC_AUTHORIZATION_FAILED"))
    consumer = FakeConsumer()
    a = FakeMessage(b"a", 0)
    with pytest.raises(Undeliverable):
        _delivery(mode, producer, consumer).deliver([a], _result([_output(a, b"x")]))
    assert consumer.commits == 0 and not consumer.stored
    assert "commit" not in producer.txn


def test_a_dead_letter_that_never_fits_stops_without_commit() -> None:
    from astro_classifier.stream.batch import DeadLetter
    from astro_classifier.stream.delivery import Undeliverable

    producer = FakeProducer(fail=lambda topic, *a: _kafka_error("MSG_SIZE_TOO_LARGE"))
    consumer = FakeConsumer()
    m = FakeMessage(b"y" * 100, 0)
    with pytest.raises(Undeliverable):
        _delivery("at-least-once", producer, consumer).deliver(
            [m], _result([], [DeadLetter(m, "InputError", "bad")])
        )
    assert consumer.commits == 0


@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_a_stuck_flush_ends_at_the_stop_deadline_without_commit(mode: str) -> None:
    from astro_classifier.stream.delivery import StopTimeout

    class Stuck(FakeProducer):
        def flush(self, timeout=None):
            return len(self.queue)  # never any report

    producer, consumer = Stuck(), FakeConsumer()
    a = FakeMessage(b"a", 0)
    delivery = _delivery(mode, producer, consumer, stop_deadline=lambda: 0.0)
    with pytest.raises(StopTimeout):
        delivery.deliver([a], _result([_output(a, b"x")]))
    assert consumer.commits == 0 and "commit" not in producer.txn


def test_log_lines_are_json_objects_with_ts_level_event() -> None:
    from astro_classifier.stream.worker import JsonLogFormatter

    formatter = JsonLogFormatter()
    ours = logging.LogRecord("astro_classifier.stream", logging.INFO, "", 0, "batch_done", (), None)
    ours.fields = {"messages": 3}
    doc = json.loads(formatter.format(ours))
    assert doc["event"] == "batch_done" and doc["messages"] == 3 and doc["level"] == "INFO"
    assert doc["ts"].endswith("+00:00")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        foreign = logging.LogRecord(
            "astro_classifier.alerts.ztf", logging.WARNING, "", 0, "%d points", (4,), sys.exc_info()
        )
    doc = json.loads(formatter.format(foreign))
    assert (doc["event"], doc["logger"], doc["message"]) == (
        "log",
        "astro_classifier.alerts.ztf",
        "4 points",
    )
    assert "RuntimeError: boom" in doc["exception"]


# -- environment and the Schema Registry ----------------------------------------------------
def test_an_unknown_astroclf_variable_is_refused_with_the_closest_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from astro_classifier.cli.app import app

    path = _write(tmp_path, MINIMAL)
    monkeypatch.setenv("ASTROCLF_BATCH_SIZ", "10")
    monkeypatch.setenv("ASTROCLF_SHARED_DATA", "/data")  # not a setting, allowed
    monkeypatch.setenv("ASTROCLF_KAFKA__LINGER_MS", "5")  # a map key: anything goes
    with pytest.raises(ValueError, match="did you mean ASTROCLF_BATCH_SIZE"):
        StreamSettings.load(path)
    result = CliRunner().invoke(app, ["stream", "--config", str(path)])
    assert result.exit_code == 1
    assert "did you mean ASTROCLF_BATCH_SIZE" in " ".join(result.output.split())
    monkeypatch.delenv("ASTROCLF_BATCH_SIZ")
    assert StreamSettings.load(path).max_message_bytes() == 1_000_000


class _Registry:
    """A loopback stand-in for a Schema Registry: ``mode`` is ok, 500 or 404."""

    def __init__(self, schema: dict) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        owner = self
        self.mode = "ok"

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path == "/subjects" and owner.mode != "500":
                    body, status = b'["r-value"]', 200  # a registry holding schemas
                elif owner.mode == "ok":
                    body, status = json.dumps({"schema": json.dumps(schema)}).encode(), 200
                else:
                    body, status = b'{"error_code": 1}', int(owner.mode)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_schema_registry_outages_are_transient_and_unknown_ids_are_bad_input() -> None:
    from astro_classifier.core.errors import InputError, TransientError
    from astro_classifier.stream.codecs import SchemaRegistry
    from tests.kafka_broker import free_port

    refused = SchemaRegistry(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    with pytest.raises(TransientError, match="Schema Registry"):
        refused.get(1, "t[0]@1")
    schema = {"type": "record", "name": "r", "fields": [{"name": "a", "type": "int"}]}
    stand_in = _Registry(schema)
    try:
        registry = SchemaRegistry(stand_in.url, timeout_s=2, unknown_ttl_s=0)  # no 404 cache
        stand_in.mode = "500"
        with pytest.raises(TransientError, match="HTTP 500"):
            registry.get(1, "t[0]@1")
        stand_in.mode = "404"
        with pytest.raises(InputError, match="unknown"):
            registry.get(1, "t[0]@1")
        stand_in.mode = "ok"
        assert registry.get(1, "t[0]@1")["name"] == "r"
    finally:
        stand_in.close()


def test_readiness_follows_assignment_broker_and_authentication_errors() -> None:
    from confluent_kafka import KafkaError, TopicPartition

    from astro_classifier.stream.worker import StreamWorker

    worker = StreamWorker(StreamSettings.load(None, **MINIMAL))
    worker._set_not_ready("starting", None)
    assert worker.ready
    worker._on_assign(None, [])
    worker._forget([TopicPartition("alerts", 0)])
    assert not worker.ready and "assignment" in worker._not_ready
    worker._on_assign(None, [TopicPartition("alerts", 0)])
    assert worker.ready and worker.metrics.ready._value.get() == 1
    for code, reason in [
        (KafkaError._ALL_BROKERS_DOWN, "broker"),
        (KafkaError._TRANSPORT, "broker"),
        (KafkaError._AUTHENTICATION, "authentication"),
    ]:
        worker._on_kafka_error(KafkaError(code, "down"))
        assert not worker.ready and reason in worker._not_ready
        assert worker.metrics.ready._value.get() == 0

        class Answers:
            def list_topics(self, *args, **kwargs):
                return None

        worker._consumer, worker._next_probe = Answers(), 0.0
        worker._probe_broker()  # a metadata answer: reachable and authenticated again
        assert worker.ready


def test_exactly_once_never_commits_a_local_produce_failure() -> None:
    """The producer refuses a message locally (its limit is lower than the worker
    believes): the transaction is aborted, the message replaced, then committed."""
    from astro_classifier.stream import delivery as d
    from astro_classifier.stream.batch import DeadLetter

    producer, consumer = FakeProducer(max_bytes=3000), FakeConsumer()
    a, b = FakeMessage(b"a" * 10, 0), FakeMessage(b"b" * 9000, 1)
    result = _result([_output(a, b"o" * 5000)], [DeadLetter(b, "InputError", "bad")])
    exactly_once = d.ExactlyOnceDelivery(
        producer,
        consumer,
        output_topic="out",
        dead_letter_topic="dlq",
        max_message_bytes=1_000_000,  # what the worker thinks
        sleep=lambda s: None,
    )
    done = exactly_once.deliver([a, b], result)
    assert producer.txn[:2] == ["begin", "abort"] and producer.txn[-1] == "commit"
    assert done.outputs == 0
    assert sorted(x.error_class for x in done.dead_letters) == ["InputError", "MessageTooLarge"]
    committed = [(t, len(v)) for t, v, _ in producer.log[-2:]]
    assert all(t == "dlq" and n < 3000 for t, n in committed)


def test_default_transactional_ids_take_one_slot_per_live_worker(tmp_path: Path) -> None:
    """Two workers of one group on one host get -0 and -1; a slot freed (the process ended)
    is taken again, so a restarted worker fences its crashed predecessor; an explicit id is
    used as given."""
    from astro_classifier.stream.config import claim_transactional_id

    settings = StreamSettings(
        group_id="g-slots", input_topics=["in"], output_topic="out", dead_letter_topic="dl"
    )
    first = claim_transactional_id(settings, tmp_path)
    second = claim_transactional_id(settings, tmp_path)
    assert first.transactional_id.endswith("-0") and second.transactional_id.endswith("-1")
    assert first.transactional_id.startswith(settings.effective_transactional_id())
    other_group = settings.model_copy(update={"group_id": "g-other"})
    assert claim_transactional_id(other_group, tmp_path).transactional_id.endswith("-0")
    first.release()
    again = claim_transactional_id(settings, tmp_path)
    assert again.transactional_id == first.transactional_id
    explicit = settings.model_copy(update={"transactional_id": "mine"})
    assert claim_transactional_id(explicit, tmp_path).transactional_id == "mine"
    for claim in (second, again):
        claim.release()
