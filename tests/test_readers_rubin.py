"""Rubin/LSST alert readers on real data: Avro containers, wire format, Parquet."""

from __future__ import annotations

import copy
import struct
from pathlib import Path

import fastavro
import numpy as np
import pytest

from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import BAND_INDEX, LightCurveBatch
from astro_classifier.formats.rubin import (
    SchemaDirectory,
    decode_rubin_wire,
    is_rubin_avro_schema,
    read_rubin_avro,
    read_rubin_parquet,
    read_rubin_wire,
    rubin_records_to_batch,
)

FINK_ALERT = "58804293150441522_58804293150441522.avro"


@pytest.fixture(scope="module")
def lsst(shared_data: Path) -> Path:
    return shared_data / "alerts" / "lsst"


@pytest.fixture(scope="module")
def schemas(lsst: Path) -> SchemaDirectory:
    return SchemaDirectory(lsst / "schema")


@pytest.fixture(scope="module")
def fink(lsst: Path) -> LightCurveBatch:
    return read_rubin_avro(sorted((lsst / "fink-v7.4").glob("*.avro")))


@pytest.fixture(scope="module")
def elasticc(shared_data: Path) -> LightCurveBatch:
    return read_rubin_avro(sorted((shared_data / "alerts" / "elasticc" / "v0.9").glob("*.avro")))


@pytest.fixture(scope="module")
def wire(lsst: Path) -> LightCurveBatch:
    return read_rubin_wire(sorted((lsst / "wire-v7.4").glob("message_*.avro")), lsst / "schema")


@pytest.fixture(scope="module")
def parquet(lsst: Path) -> LightCurveBatch:
    return read_rubin_parquet(lsst / "fink-v10.0.parquet")


@pytest.fixture(scope="module")
def samples(lsst: Path) -> list[Path]:
    return sorted((lsst / "schema").glob("*/*/sample_data/fakeAlert.avro"))


def _points(batch: LightCurveBatch, k: int) -> slice:
    return slice(int(batch.offsets[k]), int(batch.offsets[k + 1]))


# -- every real file reads, with the expected counts -------------------------------------
@pytest.mark.parametrize(
    ("name", "alerts", "objects", "points", "forced"),
    [
        ("wire", 5, 5, 9, 0),  # the forced points all repeat detections
        ("fink", 100, 100, 327, 35),
        ("elasticc", 82, 43, 799, 0),
        ("parquet", 25, 25, 65, 0),  # 22 diaObjects + 3 solar-system objects
    ],
)
def test_folder_counts(
    request: pytest.FixtureRequest, name: str, alerts: int, objects: int, points: int, forced: int
) -> None:
    batch: LightCurveBatch = request.getfixturevalue(name)
    assert len(batch) == alerts
    assert len(set(batch.object_id)) == objects
    assert len(set(batch.alert_id)) == alerts  # ELAsTiCC's alertId is a constant placeholder
    assert batch.offsets[-1] == points
    assert (~batch.detected).sum() == forced
    assert set(batch.metadata) == {
        "ra",
        "dec",
        "hostgal_photoz",
        "hostgal_photoz_err",
        "mwebv",
        "solar_system",
    }
    assert np.isfinite(batch.metadata["ra"]).all() and np.isfinite(batch.metadata["dec"]).all()
    assert np.isfinite(batch.flux).all() and (batch.flux_err > 0).all()


@pytest.mark.parametrize("name", ["wire", "fink", "elasticc", "parquet"])
def test_times_sorted_and_unique_per_band(request: pytest.FixtureRequest, name: str) -> None:
    batch: LightCurveBatch = request.getfixturevalue(name)
    for k in range(len(batch)):
        time, band = batch.time[_points(batch, k)], batch.band[_points(batch, k)]
        assert (np.diff(time) >= 0).all()
        assert len(set(zip(time.tolist(), band.tolist(), strict=True))) == len(time)


def test_schema_sample_alerts_all_versions(samples: list[Path]) -> None:
    versions = sorted(p.parts[-4] + "." + p.parts[-3] for p in samples)
    assert len(versions) == 14  # 3.0 4.0 5.0 6.0 6.1 7.0-7.4 8.0 9.0 10.0 11.0
    batch = read_rubin_avro(samples)
    assert len(batch) == 14
    assert set(batch.object_id) == {"281323062375219201"}
    assert (batch.lengths >= 1).all()
    assert (batch.band == BAND_INDEX["r"]).all()


