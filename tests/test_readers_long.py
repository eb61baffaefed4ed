"""Long-format Parquet reader/writer: exact round trips of real batches, and bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from astro_classifier.catalogs.eros1 import read_eros1
from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import LightCurveBatch
from astro_classifier.formats.longformat import read_long, write_long
from astro_classifier.formats.ztf import read_ztf_avro


def _assert_same(a: LightCurveBatch, b: LightCurveBatch) -> None:
    for name in ("object_id", "offsets", "time", "band", "flux", "flux_err", "detected"):
        expected, got = getattr(a, name), getattr(b, name)
        assert got.dtype == expected.dtype, name
        np.testing.assert_array_equal(got, expected, err_msg=name)
    assert list(b.metadata) == list(a.metadata)
    for name, values in a.metadata.items():
        np.testing.assert_array_equal(b.metadata[name], values, err_msg=name)
    for name in ("label", "alert_id"):
        if getattr(a, name) is None:
            assert getattr(b, name) is None
        else:
            np.testing.assert_array_equal(getattr(b, name), getattr(a, name), err_msg=name)


@pytest.fixture(scope="module")
def ztf_batch(shared_data: Path) -> LightCurveBatch:
    folder = shared_data / "alerts" / "ztf"
    paths = sorted((folder / "ztf-avro-alert").glob("*.avro"))
    return read_ztf_avro(paths + sorted((folder / "fink-v3.3").glob("*.avro")))


@pytest.fixture(scope="module")
def eros1_subset(shared_data: Path) -> LightCurveBatch:
    folder = shared_data / "lightcurves" / "eros1"
    batch = read_eros1(folder / "train.csv", folder / "train_varlength_features.csv.gz")
    subset = batch.select(np.arange(0, len(batch), 20))
    subset.metadata["period"][3] = np.nan  # a missing value must survive too
    return subset


@pytest.mark.parametrize("object_table", ["objects.parquet", "objects.csv"])
def test_round_trip_ztf_alerts_is_exact(tmp_path, ztf_batch, object_table):
    points, objects = tmp_path / "points.parquet", tmp_path / object_table
    write_long(ztf_batch, points, objects)
    _assert_same(ztf_batch, read_long(points, objects))


@pytest.mark.parametrize("object_table", ["objects.parquet", "objects.csv"])
def test_round_trip_labelled_eros1_is_exact(tmp_path, eros1_subset, object_table):
    points, objects = tmp_path / "points.parquet", tmp_path / object_table
    write_long(eros1_subset, points, objects)
    _assert_same(eros1_subset, read_long(points, objects))


def test_round_trip_keeps_objects_without_points(tmp_path, eros1_subset):
    batch = eros1_subset.select_points(eros1_subset.point_object_index() != 2)
    assert batch.lengths[2] == 0
    write_long(batch, tmp_path / "points.parquet", tmp_path / "objects.parquet")
    _assert_same(batch, read_long(tmp_path / "points.parquet", tmp_path / "objects.parquet"))


def test_points_only_round_trip(tmp_path, ztf_batch):
    write_long(ztf_batch, tmp_path / "points.parquet")
    batch = read_long(tmp_path / "points.parquet")
    bare = LightCurveBatch(
        ztf_batch.object_id,
        ztf_batch.offsets,
        ztf_batch.time,
        ztf_batch.band,
        ztf_batch.flux,
        ztf_batch.flux_err,
        ztf_batch.detected,
    )
    _assert_same(bare, batch)


def test_detected_defaults_to_true(tmp_path):
    path = tmp_path / "points.parquet"
    pq.write_table(_points_table().drop_columns(["detected"]), path)
    assert read_long(path).detected.all()


def test_ids_stay_strings_in_csv_object_table(tmp_path):
    points = tmp_path / "points.parquet"
    pq.write_table(_points_table(object_id=["007", "007", "010"]), points)
    objects = tmp_path / "objects.csv"
    objects.write_text('object_id,z,label\n"007",0.1,"90"\n"010",0.2,"42"\n')
    batch = read_long(points, objects)
    assert batch.object_id.tolist() == ["007", "010"]
    assert batch.label.tolist() == ["90", "42"]


def test_duplicate_object_ids_cannot_be_written(tmp_path, ztf_batch):
    with pytest.raises(ValueError, match="not unique"):
        write_long(LightCurveBatch.concat([ztf_batch, ztf_batch]), tmp_path / "points.parquet")


def _points_table(**columns: list) -> pa.Table:
    base = {
        "object_id": ["a", "a", "b"],
        "mjd": [60000.0, 60001.0, 60000.5],
        "band": ["g", "r", "i"],
        "flux": [100.0, -20.0, 3.5],
        "flux_err": [5.0, 6.0, 7.0],
        "detected": [True, False, True],
    }
    return pa.table({**base, **columns})


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (_points_table().drop_columns(["flux_err"]), "missing column.*flux_err"),
        (_points_table(band=["g", "q", "r"]), "unknown band.*'q'"),
        (_points_table(flux=[1.0, float("nan"), float("nan")]), "2 point\\(s\\) have NaN"),
        (_points_table(flux_err=[1.0, 2.0, float("inf")]), "1 point\\(s\\) have NaN or infinite"),
        (_points_table(flux=[1.0, None, 2.0]), "1 point\\(s\\) have NaN"),
        (_points_table(object_id=["a", None, "b"]), "'object_id' has 1 null"),
        (_points_table(mjd=["x", "y", "z"]), "'mjd' \\(string\\) cannot be read as double"),
        (_points_table().slice(0, 0), "no rows"),
    ],
)
def test_bad_points_file_is_one_input_error_naming_it(tmp_path, table, message):
    path = tmp_path / "points.parquet"
    pq.write_table(table, path)
    with pytest.raises(InputError, match=message) as info:
        read_long(path)
    assert info.value.source == str(path)


def test_empty_file_is_an_input_error(tmp_path):
    path = tmp_path / "points.parquet"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="empty") as info:
        read_long(path)
    assert info.value.source == str(path)


@pytest.mark.parametrize(
    ("objects_text", "bad_file", "message"),
    [
        ("object_id,z\na,0.1\n", "points", "missing from the object table"),
        ("object_id,z\na,0.1\nb,0.2\na,0.3\n", "objects", "not unique"),
        ("object_id,host\na,NGC 1\nb,M 31\n", "objects", "'host' is string"),
        ("z,label\n0.1,SNIa\n", "objects", "missing column.*object_id"),
    ],
)
def test_bad_object_table_is_an_input_error(tmp_path, objects_text, bad_file, message):
    points, objects = tmp_path / "points.parquet", tmp_path / "objects.csv"
    pq.write_table(_points_table(), points)
    objects.write_text(objects_text)
    with pytest.raises(InputError, match=message) as info:
        read_long(points, objects)
    assert Path(info.value.source).stem == bad_file
