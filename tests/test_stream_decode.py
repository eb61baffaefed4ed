"""Decoding for throughput (alerts/avro.py): writer schemas parsed once, only the fields a
reader uses decoded, and the same light curves as a plain full decode with fastavro."""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import numpy as np
import pytest

from astro_classifier.alerts import avro
from astro_classifier.alerts.rubin import (
    SchemaDirectory,
    decode_rubin_avro_bytes,
    decode_rubin_wire,
    rubin_records_to_batch,
)
from astro_classifier.alerts.ztf import decode_ztf_avro_bytes, ztf_records_to_batch
from astro_classifier.errors import InputError

CODECS = ("null", "deflate", "bzip2", "xz", "snappy", "zstandard", "lz4")


def assert_same_batch(a, b) -> None:
    assert a.object_id.tolist() == b.object_id.tolist()
    assert list(a.alert_id) == list(b.alert_id)
    for name in ("offsets", "time", "band", "flux", "flux_err", "detected"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.metadata.keys() == b.metadata.keys()
    for key in a.metadata:
        np.testing.assert_array_equal(a.metadata[key], b.metadata[key])
    assert a.dropped == b.dropped


def full_records(data: bytes) -> list[dict]:
    return list(fastavro.reader(io.BytesIO(data)))


def test_every_real_ztf_alert_decodes_to_the_same_light_curves(shared_data: Path) -> None:
    files = sorted((shared_data / "alerts" / "ztf").glob("**/*.avro"))
    assert len(files) > 600
    avro.clear_schema_cache()
    for path in files:
        data = path.read_bytes()
        projected = decode_ztf_avro_bytes(data, str(path))
        assert not {"cutoutScience", "cutoutTemplate", "cutoutDifference"} & set(projected[0])
        assert_same_batch(
            ztf_records_to_batch(projected, str(path)),
            ztf_records_to_batch(full_records(data), str(path)),
        )
    info = avro.schema_cache_info()
    assert info["misses"] == info["size"] <= 8  # one parse per distinct writer schema
    assert info["hits"] == len(files) - info["misses"]
    assert all(entry.reader_schema is not None for entry in avro._CACHE.values())


def test_every_real_rubin_container_decodes_to_the_same_light_curves(shared_data: Path) -> None:
    for path in sorted((shared_data / "alerts" / "lsst" / "fink-v7.4").glob("*.avro")):
        data = path.read_bytes()
        assert_same_batch(
            rubin_records_to_batch(decode_rubin_avro_bytes(data, str(path)), str(path)),
            rubin_records_to_batch(full_records(data), str(path)),
        )


def test_rubin_wire_messages_decode_to_the_same_light_curves(shared_data: Path) -> None:
    schema_dir = shared_data / "alerts" / "lsst" / "schema"
    schemas = SchemaDirectory(schema_dir)
    for path in sorted((shared_data / "alerts" / "lsst" / "wire-v7.4").glob("*.avro")):
        data = path.read_bytes()
        schema = schemas.get(int.from_bytes(data[1:5], "big"), str(path))
        full = fastavro.schemaless_reader(io.BytesIO(data[5:]), schema)
        record = decode_rubin_wire(data, schemas, str(path))
        assert set(record) < set(full)  # projected
        assert_same_batch(
            rubin_records_to_batch([record], str(path)), rubin_records_to_batch([full], str(path))
        )


@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_decodes_like_fastavro(shared_data: Path, codec: str) -> None:
    sources = sorted((shared_data / "alerts" / "ztf" / "fink-v3.3").glob("*.avro"))[:3]
    records, schema = [], None
    for path in sources:
        with path.open("rb") as stream:
            reader = fastavro.reader(stream)
            schema = schema or reader.writer_schema
            records += list(reader)
    buffer = io.BytesIO()
    fastavro.writer(buffer, schema, records, codec=codec, sync_interval=60_000)  # several blocks
    data = buffer.getvalue()
    assert_same_batch(
        ztf_records_to_batch(decode_ztf_avro_bytes(data, "m"), "m"),
        ztf_records_to_batch(full_records(data), "m"),
    )


def test_projection_is_skipped_when_a_named_type_would_be_cut_two_ways() -> None:
    point = {"type": "record", "name": "point", "fields": [
        {"name": "a", "type": "long"}, {"name": "b", "type": "long"}]}  # fmt: skip
    schema = fastavro.parse_schema(
        {
            "type": "record",
            "name": "alert",
            "fields": [
                {"name": "first", "type": point},
                {"name": "second", "type": "point"},
            ],
        }
    )
    assert avro.project_schema(schema, (("first", ("a",)), ("second", ("a",)))) is not None
    assert avro.project_schema(schema, (("first", ("a",)), ("second", ("b",)))) is None
    assert avro.project_schema(schema, (("first", ("zzz",)),)) is None  # nothing left


def test_corrupt_containers_are_input_errors(shared_data: Path) -> None:
    data = sorted((shared_data / "alerts" / "ztf" / "fink-v4.02").glob("*.avro"))[0].read_bytes()
    for bad in (
        data[: len(data) // 2],
        data[:40],
        data[:-16] + bytes(b ^ 0xFF for b in data[-16:]),
        data + b"\x02",
    ):
        with pytest.raises(InputError, match="expected ZTF alerts"):
            decode_ztf_avro_bytes(bad, "topic[0]@1")


# -- the decode pool ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ztf_pool():
    from astro_classifier.stream.decoding import DecodePool

    pool = DecodePool(2, "ztf-avro").start()
    yield pool
    pool.close()


def test_the_pool_gives_the_in_process_results_in_message_order(
    shared_data: Path, ztf_pool
) -> None:
    from astro_classifier.data.readers import decode_message

    files = sorted((shared_data / "alerts" / "ztf").glob("**/*.avro"))[::7]
    values = [path.read_bytes() for path in files]
    values[3] = values[3][:100]  # bad ones in the middle: an InputError in their place
    values[10] = b""
    items = [(value, f"alerts[0]@{k}") for k, value in enumerate(values)]
    results = ztf_pool.decode(items)
    assert len(results) == len(values)
    for k, (value, source) in enumerate(items):
        if k in (3, 10):
            assert isinstance(results[k], InputError) and results[k].source == source
            with pytest.raises(InputError) as expected:
                decode_message(value, "ztf-avro", None, source)
            assert str(expected.value) == str(results[k])
        else:
            assert_same_batch(results[k], decode_message(value, "ztf-avro", None, source))


def test_a_transient_failure_in_the_pool_is_raised_in_the_worker(shared_data: Path) -> None:
    from astro_classifier.errors import TransientError
    from astro_classifier.stream.codecs import SchemaRegistry
    from astro_classifier.stream.decoding import DecodePool
    from tests.kafka_broker import free_port

    wire = sorted((shared_data / "alerts" / "lsst" / "wire-v7.4").glob("*.avro"))[0]
    registry = SchemaRegistry(f"http://127.0.0.1:{free_port()}", timeout_s=2)  # nobody there
    pool = DecodePool(1, "rubin-wire", registry)
    try:
        with pytest.raises(TransientError, match="Schema Registry"):
            pool.decode([(wire.read_bytes(), "alerts[0]@0")])
    finally:
        pool.close()


def test_batch_processor_with_a_pool_gives_the_same_outputs(shared_data: Path, ztf_pool) -> None:
    from astro_classifier.inference.model import LoadedModel
    from astro_classifier.stream.batch import BatchProcessor
    from tests.test_stream_units import FakeMessage

    files = sorted((shared_data / "alerts" / "ztf" / "fink-v3.3").glob("*.avro"))[:20]
    messages = [FakeMessage(path.read_bytes(), k) for k, path in enumerate(files)]
    messages.insert(5, FakeMessage(b"junk", 99))
    model = LoadedModel.load("atat-ztf", "cpu")
    plain = BatchProcessor(model, "ztf-avro", "json").process(messages)
    pooled = BatchProcessor(model, "ztf-avro", "json", decode_workers=2)
    pooled._pool = ztf_pool  # share the started module pool
    result = pooled.process(messages)

    def strip(value: bytes) -> dict:  # without the timings
        return {k: v for k, v in json.loads(value).items() if not k.endswith("Ms")}

    assert [strip(o.value) for o in result.outputs] == [strip(o.value) for o in plain.outputs]
    assert [(d.message.offset(), d.error_class) for d in result.dead_letters] == [
        (99, "InputError")
    ]
