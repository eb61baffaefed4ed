"""Decoding for throughput (alerts/avro.py): writer schemas parsed once, only the fields a
reader uses decoded, and the same light curves as a plain full decode with fastavro."""

from __future__ import annotations

import io
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
