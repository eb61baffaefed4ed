"""Real alert packets in the shapes brokers store and send them: read all, lose none.

Each variant is built in ``tmp_path`` from real alerts of the shared data: ZTF alerts
re-written with every Avro codec and without the top-level ``candid`` (as Spark-written
broker re-publications are), ZTF alerts as Parquet rows with broker columns (Fink's and
ALeRCE's data lakes), alerts with absurd photometry, and packets of surveys astroclf does not
read (ATLAS, DECam), which must be refused by name, never classified as empty successes.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from astro_classifier.cli.app import app
from astro_classifier.core.errors import InputError
from astro_classifier.core.quality import (
    DROP_ERR_NOT_POSITIVE,
    DROP_FLUX_NON_FINITE,
    DROP_TIME_BEFORE_1990,
    DROP_TIME_FUTURE,
)
from astro_classifier.formats.registry import decode_message, detect_format, read_light_curves
from astro_classifier.formats.ztf import ztf_records_to_batch

runner = CliRunner(env={"COLUMNS": "240"})
CODECS = ("null", "deflate", "bzip2", "xz", "snappy", "zstandard", "lz4")
CUTOUTS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")


def _fink_files(shared_data: Path, n: int) -> list[Path]:
    return sorted((shared_data / "alerts/ztf/fink-v4.02").glob("*.avro"))[:n]


def _container(path: Path) -> tuple[dict, list[dict]]:
    with path.open("rb") as stream:
        reader = fastavro.reader(stream)
        return reader.writer_schema, list(reader)


def _without_top_level_candid(schema: dict, records: list[dict]) -> tuple[dict, list[dict]]:
    schema = copy.deepcopy(schema)
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "candid"]
    return schema, [{k: v for k, v in r.items() if k != "candid"} for r in records]


def _write_container(path: Path, schema: dict, records: list[dict], codec: str) -> Path:
    with path.open("wb") as stream:
        fastavro.writer(stream, schema, records, codec=codec)
    return path


def _republished(shared_data: Path, tmp_path: Path, n: int, codec: str = "snappy") -> list[Path]:
    """``n`` real Fink-published ZTF alerts, re-written without top-level candid, ``codec``."""
    out = []
    for source in _fink_files(shared_data, n):
        schema, records = _without_top_level_candid(*_container(source))
        out.append(_write_container(tmp_path / f"{source.stem}.avro", schema, records, codec))
    return out


def _stderr(result) -> str:
    try:
        return result.stderr
    except ValueError:
        return result.output


# -- Spark/broker re-publications ---------------------------------------------------------
@pytest.mark.parametrize("codec", CODECS)
def test_every_avro_codec_is_read(shared_data, tmp_path, codec):
    (path,) = _republished(shared_data, tmp_path, 1, codec)
    schema, (record,) = _container(_fink_files(shared_data, 1)[0])
    assert detect_format(path) == "ztf-avro"
    batch = read_light_curves([path])
    assert batch.object_id.tolist() == [record["objectId"]]
    assert batch.alert_id.tolist() == [str(record["candidate"]["candid"])]


def test_alerts_without_top_level_candid_take_the_candidate_candid(shared_data, tmp_path):
    paths = _republished(shared_data, tmp_path, 20)
    originals = read_light_curves(_fink_files(shared_data, 20))
    batch = read_light_curves(paths)
    assert len(batch) == 20
    assert batch.alert_id.tolist() == originals.alert_id.tolist()  # top-level == candidate's
    np.testing.assert_array_equal(batch.offsets, originals.offsets)
    np.testing.assert_allclose(batch.flux, originals.flux)


def test_classify_a_folder_of_republished_alerts_one_row_per_alert(shared_data, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    paths = _republished(shared_data, inputs, 30)
    out = tmp_path / "out.parquet"
    result = runner.invoke(app, ["classify", *map(str, paths), "-m", "atat-ztf", "-o", str(out)])
    assert result.exit_code == 0, _stderr(result)
    table = pq.read_table(out)
    expected = [str(_container(p)[1][0]["candidate"]["candid"]) for p in paths]
    assert sorted(table.column("alert_id").to_pylist()) == sorted(expected)


# -- Parquet rows (data lakes) ------------------------------------------------------------
def _ztf_parquet(shared_data: Path, path: Path, n: int = 25) -> tuple[Path, list[Path]]:
    """``n`` real alerts as Parquet rows with two broker columns and no cutouts."""
    sources = _fink_files(shared_data, n)
    records = []
    for source in sources:
        _, (record,) = _container(source)
        row = {k: v for k, v in record.items() if k not in CUTOUTS}
        row["cdsxmatch"] = "Unknown"  # broker columns: kept in the file, not read
        row["rf_snia_vs_nonia"] = 0.1
        records.append(row)
    pq.write_table(pa.Table.from_pylist(records), path)
    return path, sources


def test_ztf_parquet_rows_read_like_the_same_alerts_in_avro(shared_data, tmp_path):
    path, sources = _ztf_parquet(shared_data, tmp_path / "lake.parquet")
    assert detect_format(path) == "ztf-parquet"
    rows = read_light_curves([path])
    avro = read_light_curves(sources)
    assert rows.object_id.tolist() == avro.object_id.tolist()
    assert rows.alert_id.tolist() == avro.alert_id.tolist()
    np.testing.assert_array_equal(rows.offsets, avro.offsets)
    np.testing.assert_allclose(rows.time, avro.time)
    np.testing.assert_allclose(rows.flux, avro.flux)


def test_ztf_parquet_with_forced_photometry_matches_avro(shared_data, tmp_path):
    # one file per alert: the test alerts span schemas 3.1-3.5, a data lake holds one schema
    sources = sorted((shared_data / "alerts/ztf/ztf-avro-alert").glob("*.avro"))
    paths = []
    for k, source in enumerate(sources):
        record = {n: v for n, v in _container(source)[1][0].items() if n not in CUTOUTS}
        paths.append(tmp_path / f"alert{k}.parquet")
        pq.write_table(pa.Table.from_pylist([record]), paths[-1])
    rows, avro = read_light_curves(paths), read_light_curves(sources)
    assert avro.lengths.max() > 20  # the forced-photometry alerts are in
    np.testing.assert_array_equal(rows.offsets, avro.offsets)
    np.testing.assert_allclose(rows.flux, avro.flux)


def test_ztf_parquet_message_decodes_one_alert_per_row(shared_data, tmp_path):
    path, sources = _ztf_parquet(shared_data, tmp_path / "lake.parquet", n=3)
    batch = decode_message(path.read_bytes(), "ztf-parquet", None, "topic[0]@7")
    assert len(batch) == 3
    with pytest.raises(InputError, match=r"topic\[0\]@8.*ZTF alerts"):
        decode_message(b"PAR1 not really", "ztf-parquet", None, "topic[0]@8")


def test_classify_ztf_parquet(shared_data, tmp_path):
    path, _ = _ztf_parquet(shared_data, tmp_path / "lake.parquet")
    out = tmp_path / "out.parquet"
    result = runner.invoke(app, ["classify", str(path), "-m", "atat-ztf", "-o", str(out)])
    assert result.exit_code == 0, _stderr(result)
    assert pq.read_table(out).num_rows == 25


# -- surveys astroclf does not read -------------------------------------------------------
ATLAS_SCHEMA = {
    "namespace": "atlas",
    "type": "record",
    "name": "alert",
    "fields": [
        {"name": "schemavsn", "type": "string"},
        {"name": "objectId", "type": "string"},
        {"name": "candid", "type": "long"},
        {
            "name": "candidate",
            "type": {
                "type": "record",
                "name": "candidate",
                "namespace": "atlas",
                "fields": [
                    {"name": "mjd", "type": "double"},
                    {"name": "RA", "type": "double"},
                    {"name": "Dec", "type": "double"},
                    {"name": "mag", "type": "double"},
                    {"name": "dmag", "type": "double"},
                    {"name": "filter", "type": "string"},
                ],
            },
        },
    ],
}
DECAT_SCHEMA = {
    "namespace": "decat",
    "type": "record",
    "name": "object",
    "fields": [
        {"name": "objectid", "type": "long"},
        {"name": "ra", "type": "double"},
        {"name": "dec", "type": "double"},
        {"name": "sources", "type": {"type": "array", "items": "double"}},
    ],
}


def _foreign_alerts(tmp_path: Path) -> dict[str, Path]:
    atlas = {
        "schemavsn": "0.1",
        "objectId": "1063729101173010900",
        "candid": 1,
        "candidate": {
            "mjd": 60200.5,
            "RA": 190.1,
            "Dec": 11.4,
            "mag": 17.2,
            "dmag": 0.05,
            "filter": "o",
        },
    }
    decat = {"objectid": 7, "ra": 150.0, "dec": 2.2, "sources": [21.0, 21.3]}
    return {
        "atlas.alert": _write_container(tmp_path / "atlas.avro", ATLAS_SCHEMA, [atlas], "null"),
        "decat.object": _write_container(tmp_path / "decat.avro", DECAT_SCHEMA, [decat], "null"),
    }


@pytest.mark.parametrize(
    ("schema_name", "survey"), [("atlas.alert", "ATLAS"), ("decat.object", "DECam")]
)
def test_foreign_survey_is_refused_by_name(tmp_path, schema_name, survey):
    path = _foreign_alerts(tmp_path)[schema_name]
    with pytest.raises(InputError) as info:
        detect_format(path)
    assert info.value.source == str(path)
    assert schema_name in info.value.reason and survey in info.value.reason
    assert "ztf-avro" in info.value.reason  # what is supported


def test_foreign_survey_in_classify_exits_non_zero_without_output(tmp_path):
    path = _foreign_alerts(tmp_path)["atlas.alert"]
    out = tmp_path / "out.parquet"
    result = runner.invoke(app, ["classify", str(path), "-o", str(out)])
    assert result.exit_code == 1
    assert "atlas.alert" in "".join(_stderr(result).splitlines())
    assert not out.exists()


def test_atlas_packet_given_as_ztf_is_refused(tmp_path):
    path = _foreign_alerts(tmp_path)["atlas.alert"]
    with pytest.raises(InputError, match="no fid"):
        read_light_curves([path], format="ztf-avro")


# -- absurd photometry: dropped, counted, silent ------------------------------------------
def _fink_v33_alert(shared_data: Path) -> tuple[dict, list[dict]]:
    """(writer schema, records) of the first real Fink schema-3.3 ZTF alert."""
    return _container(sorted((shared_data / "alerts/ztf/fink-v3.3").glob("*.avro"))[0])


def _absurd_alert(shared_data: Path) -> dict:
    _, (record,) = _fink_v33_alert(shared_data)
    record = copy.deepcopy(record)
    candidate = record["candidate"]
    extra = [copy.deepcopy(record["prv_candidates"][0]) for _ in range(5)]
    for k, point in enumerate(extra):  # five previous detections at distinct epochs
        point.update(magpsf=18.0, sigmapsf=0.1, isdiffpos="t", fid=candidate["fid"])
        point.update(jd=candidate["jd"] - 100 - k, pid=-1)  # no valid pid: the jd is used as is
    extra[0]["magpsf"] = float("nan")
    extra[1]["magpsf"] = 1e308  # flux 0 with error 0
    extra[2]["sigmapsf"] = -0.1
    extra[3]["jd"] = 0.0  # JD 0: before 1990
    extra[4]["jd"] = 2400000.5 + 99999.0  # MJD 99999: the future
    assert all("magpsf" in p for p in extra)
    record["prv_candidates"] = record["prv_candidates"] + extra
    return record


def test_absurd_points_are_dropped_and_counted_by_reason(shared_data, tmp_path):
    record = _absurd_alert(shared_data)
    clean = ztf_records_to_batch([_fink_v33_alert(shared_data)[1][0]], "x")
    schema, _ = _fink_v33_alert(shared_data)
    path = _write_container(tmp_path / "absurd.avro", schema, [record], "null")
    batch = read_light_curves([path])
    assert batch.dropped.get(DROP_FLUX_NON_FINITE) == 1
    assert batch.dropped.get(DROP_ERR_NOT_POSITIVE) == 2  # 1e308 mag (0 +- 0), sigma < 0
    assert batch.dropped.get(DROP_TIME_BEFORE_1990) == 1
    assert batch.dropped.get(DROP_TIME_FUTURE) == 1
    assert batch.offsets[-1] == clean.offsets[-1]  # exactly the good points are left


def test_classify_reports_dropped_points_and_prints_no_numpy_warning(shared_data, tmp_path):
    schema, _ = _fink_v33_alert(shared_data)
    path = _write_container(tmp_path / "absurd.avro", schema, [_absurd_alert(shared_data)], "null")
    out = tmp_path / "out.parquet"
    result = runner.invoke(app, ["classify", str(path), "-m", "atat-ztf", "-o", str(out)])
    assert result.exit_code == 0, _stderr(result)
    text = result.output + _stderr(result)
    assert "dropped 5 point(s)" in "".join(text.splitlines())
    assert "RuntimeWarning" not in text and "overflow" not in text


def test_alert_with_no_usable_point_is_skipped_and_a_run_of_nothing_fails(shared_data, tmp_path):
    schema, (record,) = _fink_v33_alert(shared_data)
    record = copy.deepcopy(record)
    for point in [record["candidate"], *record["prv_candidates"]]:
        point["sigmapsf"] = 0.0
        point["diffmaglim"] = None
    path = _write_container(tmp_path / "hopeless.avro", schema, [record], "null")
    out = tmp_path / "out.parquet"
    result = runner.invoke(app, ["classify", str(path), "-m", "atat-ztf", "-o", str(out)])
    assert result.exit_code == 1
    message = "".join(_stderr(result).splitlines())
    assert "no usable point" in message and "none of the 1 object(s)" in message
    assert not out.exists()


def test_json_alert_file_is_detected_and_read(tmp_path):
    lines = [
        {
            "object_id": f"obj{k}",
            "alert_id": str(k),
            "points": [
                {"mjd": 60000.0 + d, "band": "g", "flux": 100.0 + d, "flux_err": 5.0}
                for d in range(4)
            ],
        }
        for k in range(3)
    ]
    path = tmp_path / "alerts.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert detect_format(path) == "json"
    batch = read_light_curves([path])
    assert batch.object_id.tolist() == ["obj0", "obj1", "obj2"]
    assert batch.lengths.tolist() == [4, 4, 4]


def test_replayed_ztf_parquet_rows_become_one_row_messages(shared_data, tmp_path):
    from astro_classifier.stream.replay import file_messages

    path, sources = _ztf_parquet(shared_data, tmp_path / "lake.parquet", n=4)
    messages = file_messages(path)
    assert len(messages) == 4
    ids = [decode_message(v, "ztf-parquet", None, "m").alert_id[0] for _, v in messages]
    assert ids == read_light_curves(sources).alert_id.tolist()
    assert pq.read_table(io.BytesIO(messages[0][1])).num_rows == 1


def test_object_ids_keep_every_character_through_classify(tmp_path):
    from astro_classifier.inference.classify import classify
    from astro_classifier.inference.model import LoadedModel

    ids = ["ZTF\x00mid", "trailing\x00", "plain"]
    points = [
        {"mjd": 60000.0 + d, "band": "g", "flux": 500.0 + 50 * d, "flux_err": 5.0} for d in range(6)
    ]
    path = tmp_path / "ids.jsonl"
    path.write_text("\n".join(json.dumps({"object_id": o, "points": points}) for o in ids) + "\n")
    batch = read_light_curves([path])
    assert batch.object_id.tolist() == ids
    table = classify(batch, LoadedModel.load("atat-ztf", provider="cpu")).to_arrow()
    assert table.column("object_id").to_pylist() == ids
