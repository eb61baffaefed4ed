"""Decoding for throughput (alerts/avro.py): writer schemas parsed once, only the fields a
reader uses decoded, and the same light curves as a plain full decode with fastavro."""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import numpy as np
import pytest

from astro_classifier.core.errors import InputError
from astro_classifier.formats import avro
from astro_classifier.formats.rubin import (
    SchemaDirectory,
    decode_rubin_avro_bytes,
    decode_rubin_wire,
    rubin_records_to_batch,
)
from astro_classifier.formats.ztf import decode_ztf_avro_bytes, ztf_records_to_batch

CODECS = ("null", "deflate", "bzip2", "xz", "snappy", "zstandard", "lz4")


def assert_same_batch(a, b, dropped: bool = True) -> None:
    assert a.object_id.tolist() == b.object_id.tolist()
    assert list(a.alert_id) == list(b.alert_id)
    for name in ("offsets", "time", "band", "flux", "flux_err", "detected"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.metadata.keys() == b.metadata.keys()
    for key in a.metadata:
        np.testing.assert_array_equal(a.metadata[key], b.metadata[key])
    if dropped:
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
    from astro_classifier.core.counts import merge_counts
    from astro_classifier.formats.registry import decode_message

    files = sorted((shared_data / "alerts" / "ztf").glob("**/*.avro"))[::7]
    values = [path.read_bytes() for path in files]
    values[3] = values[3][:100]  # bad ones in the middle: an InputError in their place
    values[10] = b""
    items = [(value, f"alerts[0]@{k}") for k, value in enumerate(values)]
    results = ztf_pool.decode(items).per_message()
    assert len(results) == len(values)
    one_by_one = []
    for k, (value, source) in enumerate(items):
        if k in (3, 10):
            assert isinstance(results[k], InputError) and results[k].source == source
            with pytest.raises(InputError) as expected:
                decode_message(value, "ztf-avro", None, source)
            assert str(expected.value) == str(results[k])
        else:
            one_by_one.append(decode_message(value, "ztf-avro", None, source))
            # dropped-point counts: per call of the pool's processes, compared in total below
            assert_same_batch(results[k], one_by_one[-1], dropped=False)
    good = [r for r in results if not isinstance(r, InputError)]
    assert merge_counts(r.dropped for r in good) == merge_counts(b.dropped for b in one_by_one)
    assert merge_counts(b.dropped for b in one_by_one)  # the files do drop points


@pytest.mark.parametrize("kind", ["ztf", "rubin"])
def test_messages_decoded_together_give_each_message_its_own_results(
    shared_data: Path, kind: str
) -> None:
    """decode_messages converts the records of all messages in one pass and splits them back:
    the same light curves as decode_message per message, errors in their messages' places
    (also when one message's points are refused by the conversion itself), the same
    dropped-point total."""
    from astro_classifier.core.counts import merge_counts
    from astro_classifier.formats.registry import decode_message, decode_messages

    if kind == "ztf":
        files, fmt = sorted((shared_data / "alerts" / "ztf").glob("**/*.avro"))[::5], "ztf-avro"
    else:
        files = sorted((shared_data / "alerts" / "lsst" / "fink-v7.4").glob("*.avro"))
        fmt = "rubin-avro"
    items = [(path.read_bytes(), f"alerts[0]@{k}") for k, path in enumerate(files)]
    items.insert(2, (b"", "alerts[0]@empty"))
    items.insert(5, (items[4][0][:200], "alerts[0]@truncated"))
    expected = []
    for value, source in items:
        try:
            expected.append(decode_message(value, fmt, None, source))
        except InputError as exc:
            expected.append(exc)
    results = decode_messages(items, fmt, None)
    assert len(results) == len(items)
    for got, want in zip(results, expected, strict=True):
        if isinstance(want, InputError):
            assert isinstance(got, InputError) and str(got) == str(want)
        else:
            assert_same_batch(got, want, dropped=False)
    good = [r for r in expected if not isinstance(r, InputError)]
    assert merge_counts(
        r.dropped for r in results if not isinstance(r, InputError)
    ) == merge_counts(r.dropped for r in good)
    assert sum(isinstance(r, InputError) for r in results) == 2


def test_the_pool_gives_the_in_process_micro_batch(shared_data: Path, ztf_pool) -> None:
    """One batch for the whole micro-batch, with each object's message index, the same
    whether a pool decoded it (in runs of messages) or this process did."""
    from astro_classifier.formats.registry import decode_micro_batch

    files = sorted((shared_data / "alerts" / "ztf").glob("**/*.avro"))[::9]
    items = [(path.read_bytes(), f"alerts[0]@{k}") for k, path in enumerate(files)]
    items[4] = (b"junk", "alerts[0]@4")
    here = decode_micro_batch(items, "ztf-avro", None)
    pooled = ztf_pool.decode(items)
    assert pooled.count == here.count == len(items)
    assert sorted(pooled.errors) == sorted(here.errors) == [4]
    np.testing.assert_array_equal(pooled.message, here.message)
    assert_same_batch(pooled.batch, here.batch)
    lengths = [len(r) for r in here.per_message() if not isinstance(r, InputError)]
    assert np.bincount(here.message).tolist() == [*lengths[:4], 0, *lengths[4:]]


def test_a_message_whose_points_the_conversion_refuses_is_named(shared_data: Path) -> None:
    """When the one-pass conversion refuses the records (a point without a valid band),
    the messages are converted one by one: only the faulty one becomes an InputError."""
    from astro_classifier.formats.registry import decode_messages

    files = sorted((shared_data / "alerts" / "ztf").glob("**/*.avro"))[:4]
    records = full_records(files[1].read_bytes())
    records[0]["candidate"]["fid"] = 7  # not 1, 2 or 3
    sink = io.BytesIO()
    fastavro.writer(
        sink,
        fastavro.parse_schema(fastavro.reader(io.BytesIO(files[1].read_bytes())).writer_schema),
        records,
    )
    items = [(path.read_bytes(), f"alerts[0]@{k}") for k, path in enumerate(files)]
    items[1] = (sink.getvalue(), "alerts[0]@1")
    results = decode_messages(items, "ztf-avro", None)
    assert [isinstance(r, InputError) for r in results] == [False, True, False, False]
    assert results[1].source == "alerts[0]@1" and "fid=7" in str(results[1])


@pytest.mark.parametrize("fmt", ["ztf-avro", "rubin-avro", "rubin-wire"])
def test_stamps_come_from_the_same_decode_as_the_light_curves(
    shared_data: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """With stamps (models with an image tower) each message is decoded once: the light
    curves are those decoded without stamps, the stamps those of a decode of their own."""
    from astro_classifier.core.cutouts import CutoutBatch, align_cutouts
    from astro_classifier.formats import registry, rubin, ztf

    alerts, schemas = shared_data / "alerts", None
    if fmt == "ztf-avro":
        files = sorted((alerts / "ztf").glob("**/*.avro"))[::40]
        module, name = ztf, "decode_avro_container"
    elif fmt == "rubin-avro":
        files = sorted((alerts / "lsst" / "fink-v7.4").glob("*.avro"))[::10]
        module, name = rubin, "decode_avro_container"
    else:
        files = sorted((alerts / "lsst" / "wire-v7.4").glob("*.avro"))
        schemas = SchemaDirectory(alerts / "lsst" / "schema")
        module, name = rubin.fastavro, "schemaless_reader"
    items = [(path.read_bytes(), f"alerts[0]@{k}") for k, path in enumerate(files)]
    plain = registry.decode_micro_batch(items, fmt, schemas)
    expected = CutoutBatch.concat(
        [
            align_cutouts(batch, registry.decode_cutouts(value, fmt, source, schemas, 63))
            for (value, source), batch in zip(items, plain.per_message(), strict=True)
        ]
    )
    calls = []
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    got = registry.decode_micro_batch(items, fmt, schemas, cutout_size=63)
    assert len(calls) == len(items)  # one decode per message
    assert_same_batch(got.batch, plain.batch)
    stamps = got.batch.cutouts
    assert stamps.ok.all()
    for field in ("images", "valid", "ok", "failure", "object_id", "alert_id"):
        np.testing.assert_array_equal(getattr(stamps, field), getattr(expected, field))
    for key in expected.fields:
        np.testing.assert_array_equal(stamps.fields[key], expected.fields[key])
    assert avro.project_schema(  # the merged projection still skips what neither reads
        fastavro.parse_schema(
            fastavro.reader(io.BytesIO(items[0][0])).writer_schema
            if fmt != "rubin-wire"
            else schemas.get(int.from_bytes(items[0][0][1:5], "big"), "s")
        ),
        (ztf if fmt == "ztf-avro" else rubin).AVRO_STAMP_FIELDS,
    )


def test_a_transient_failure_in_the_pool_is_raised_in_the_worker(shared_data: Path) -> None:
    from astro_classifier.core.errors import TransientError
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
