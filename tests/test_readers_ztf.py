"""ZTF alert Avro reader on the real alerts under shared data alerts/ztf/."""

from __future__ import annotations

import copy
import io
import logging
from pathlib import Path

import fastavro
import numpy as np
import pytest

from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import BAND_INDEX, LightCurveBatch
from astro_classifier.formats.ztf import decode_ztf_avro_bytes, read_ztf_avro, ztf_records_to_batch

FORCED_PHOT_FILES = ("1661382530015060001.avro", "forcedphot_test_1660293514215020000.avro")


def _files(shared_data: Path, folder: str) -> list[Path]:
    return sorted((shared_data / "alerts" / "ztf" / folder).glob("*.avro"))


def _object(batch: LightCurveBatch, object_id: str) -> dict[str, np.ndarray]:
    (index,) = np.flatnonzero(batch.object_id == object_id)
    points = slice(batch.offsets[index], batch.offsets[index + 1])
    return {
        name: getattr(batch, name)[points]
        for name in ("time", "band", "flux", "flux_err", "detected")
    }


def _raw_records(path: Path) -> list[dict]:
    with path.open("rb") as stream:
        return list(fastavro.reader(stream))


@pytest.fixture(scope="module")
def ztf_batches(shared_data: Path) -> dict[str, LightCurveBatch]:
    return {
        folder: read_ztf_avro(_files(shared_data, folder))
        for folder in ("ztf-avro-alert", "fink-v3.3", "fink-v4.02")
    }


@pytest.mark.parametrize(
    ("folder", "n_alerts", "n_objects"),
    [("ztf-avro-alert", 7, 7), ("fink-v3.3", 50, 50), ("fink-v4.02", 561, 515)],
)
def test_every_file_reads_one_object_per_alert(
    shared_data, ztf_batches, folder, n_alerts, n_objects
):
    batch = ztf_batches[folder]
    files = _files(shared_data, folder)
    assert len(files) == n_alerts
    assert len(batch) == n_alerts
    assert len(np.unique(batch.object_id)) == n_objects
    assert all(oid.startswith("ZTF") for oid in batch.object_id)
    if folder != "fink-v4.02":  # these files are named after the alert's candid
        assert all(p.stem.endswith(a) for p, a in zip(files, batch.alert_id, strict=True))
    assert set(batch.band.tolist()) <= {BAND_INDEX["g"], BAND_INDEX["r"], BAND_INDEX["i"]}
    assert np.isfinite(batch.flux).all()
    assert (batch.flux_err > 0).all()
    assert batch.metadata["ra"].dtype == np.float64
    assert ((batch.metadata["ra"] >= 0) & (batch.metadata["ra"] < 360)).all()
    assert (np.abs(batch.metadata["dec"]) <= 90).all()
    for k in range(len(batch)):
        points = slice(batch.offsets[k], batch.offsets[k + 1])
        time, band = batch.time[points], batch.band[points]
        assert batch.detected[points].any()  # the alert's own candidate
        assert (np.diff(time) >= 0).all()
        assert len(set(zip(time.tolist(), band.tolist(), strict=True))) == len(time)


def test_detection_flux_hand_computed(ztf_batches):
    # ZTF18aaxjdyr, candid 1661382530015060001: magpsf 15.553853, sigmapsf 0.0420536,
    # isdiffpos 'f', fid 2, jd 2459415.8825347 -> -10**((31.4 - 15.553853) / 2.5) nJy.
    points = _object(ztf_batches["ztf-avro-alert"], "ZTF18aaxjdyr")
    (index,) = np.flatnonzero(points["detected"])
    assert points["time"][index] == pytest.approx(59415.3825347, abs=1e-7)
    assert points["band"][index] == BAND_INDEX["r"]
    assert points["flux"][index] == pytest.approx(-2.180012e6, rel=1e-5)
    assert points["flux_err"][index] == pytest.approx(8.44379e4, rel=1e-4)
    # The forced photometry 41 s earlier (next field, same object) measures the same flux:
    # -16924.32 DN at zero point 26.1716 -> -2.08868e6 nJy.
    (earlier,) = np.flatnonzero(np.isclose(points["time"], 59415.3820602, rtol=0, atol=1e-7))
    assert points["flux"][earlier] == pytest.approx(-2.088676e6, rel=1e-5)
    assert not points["detected"][earlier]


