"""Readers of the ZTF BTS/ANTARES transients and the TDSS quasars, on the real files under
shared data, plus small hand-made folders for the dropped-point counts.

Each reader: hand-computed unit conversion of known points, object and label counts, dropped
points, and recognition (``looks_like_*``, ``detect_format``, ``read_light_curves``).
"""

from __future__ import annotations

import collections
import csv
import io
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest

from astro_classifier.catalogs.alerce_examples import looks_like_alerce_examples
from astro_classifier.catalogs.antares_bts import (
    bts_type_label,
    looks_like_antares_bts,
    read_antares_bts,
)
from astro_classifier.catalogs.manytde import looks_like_manytde
from astro_classifier.catalogs.osc import looks_like_osc
from astro_classifier.catalogs.slsne import looks_like_slsne
from astro_classifier.catalogs.tdss import (
    looks_like_tdss_quasars,
    read_tdss_quasars,
    sdss_name_to_degrees,
)
from astro_classifier.catalogs.ztf_bts import looks_like_ztf_bts
from astro_classifier.core.lightcurve import BAND_INDEX, LightCurveBatch
from astro_classifier.core.taxonomy import broad_class_of, canonical_label
from astro_classifier.core.units import ab_mag_to_njy
from astro_classifier.formats.registry import detect_format, read_light_curves

LN10_OVER_2_5 = math.log(10) / 2.5


def ab(mag: float) -> float:
    """AB magnitude -> nJy, written out: 3631 Jy = 3631e9 nJy at magnitude 0."""
    return 3631e9 * 10 ** (-0.4 * mag)


def points_of(batch: LightCurveBatch, object_id: str) -> slice:
    k = int(np.flatnonzero(batch.object_id == object_id)[0])
    return slice(int(batch.offsets[k]), int(batch.offsets[k + 1]))


def member_text(tarball: Path, name: str) -> str:
    with tarfile.open(tarball, "r:gz") as tar:
        return tar.extractfile(name).read().decode()