# -- hand-checked values -----------------------------------------------------------------
def test_fink_alert_values(fink: LightCurveBatch) -> None:
    k = int(np.flatnonzero(fink.alert_id == "58804293150441522")[0])
    assert fink.object_id[k] == "3677566298566426694"
    assert fink.metadata["ra"][k] == pytest.approx(52.035163208398416)
    assert fink.metadata["dec"][k] == pytest.approx(-29.03086172511245)
    assert np.isnan(fink.metadata["hostgal_photoz"][k])
    pts = _points(fink, k)
    time, flux, band = fink.time[pts], fink.flux[pts], fink.band[pts]
    # the triggering diaSource: psfFlux -4361.105 +- 256.559 nJy in i at MJD 60776.83602
    i = int(np.flatnonzero(np.isclose(time, 60776.83602190012, rtol=0, atol=1e-9))[0])
    assert band[i] == BAND_INDEX["i"]
    assert flux[i] == pytest.approx(-4361.10498046875)
    assert fink.flux_err[pts][i] == pytest.approx(256.5589904785156)
    assert fink.detected[pts][i]
    # prvDiaSources and prvDiaForcedSources both measured g at MJD 60776.83242: the
    # detection (-1214.614 nJy) wins over the forced point (-1210.047 nJy)
    j = int(np.flatnonzero(np.isclose(time, 60776.832424987006, rtol=0, atol=1e-9))[0])
    assert flux[j] == pytest.approx(-1214.6138916015625)
    assert fink.detected[pts][j]
    assert len(time) == 3  # 1 diaSource + 2 prvDiaSources; both forced points repeat them


def test_forced_photometry_not_detected(fink: LightCurveBatch) -> None:
    k = int(np.flatnonzero(fink.alert_id == "58804302302412845")[0])
    pts = _points(fink, k)
    time = fink.time[pts]
    # prvDiaForcedSources: g, -684.271 +- 197.085 nJy at MJD 60776.83314, no detection then
    j = int(np.flatnonzero(np.isclose(time, 60776.8331445245, rtol=0, atol=1e-9))[0])
    assert fink.band[pts][j] == BAND_INDEX["g"]
    assert fink.flux[pts][j] == pytest.approx(-684.2708740234375)
    assert fink.flux_err[pts][j] == pytest.approx(197.0845184326172)
    assert not fink.detected[pts][j]
    assert (~fink.detected[pts]).sum() == 5


def test_wire_values_and_detections_win(wire: LightCurveBatch) -> None:
    assert wire.object_id[0] == "396895243468944"
    assert wire.flux[0] == pytest.approx(-218.23802185058594)
    assert wire.flux_err[0] == pytest.approx(42.26220703125)
    assert wire.time[0] == pytest.approx(57454.299200225694)
    assert wire.band[0] == BAND_INDEX["g"]
    # message_1: diaSource + 1 prvDiaSource + 1 forced point at the prvDiaSource's visit
    assert wire.lengths.tolist() == [1, 2, 3, 2, 1]
    assert wire.detected.all()


def test_elasticc_old_names_and_host(elasticc: LightCurveBatch) -> None:
    k = int(np.flatnonzero(elasticc.alert_id == "2262001")[0])
    assert elasticc.object_id[k] == "1131"
    assert elasticc.metadata["dec"][k] == pytest.approx(-51.642994)  # from ``decl``
    assert elasticc.metadata["hostgal_photoz"][k] == pytest.approx(1.1370378732681274)
    assert elasticc.metadata["hostgal_photoz_err"][k] == pytest.approx(0.001)
    assert elasticc.metadata["mwebv"][k] == 0.0
    pts = _points(elasticc, k)
    i = int(np.flatnonzero(np.isclose(elasticc.time[pts], 59583.0511, rtol=0, atol=1e-6))[0])
    assert elasticc.flux[pts][i] == pytest.approx(149.58885192871094)  # psFlux
    assert elasticc.band[pts][i] == BAND_INDEX["z"]
    assert BAND_INDEX["y"] in elasticc.band  # filterName 'Y' (upper case)
    # hostgal_z = -9 (SNANA "missing") becomes NaN
    assert np.isnan(elasticc.metadata["hostgal_photoz"]).sum() == 5


def test_parquet_ids_exact_and_solar_system(parquet: LightCurveBatch) -> None:
    # diaObject.diaObjectId is float64 in this file (21 distinct for 22 objects): ids come
    # from the int64 diaSource.diaObjectId
    assert parquet.object_id[0] == "169813006680588318"
    assert parquet.alert_id[0] == "169813006680588318"
    assert parquet.flux[0] == pytest.approx(1622.2264404296875)
    assert parquet.time[0] == pytest.approx(61041.2257173097)
    k = int(np.flatnonzero(parquet.alert_id == "169813007065939974")[0])
    assert parquet.object_id[k] == "21163611661088578"  # ssObjectId: no diaObject
    assert np.isfinite(parquet.metadata["ra"][k])