def test_bands_and_positive_flux_follow_fid_and_isdiffpos(shared_data, ztf_batches):
    path = _files(shared_data, "ztf-avro-alert")[1]  # 2019_01_10_739260766315010006.avro
    (record,) = _raw_records(path)
    points = _object(ztf_batches["ztf-avro-alert"], record["objectId"])
    history = [record["candidate"], *record["prv_candidates"]]
    for fid, band in ((1, "g"), (2, "r")):
        n_detected = sum(p["fid"] == fid and p["magpsf"] is not None for p in history)
        in_band = points["band"] == BAND_INDEX[band]
        assert (points["detected"] & in_band).sum() == n_detected
    positive = [p for p in history if p["magpsf"] is not None and p["isdiffpos"] in ("t", "1")]
    expected = sorted(10 ** ((31.4 - p["magpsf"]) / 2.5) for p in positive)
    measured = sorted(points["flux"][points["detected"] & (points["flux"] > 0)])
    np.testing.assert_allclose(measured, expected, rtol=1e-6)


def test_non_detections_are_zero_flux_with_limit_error(shared_data, ztf_batches):
    # fink-v3.3: every previous candidate is an upper limit (diffmaglim only).
    batch = ztf_batches["fink-v3.3"]
    assert (~batch.detected).sum() == 148
    assert (batch.flux[~batch.detected] == 0).all()
    # ZTF20aabaesm: limit 18.8858 mag (fid 2) at jd 2458835.9826736 -> 5-sigma 1.01317e5 nJy.
    (record,) = _raw_records(_files(shared_data, "fink-v3.3")[0])
    points = _object(batch, record["objectId"])
    first = np.argmin(points["time"])
    assert points["time"][first] == pytest.approx(58835.4826736, abs=1e-7)
    assert not points["detected"][first]
    assert points["band"][first] == BAND_INDEX["r"]
    assert points["flux_err"][first] == pytest.approx(2.02633e4, rel=1e-5)


def test_forced_photometry_points_present(ztf_batches):
    batch = ztf_batches["ztf-avro-alert"]
    for object_id, n_forced in (("ZTF18aaxjdyr", 23), ("ZTF18abstqbv", 18)):
        points = _object(batch, object_id)
        forced = ~points["detected"] & (points["flux"] != 0)
        assert forced.sum() == n_forced
        assert len(points["time"]) == n_forced + 1
    others = [oid for oid in batch.object_id if oid not in ("ZTF18aaxjdyr", "ZTF18abstqbv")]
    for object_id in others:
        points = _object(batch, object_id)
        assert (points["flux"][~points["detected"]] == 0).all()


def test_fp_hists_sentinels_and_detection_epochs_are_skipped(shared_data):
    (record,) = _raw_records(_files(shared_data, "ztf-avro-alert")[0])  # ZTF18aaxjdyr
    forced_template = record["prv_candidates"][0]  # an fp_hist record (schema 3.5 test alert)
    candidate = record["candidate"]

    def forced(days_before: float, **fields: object) -> dict:
        # jd and pid (night number in its leading digits) moved together, as ZTF writes them
        night = int(days_before) * 10**9
        jd = candidate["jd"] - days_before
        return {**forced_template, "jd": jd, "pid": candidate["pid"] - night, **fields}

    alert = copy.deepcopy(record)
    alert["fp_hists"] = [
        forced(10),  # kept
        forced(-5e-5),  # the detection's exposure
        forced(11, forcediffimflux=-99999.0),
        forced(12, forcediffimfluxunc=-99999.0),
        forced(13, magzpsci=None),
        dict(forced_template),  # identical (jd, fid) to a prv_candidates point
    ]
    base = ztf_records_to_batch([record], "alert")
    extended = ztf_records_to_batch([alert], "alert")
    assert len(extended.time) == len(base.time) + 1
    added = np.setdiff1d(extended.time, base.time)
    assert added == pytest.approx([candidate["jd"] - 2400000.5 - 10.0], abs=1e-9)


def test_duplicate_points_are_kept_once(shared_data):
    (record,) = _raw_records(_files(shared_data, "ztf-avro-alert")[1])
    doubled = copy.deepcopy(record)
    doubled["prv_candidates"] = record["prv_candidates"] * 2 + [record["candidate"]]
    assert len(ztf_records_to_batch([doubled], "alert").time) == len(
        ztf_records_to_batch([record], "alert").time
    )