def write_tarball(path: Path, members: dict[str, str]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def antares_dir(shared_data: Path) -> Path:
    return shared_data / "lightcurves" / "ztf-bts-antares"


@pytest.fixture(scope="module")
def tdss_dir(shared_data: Path) -> Path:
    return shared_data / "lightcurves" / "tdss-quasars"


@pytest.fixture(scope="module")
def antares(antares_dir: Path) -> LightCurveBatch:
    return read_antares_bts(antares_dir)


@pytest.fixture(scope="module")
def tdss(tdss_dir: Path) -> LightCurveBatch:
    return read_tdss_quasars(tdss_dir)


def test_ab_conversion_is_3631_jansky():
    flux, err = ab_mag_to_njy(np.array([20.0]), np.array([0.1]))
    assert flux[0] == pytest.approx(3631e9 * 10 ** (-0.4 * 20), rel=1e-4)  # 36,310 nJy
    assert err[0] == pytest.approx(flux[0] * LN10_OVER_2_5 * 0.1, rel=1e-12)


# -- ZTF BTS / ANTARES ---------------------------------------------------------------------------
def test_antares_counts(antares, antares_dir):
    with (antares_dir / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(antares) == len(rows) == 2705
    assert antares.object_id.tolist() == [r["ZTFID"] for r in rows]
    assert int((antares.lengths == 0).sum()) == 0  # every labelled object has a light curve
    assert int(antares.offsets[-1]) == 95858
    assert antares.dropped == {}  # every point of the files is usable
    assert antares.detected.all()
    assert set(np.unique(antares.band).tolist()) == {BAND_INDEX["g"], BAND_INDEX["r"]}
    assert collections.Counter(antares.label.tolist()) == {
        "SNIa": 1981,  # SN Ia 1908, -91T 59, -pec 12, -CSM 2
        "SNII": 379,  # SN II 344, IIP 32, II-pec 3
        "SNIbc": 159,  # Ic 69, Ib 39, Ic-BL 29, Ibn 12, Ib/c 7, Icn 2, Ib-pec 1
        "SNIIn": 62,
        "SNIIb": 37,
        "SLSN-I": 25,
        "CV/Nova": 17,
        "SLSN-II": 14,
        "SNIa-91bg": 9,
        "TDE": 8,
        "SN": 8,  # LBV 2, ILRT 2, other 2, LRN 1, Ca-rich 1
        "SNIax": 6,
    }
    # the raw BTS type is kept
    assert collections.Counter(antares.metadata["type"].tolist()) == collections.Counter(
        r["type"] for r in rows
    )
    # every label has a broad class, so broad-class scoring can use them all
    assert all(broad_class_of(label) for label in set(antares.label.tolist()))


def test_antares_type_labels():
    assert bts_type_label("SN Ia") == "SNIa"
    assert bts_type_label("SN Ia-91T") == "SNIa"
    assert bts_type_label("SN Ia-91bg") == "SNIa-91bg"
    assert bts_type_label("SN II") == bts_type_label("SN IIP") == "SNII"
    assert bts_type_label("SN IIn") == "SNIIn"
    assert bts_type_label("SN IIb") == "SNIIb"
    for stripped in ("SN Ic", "SN Ib", "SN Ic-BL", "SN Ibn", "SN Ib/c", "SN Icn", "SN Ib-pec"):
        assert bts_type_label(stripped) == "SNIbc", stripped
    assert bts_type_label("SLSN-I") == "SLSN-I"
    assert bts_type_label("SLSN-II") == "SLSN-II"
    assert bts_type_label("TDE") == "TDE"
    assert bts_type_label("nova") == "CV/Nova"
    assert bts_type_label("LBV") == bts_type_label("Ca-rich") == "SN"


def test_antares_points_and_metadata(antares, antares_dir):
    # data/ANTARES/ZTF17aadlxmv.csv, converted by hand
    text = member_text(antares_dir / "antares_lightcurves.tar.gz", "data/ANTARES/ZTF17aadlxmv.csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["ant_passband"] == "R" and rows[0]["ant_mag"] == "19.798999786376953"
    rows.sort(key=lambda r: float(r["ant_mjd"]))
    s = points_of(antares, "ZTF17aadlxmv")
    assert s.stop - s.start == len(rows) == 32
    for k, row in zip(range(s.start, s.start + 4), rows[:4], strict=True):
        mag, err = float(row["ant_mag"]), float(row["ant_magerr"])
        assert antares.time[k] == pytest.approx(float(row["ant_mjd"]), abs=1e-9)
        assert antares.band[k] == BAND_INDEX[{"g": "g", "R": "r"}[row["ant_passband"]]]
        assert antares.flux[k] == pytest.approx(ab(mag), rel=1e-4)
        assert antares.flux_err[k] == pytest.approx(ab(mag) * LN10_OVER_2_5 * err, rel=1e-4)
    assert antares.time[s.start] == pytest.approx(58863.35146989999)
    assert antares.band[s.start] == BAND_INDEX["r"]
    j = int(np.flatnonzero(antares.object_id == "ZTF17aadlxmv")[0])
    meta = {k: v[j] for k, v in antares.metadata.items()}
    assert meta["ra"] == pytest.approx(15 * (8 + 29 / 60 + 47.59 / 3600))
    assert meta["dec"] == pytest.approx(33 + 54 / 60 + 22.8 / 3600)
    assert meta["redshift"] == pytest.approx(0.062)
    assert meta["peak_mag"] == pytest.approx(17.9475)
    assert meta["peak_band"] == "g"
    assert meta["type"] == "SN Ia" and antares.label[j] == "SNIa"
    assert int(np.isnan(antares.metadata["redshift"]).sum()) == 6  # empty or "-"
    assert not np.isnan(antares.metadata["ra"]).any()


def test_antares_dropped_and_missing(tmp_path):
    (tmp_path / "labels.csv").write_text(
        "ZTFID,IAUID,RA,Dec,type,redshift,peakmag,peakfilt\n"
        "ZTF1a,SN1,00:00:00.00,-01:00:00.0,SN Ic-BL,-,18.0,g\n"
        "ZTF1b,SN2,12:00:00.00,+10:30:00.0,SN Ia,0.05,17.0,r\n"
    )
    header = ",ant_mjd,ant_passband,ant_mag,ant_magerr\n"
    write_tarball(
        tmp_path / "antares_lightcurves.tar.gz",
        {
            "data/ANTARES/ZTF1a.csv": header
            + "0,59000.0,g,20.0,0.1\n"
            + "1,59001.0,R,19.0,0.05\n"
            + "2,59002.0,i,19.0,0.05\n"  # unknown band
            + "3,59003.0,g,nan,0.05\n"  # non-finite
            + "4,59004.0,R,19.5,0.0\n"  # error <= 0
            + "5,59005.0,g,,0.1\n",  # empty: non-finite
            "data/ANTARES/ZTF9zz.csv": header + "0,59000.0,g,20.0,0.1\n",  # not in labels.csv
        },
    )
    batch = read_antares_bts(tmp_path / "labels.csv")
    assert batch.object_id.tolist() == ["ZTF1a", "ZTF1b"]
    assert batch.lengths.tolist() == [2, 0]  # ZTF1b has no light curve: empty
    assert batch.dropped == {
        "unknown band 'i'": 1,
        "non-finite time, magnitude or error": 2,
        "magnitude error <= 0": 1,
        "light curve of a ZTFID not in labels.csv": 1,
    }
    assert batch.flux[0] == pytest.approx(ab(20.0), rel=1e-4)
    assert batch.band.tolist() == [BAND_INDEX["g"], BAND_INDEX["r"]]
    assert batch.label.tolist() == ["SNIbc", "SNIa"]
    assert np.isnan(batch.metadata["redshift"][0])
    assert batch.metadata["dec"][0] == pytest.approx(-1.0)
    assert batch.metadata["ra"][1] == pytest.approx(180.0)


# -- TDSS quasars ----------------------------------------------------------------------------------
def test_tdss_counts(tdss):
    assert len(tdss) == 11738
    assert collections.Counter(tdss.label.tolist()) == {"QSO": 11738}
    assert canonical_label("QSO") == "QSO" and broad_class_of("QSO") == "stochastic"
    assert tdss.dropped == {}
    assert tdss.detected.all()
    assert int(tdss.offsets[-1]) == 397259
    assert int((tdss.band == BAND_INDEX["g"]).sum()) == 184590
    assert int((tdss.band == BAND_INDEX["r"]).sum()) == 212669
    assert tdss.object_id.tolist() == sorted(tdss.object_id.tolist())
    assert int(tdss.lengths.min()) >= 4  # 2+ epochs in each band
    assert not np.isnan(tdss.metadata["ra"]).any() and not np.isnan(tdss.metadata["dec"]).any()
    assert (tdss.flux > 0).all()  # total, not difference, fluxes


def test_tdss_points_and_position(tdss, tdss_dir):
    name = "103438.89+305336.6"
    by_band = {}
    for band in "gr":
        text = member_text(tdss_dir / f"{band}band.tar.gz", f"{band}band/{name}")
        assert text.startswith("#MJD mag error")
        by_band[band] = np.array(text.split("\n", 1)[1].split(), float).reshape(-1, 3)
    s = points_of(tdss, name)
    assert s.stop - s.start == len(by_band["g"]) + len(by_band["r"])
    g = np.flatnonzero(tdss.band[s] == BAND_INDEX["g"]) + s.start
    # gband/103438.89+305336.6, first line: 53111.244  20.051577  0.027000000
    assert by_band["g"][0].tolist() == [53111.244, 20.051577, 0.027]
    for k, (mjd, mag, err) in zip(g[:3], by_band["g"][:3], strict=True):
        assert tdss.time[k] == pytest.approx(mjd, abs=1e-9)
        assert tdss.flux[k] == pytest.approx(ab(mag), rel=1e-4)
        assert tdss.flux_err[k] == pytest.approx(ab(mag) * LN10_OVER_2_5 * err, rel=1e-4)
    r = np.flatnonzero(tdss.band[s] == BAND_INDEX["r"]) + s.start
    assert tdss.flux[r[0]] == pytest.approx(ab(by_band["r"][0, 1]), rel=1e-4)
    j = int(np.flatnonzero(tdss.object_id == name)[0])
    assert tdss.metadata["ra"][j] == pytest.approx(15 * (10 + 34 / 60 + 38.89 / 3600))
    assert tdss.metadata["dec"][j] == pytest.approx(30 + 53 / 60 + 36.6 / 3600)


def test_sdss_names_to_degrees():
    ra, dec = sdss_name_to_degrees("000001.27-020159.7")
    assert ra == pytest.approx(15 * 1.27 / 3600)
    assert dec == pytest.approx(-(2 + 1 / 60 + 59.7 / 3600))
    assert all(np.isnan(sdss_name_to_degrees("42499")))  # an internal id: no position


def test_tdss_union_and_dropped(tmp_path):
    write_tarball(
        tmp_path / "gband.tar.gz",
        {
            "gband/000001.00+010000.0": "#MJD mag error\n 53000.0 20.0 0.1\n 55300.0 nan 0.1\n",
            "gband/120000.00-300000.0": "#MJD mag error\n 53000.5 19.0 0.0\n 55300.5 19.5 0.05\n",
        },
    )
    write_tarball(
        tmp_path / "rband.tar.gz",
        {
            "rband/120000.00-300000.0": "#MJD mag error\n 53000.5 18.5 0.02\n",
            "rband/42499": "#MJD mag error\n 55400.0 21.0 0.2\n 55401.0 21.1 0.2\n",
        },
    )
    batch = read_tdss_quasars(tmp_path / "gband.tar.gz")
    assert batch.object_id.tolist() == ["000001.00+010000.0", "120000.00-300000.0", "42499"]
    assert batch.lengths.tolist() == [1, 2, 2]
    assert batch.dropped == {"non-finite time, magnitude or error": 1, "magnitude error <= 0": 1}
    assert batch.flux[0] == pytest.approx(ab(20.0), rel=1e-4)
    s = points_of(batch, "120000.00-300000.0")
    assert batch.band[s].tolist() == [BAND_INDEX["r"], BAND_INDEX["g"]]  # sorted by time
    assert batch.metadata["ra"][1] == pytest.approx(180.0)
    assert batch.metadata["dec"][1] == pytest.approx(-30.0)
    assert np.isnan(batch.metadata["ra"][2])
    assert batch.label.tolist() == ["QSO"] * 3


# -- recognition and the registry ------------------------------------------------------------------
def test_recognition(shared_data, antares_dir, tdss_dir):
    others = [
        shared_data / "lightcurves" / name
        for name in ("ztf-bts-snia", "manytde", "slsne", "alerce-examples", "eros1", "plasticc")
    ] + [shared_data / "multimodal" / "osc-sne"]
    for path in others:
        assert not looks_like_antares_bts(path), path
        assert not looks_like_tdss_quasars(path), path
    assert not looks_like_antares_bts(tdss_dir) and not looks_like_tdss_quasars(antares_dir)
    for recognise in (
        looks_like_ztf_bts,
        looks_like_manytde,
        looks_like_slsne,
        looks_like_osc,
        looks_like_alerce_examples,
    ):
        assert not recognise(antares_dir) and not recognise(tdss_dir), recognise.__name__
    assert looks_like_antares_bts(antares_dir / "labels.csv")
    assert looks_like_tdss_quasars(tdss_dir / "rband.tar.gz")
    assert detect_format(antares_dir) == "ztf-bts-antares"
    assert detect_format(antares_dir / "antares_lightcurves.tar.gz") == "ztf-bts-antares"
    assert detect_format(tdss_dir) == "tdss-quasars"
    assert detect_format(tdss_dir / "gband.tar.gz") == "tdss-quasars"


def test_read_light_curves_through_the_registry(antares_dir, tdss_dir, antares, tdss):
    batch = read_light_curves([antares_dir])
    assert batch.object_id.tolist() == antares.object_id.tolist()
    assert batch.label.tolist() == antares.label.tolist()
    np.testing.assert_array_equal(batch.flux, antares.flux)
    batch = read_light_curves([tdss_dir], format="tdss-quasars")
    assert len(batch) == len(tdss) and int(batch.offsets[-1]) == int(tdss.offsets[-1])