# -- format detection, schemas, null points ----------------------------------------------
def test_is_rubin_avro_schema(lsst: Path, shared_data: Path) -> None:
    def writer_schema(path: Path) -> dict:
        with open(path, "rb") as fh:
            return fastavro.reader(fh).writer_schema

    assert is_rubin_avro_schema(writer_schema(lsst / "fink-v7.4" / FINK_ALERT))
    elasticc = next((shared_data / "alerts" / "elasticc" / "v0.9").glob("*.avro"))
    assert is_rubin_avro_schema(writer_schema(elasticc))
    ztf = next((shared_data / "alerts" / "ztf" / "fink-v3.3").glob("*.avro"))
    assert not is_rubin_avro_schema(writer_schema(ztf))


def test_schema_directory(schemas: SchemaDirectory) -> None:
    assert schemas.versions()[0] == "3.0" and schemas.versions()[-1] == "11.0"
    assert "7.4" in schemas.versions() and len(schemas.versions()) == 14
    assert schemas.get(704, "m") is schemas.get(704, "m")  # parsed once


def test_null_flux_points_skipped_and_counted(lsst: Path) -> None:
    with open(lsst / "fink-v7.4" / FINK_ALERT, "rb") as fh:
        record = next(fastavro.reader(fh))
    broken = copy.deepcopy(record)
    broken["prvDiaSources"][0]["psfFlux"] = None  # MJD 60776.82338, g
    broken["prvDiaSources"][1]["psfFluxErr"] = float("nan")  # MJD 60776.83242, g
    batch = rubin_records_to_batch([broken], "alert-42")
    assert batch.dropped == {"null or NaN time, band, flux or flux error": 2}
    # the forced point of the same visit now stands in for the skipped detection
    assert batch.time.tolist() == pytest.approx([60776.832424987006, 60776.83602190012])
    assert batch.detected.tolist() == [False, True]
    assert batch.flux[0] == pytest.approx(-1210.0465087890625)


# -- bad input: one InputError naming the source -----------------------------------------
def _flip(data: bytes, index: int, mask: int = 0x80) -> bytes:
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1 :]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("empty", "0 bytes"),
        ("truncated", "EOFError"),
        ("bit-flipped", "cannot decode"),  # first body byte: the alertId varint grows
        ("trailing", "left after decoding"),
        ("wrong-magic", "magic byte is 0x01"),
        ("unknown-id", "unknown schema id 999"),
        ("json", "looks like JSON"),
    ],
)
def test_bad_wire_messages(lsst: Path, schemas: SchemaDirectory, case: str, expected: str) -> None:
    good = (lsst / "wire-v7.4" / "message_1.avro").read_bytes()
    data = {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "bit-flipped": _flip(good, 5),
        "trailing": good + b"\x00",
        "wrong-magic": b"\x01" + good[1:],
        "unknown-id": b"\x00" + struct.pack(">I", 999) + good[5:],
        "json": b'{"alertId": 1, "diaSource": {"psfFlux": 1.0}}',
    }[case]
    source = f"alerts-topic/0/{case}"
    with pytest.raises(InputError) as err:
        decode_rubin_wire(data, schemas, source)
    assert err.value.source == source
    assert expected in err.value.reason and "expected" in err.value.reason


def test_unknown_schema_id_lists_versions(schemas: SchemaDirectory) -> None:
    with pytest.raises(InputError, match=r"999.*'3\.0'.*'11\.0'"):
        schemas.get(999, "msg")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("empty", "not b'Obj\\x01'"),
        ("json", "not b'Obj\\x01'"),
        ("wire-message", "Confluent wire-format"),
        ("truncated", "cannot decode"),
        ("bit-flipped", "sync marker"),  # last byte of the block's sync marker
        ("ztf", "no diaSource"),
    ],
)
def test_bad_container_files(
    lsst: Path, shared_data: Path, tmp_path: Path, case: str, expected: str
) -> None:
    good = (lsst / "fink-v7.4" / FINK_ALERT).read_bytes()
    if case == "ztf":
        path = next((shared_data / "alerts" / "ztf" / "fink-v3.3").glob("*.avro"))
    else:
        path = tmp_path / f"{case}.avro"
        path.write_bytes(
            {
                "empty": b"",
                "json": b'{"alertId": 1}',
                "wire-message": (lsst / "wire-v7.4" / "message_0.avro").read_bytes(),
                "truncated": good[: len(good) // 2],
                "bit-flipped": _flip(good, len(good) - 1, 0x01),
            }[case]
        )
    with pytest.raises(InputError) as err:
        read_rubin_avro(path)
    assert err.value.source == str(path)
    assert expected in err.value.reason


def test_bad_parquet(lsst: Path, tmp_path: Path) -> None:
    not_parquet = lsst / "fink-v7.4" / FINK_ALERT
    with pytest.raises(InputError) as err:
        read_rubin_parquet(not_parquet)
    assert err.value.source == str(not_parquet)
    with pytest.raises(InputError, match="no paths|no files"):
        read_rubin_avro([])