def test_fink_v402_replayed_jd_is_repaired_from_pid(shared_data, caplog):
    # In Fink's re-published 4.02 alerts every prv_candidates jd is 2460236.0626233793.
    path = next(p for p in _files(shared_data, "fink-v4.02") if "113b6672" in p.name)
    (record,) = _raw_records(path)
    assert {p["jd"] for p in record["prv_candidates"]} == {2460236.0626233793}
    with caplog.at_level(logging.DEBUG, logger="astro_classifier.formats.ztf"):
        batch = read_ztf_avro([path])
    assert "pid time was used" in caplog.text
    assert len(np.unique(batch.time)) == len(batch.time) == 20
    # The candidate (fid 1, the latest point) has pid 2481491782015: night 2481 after
    # 2017-01-01 UT, day fraction 0.49178 -> MJD 60235.49178 (its jd says 60235.60429).
    assert batch.time[-1] == pytest.approx(60235.49178, abs=1e-9)
    assert batch.detected[-1]
    assert batch.band[-1] == BAND_INDEX["g"]


def test_decode_bytes_returns_records(shared_data):
    path = _files(shared_data, "fink-v3.3")[0]
    records = decode_ztf_avro_bytes(path.read_bytes(), "topic/0/42")
    assert [r["objectId"] for r in records] == ["ZTF20aabaesm"]
    batch = ztf_records_to_batch(records, "topic/0/42")
    assert batch.alert_id.tolist() == [path.stem]


def _corruptions(data: bytes) -> dict[str, bytes]:
    flipped_sync = data[:-16] + bytes(b ^ 0xFF for b in data[-16:])
    flipped_magic = bytes([data[0] ^ 0x01]) + data[1:]
    return {
        "truncated": data[: len(data) // 2],
        "truncated_header": data[:40],
        "flipped_sync_marker": flipped_sync,
        "flipped_magic": flipped_magic,
        "empty": b"",
        "text": b"objectId,candid\nZTF1,1\n",
    }


@pytest.mark.parametrize(
    "kind",
    ["truncated", "truncated_header", "flipped_sync_marker", "flipped_magic", "empty", "text"],
)
def test_corrupt_file_is_one_input_error_naming_it(shared_data, tmp_path, kind):
    data = _files(shared_data, "ztf-avro-alert")[2].read_bytes()
    bad = tmp_path / f"{kind}.avro"
    bad.write_bytes(_corruptions(data)[kind])
    good = _files(shared_data, "ztf-avro-alert")[3]
    with pytest.raises(InputError, match="expected ZTF alerts") as info:
        read_ztf_avro([good, bad])
    assert info.value.source == str(bad)


def test_rubin_container_is_not_a_ztf_alert(shared_data):
    path = sorted((shared_data / "alerts" / "lsst" / "fink-v7.4").glob("*.avro"))[0]
    with pytest.raises(InputError, match="expected ZTF alerts") as info:
        read_ztf_avro([path])
    assert info.value.source == str(path)


def test_bad_fid_is_an_input_error(shared_data):
    (record,) = _raw_records(_files(shared_data, "fink-v3.3")[0])
    record["candidate"]["fid"] = 7
    with pytest.raises(InputError, match="fid 1 \\(g\\), 2 \\(r\\) or 3 \\(i\\)"):
        ztf_records_to_batch([record], "message")


def test_empty_container_is_an_input_error(shared_data):
    with _files(shared_data, "fink-v3.3")[0].open("rb") as stream:
        schema = fastavro.reader(stream).writer_schema
    buffer = io.BytesIO()
    fastavro.writer(buffer, schema, [])
    with pytest.raises(InputError, match="holds no record"):
        decode_ztf_avro_bytes(buffer.getvalue(), "message")


def test_solar_system_flag_from_ssdistnr(shared_data):
    files = sorted((shared_data / "alerts/ztf/fink-v4.02").glob("*.avro"))
    batch = read_ztf_avro(files)
    flags = batch.metadata["solar_system"]
    expected = []
    for path in files:
        (record,) = _raw_records(path)
        distance = record["candidate"].get("ssdistnr")
        expected.append(float(distance is not None and 0 <= distance < 5))
    assert flags.tolist() == expected
    assert 0 < flags.sum() < len(files)  # both kinds are in the real data
