"""The Arrow-batch core (inference/arrow_batches.py), with no engine: real alert rows in,
the output contract of classify() out, one row per input row, bad rows reported in place."""

from __future__ import annotations

import json

import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from astro_classifier.core.errors import InputError
from astro_classifier.formats.registry import read_light_curves
from astro_classifier.inference import arrow_batches
from astro_classifier.inference.arrow_batches import (
    BatchCounts,
    cached_model,
    classify_batches,
    detect_row_format,
    project_schema,
    result_schema,
    split_errors,
)
from astro_classifier.inference.classify import classify


@pytest.fixture(scope="module")
def ztf_table(shared_data) -> pa.Table:
    """60 real ZTF alerts (fink-v4.02) as Parquet rows, cutouts kept."""
    records = []
    for path in sorted((shared_data / "alerts/ztf/fink-v4.02").glob("*.avro"))[:60]:
        with path.open("rb") as stream:
            records += list(fastavro.reader(stream))
    return pa.Table.from_pylist(records)


@pytest.fixture(scope="module")
def rubin_path(shared_data):
    return shared_data / "alerts/lsst/fink-v10.0.parquet"


def _run(table: pa.Table, model: str, rows: int = 16, **options) -> pa.Table:
    batches = table.to_batches(max_chunksize=rows)
    return pa.Table.from_batches(
        list(classify_batches(batches, model, **options)),
        schema=result_schema(cached_model(model).metadata.labels),
    )


def _assert_equal(got: pa.Table, expected: pa.Table) -> None:
    assert got.schema == expected.schema
    assert got.column("alert_id").to_pylist() == expected.column("alert_id").to_pylist()
    assert got.column("class").to_pylist() == expected.column("class").to_pylist()
    for name in expected.column_names:
        if pa.types.is_floating(expected.schema.field(name).type):
            np.testing.assert_allclose(
                got.column(name).to_numpy(zero_copy_only=False),
                expected.column(name).to_numpy(zero_copy_only=False),
                rtol=1e-5,
                atol=1e-6,
            )


def test_formats_are_recognised_from_the_schema_by_the_registry(ztf_table, rubin_path):
    assert detect_row_format(ztf_table.schema) == "ztf-parquet"
    assert detect_row_format(pq.read_schema(rubin_path)) == "rubin-parquet"
    with pytest.raises(InputError, match=r"my batches: .*not alert rows"):
        detect_row_format(
            pa.schema([("object_id", pa.string()), ("x", pa.float64())]), "my batches"
        )


def test_projection_keeps_only_the_fields_the_reader_uses(ztf_table):
    projected = project_schema(ztf_table.schema, "ztf-parquet")
    assert projected.names == ["candid", "objectId", "candidate", "prv_candidates"]
    candidate = projected.field("candidate").type
    assert {"jd", "fid", "magpsf", "ra", "ssdistnr"} <= {f.name for f in candidate}
    assert "rb" not in {f.name for f in candidate} and len(candidate) < 20
    assert pa.types.is_list(projected.field("prv_candidates").type)


def test_ztf_rows_give_the_rows_of_classify(ztf_table, tmp_path):
    path = tmp_path / "ztf.parquet"
    pq.write_table(ztf_table, path)
    counts = BatchCounts()
    result = _run(ztf_table, "atat-ztf", counts=counts)
    classified, errors = split_errors(result)
    assert errors.num_rows == 0 and (counts.rows, counts.classified, counts.batches) == (60, 60, 4)
    expected = classify(read_light_curves([path]), cached_model("atat-ztf"), n_jobs=1)
    _assert_equal(classified, expected.to_arrow())


def test_rubin_rows_give_the_rows_of_classify(rubin_path):
    classified, _ = split_errors(_run(pq.read_table(rubin_path), "atat-lsst", rows=7))
    expected = classify(read_light_curves([rubin_path]), cached_model("atat-lsst"), n_jobs=1)
    _assert_equal(classified, expected.to_arrow())


def _broken(table: pa.Table) -> pa.Table:
    """Row 5: a candidate with fid 7 (refused by the reader); row 9: no point at all
    (classify() skips it)."""
    rows = table.to_pylist()
    rows[5]["candidate"]["fid"] = 7
    rows[9]["candidate"].update(magpsf=None, diffmaglim=None)
    rows[9]["prv_candidates"] = []
    return pa.Table.from_pylist(rows, schema=table.schema)


def test_bad_rows_keep_their_place_and_say_why(ztf_table):
    table = _broken(ztf_table.slice(0, 20))
    counts = BatchCounts()
    result = _run(table, "atat-ztf", rows=8, counts=counts)
    assert result.num_rows == 20  # one row per input row, in input order
    assert result.column("alert_id").to_pylist() == [
        str(c) for c in table.column("candid").to_pylist()
    ]
    error = result.column("error").to_pylist()
    assert [i for i, e in enumerate(error) if e] == [5, 9]
    assert error[5]["stage"] == "decode" and "batch 0 row 5" in error[5]["reason"]
    assert "fid=7" in error[5]["reason"]
    assert json.loads(error[5]["row"])["candidate"]["fid"] == 7
    assert "cutout" not in error[5]["row"]
    assert error[9]["stage"] == "skipped" and "no usable point" in error[9]["reason"]
    assert result.column("class")[5].as_py() is None
    assert counts.errors == {"decode": 1, "skipped": 1} and counts.classified == 18


def test_strict_raises_on_the_first_bad_row(ztf_table):
    with pytest.raises(InputError, match=r"batch 0 row 5.*fid=7"):
        _run(_broken(ztf_table.slice(0, 20)), "atat-ztf", rows=8, strict=True)


def test_a_classification_failure_is_pinned_on_its_row(ztf_table, monkeypatch):
    real = arrow_batches.classify
    poisoned = ztf_table.column("objectId")[3].as_py()

    def fragile(batch, *args, **kwargs):
        if poisoned in batch.object_id.tolist():
            raise RuntimeError("ONNX Runtime: boom")
        return real(batch, *args, **kwargs)

    monkeypatch.setattr(arrow_batches, "classify", fragile)
    result = _run(ztf_table.slice(0, 10), "atat-ztf", rows=10)
    error = result.column("error").to_pylist()
    failed = [i for i, e in enumerate(error) if e]
    assert 3 in failed and all(error[i]["stage"] == "classify" for i in failed)
    assert "boom" in error[3]["reason"] and len(failed) < 10


def test_a_model_failing_on_every_row_stops(ztf_table, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("ONNX Runtime: bad model")

    monkeypatch.setattr(arrow_batches, "classify", broken)
    with pytest.raises(RuntimeError, match="bad model"):
        _run(ztf_table.slice(0, 4), "atat-ztf")


def test_empty_input_yields_nothing(ztf_table):
    assert list(classify_batches([], "atat-ztf")) == []
    assert list(classify_batches(ztf_table.slice(0, 0).to_batches(), "atat-ztf")) == []


def test_the_model_is_loaded_once_per_process():
    assert cached_model("atat-ztf") is cached_model("atat-ztf")
    assert cached_model("atat-ztf", threads=2) is not cached_model("atat-ztf")
