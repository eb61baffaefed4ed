"""Readers of the labelled real-sky sets, on the real files under shared data.

Each reader: hand-computed unit conversion of at least one point, label counts, dropped-point
counts, and its ``looks_like_*`` recognising its own input and rejecting the others'.
"""

from __future__ import annotations

import collections
import math
from pathlib import Path

import numpy as np
import pytest

from astro_classifier.catalogs.alerce_examples import (
    looks_like_alerce_examples,
    read_alerce_examples,
)
from astro_classifier.catalogs.manytde import looks_like_manytde, read_manytde
from astro_classifier.catalogs.osc import looks_like_osc, read_osc
from astro_classifier.catalogs.realsky import sexagesimal_to_degrees, sn_type_label
from astro_classifier.catalogs.slsne import looks_like_slsne, read_slsne
from astro_classifier.catalogs.splits import real_sky_split
from astro_classifier.catalogs.ztf_bts import looks_like_ztf_bts, read_ztf_bts
from astro_classifier.core.lightcurve import BAND_INDEX, LightCurveBatch
from astro_classifier.core.units import jy_to_njy, limiting_mag_to_njy_err, vega_mag_to_njy

LN10_OVER_2_5 = math.log(10) / 2.5


def ab(mag: float) -> float:
    """AB magnitude -> nJy, written out: 3631 Jy = 10**(31.4/2.5) nJy."""
    return 10 ** ((31.4 - mag) / 2.5)


def point(batch: LightCurveBatch, object_id: str, time: float, band: str) -> int:
    """Index of the one point of ``object_id`` at ``time`` (to 1e-6 d) in ``band``."""
    k = int(np.flatnonzero(batch.object_id == object_id)[0])
    lo, hi = batch.offsets[k], batch.offsets[k + 1]
    hits = np.flatnonzero(
        (np.abs(batch.time[lo:hi] - time) < 1e-6) & (batch.band[lo:hi] == BAND_INDEX[band])
    )
    assert len(hits) == 1, f"{object_id} {time} {band}: {len(hits)} points"
    return int(lo + hits[0])


def paths(shared_data: Path) -> dict[str, Path]:
    return {
        "ztf_bts": shared_data / "lightcurves" / "ztf-bts-snia",
        "manytde": shared_data / "lightcurves" / "manytde",
        "slsne": shared_data / "lightcurves" / "slsne",
        "osc": shared_data / "multimodal" / "osc-sne",
        "alerce": shared_data / "lightcurves" / "alerce-examples",
        "eros1": shared_data / "lightcurves" / "eros1",
        "plasticc": shared_data / "lightcurves" / "plasticc",
    }


@pytest.fixture(scope="module")
def bts(shared_data: Path) -> LightCurveBatch:
    return read_ztf_bts(paths(shared_data)["ztf_bts"])


@pytest.fixture(scope="module")
def tde(shared_data: Path) -> LightCurveBatch:
    return read_manytde(paths(shared_data)["manytde"])


@pytest.fixture(scope="module")
def slsne(shared_data: Path) -> LightCurveBatch:
    return read_slsne(paths(shared_data)["slsne"])


@pytest.fixture(scope="module")
def osc(shared_data: Path) -> LightCurveBatch:
    return read_osc(paths(shared_data)["osc"])


@pytest.fixture(scope="module")
def alerce(shared_data: Path) -> LightCurveBatch:
    return read_alerce_examples(paths(shared_data)["alerce"])


# -- unit conversions added for these readers ----------------------------------------------
def test_unit_helpers():
    flux, err = jy_to_njy(np.array([-2.5e-6]), np.array([1e-7]))
    assert flux[0] == pytest.approx(-2500.0) and err[0] == pytest.approx(100.0)
    flux, err = vega_mag_to_njy(np.array([20.0]), np.array([0.1]), np.array(["u"]))
    assert flux[0] == pytest.approx(ab(20.91))
    assert err[0] == pytest.approx(ab(20.91) * LN10_OVER_2_5 * 0.1)
    assert limiting_mag_to_njy_err(np.array([20.0]))[0] == pytest.approx(ab(20.0) / 5)


def test_label_and_position_helpers():
    assert sn_type_label("SN Ia-91T") == "SNIa"
    assert sn_type_label("II P") == "SNII"
    assert sn_type_label("Ic BL") == "SNIbc"
    assert sn_type_label("IIn?") == "SNIIn"
    assert sn_type_label(".Ia") == "SN"
    assert sn_type_label("Ib/IIb") == "SN"
    ra, dec = sexagesimal_to_degrees("08:29:47.59", "-33:54:22.8")
    assert ra == pytest.approx(15 * (8 + 29 / 60 + 47.59 / 3600))
    assert dec == pytest.approx(-(33 + 54 / 60 + 22.8 / 3600))


# -- ZTF BTS SN Ia ---------------------------------------------------------------------------
def test_bts_counts(bts):
    assert len(bts) == 2314  # rows of bts.csv; 25 have no light-curve file
    assert int((bts.lengths == 0).sum()) == 25
    assert collections.Counter(bts.label.tolist()) == {"SNIa": 2297, "SNIa-91bg": 10, "SNIax": 7}
    assert int(bts.offsets[-1]) == 44339
    assert bts.dropped == {}  # every point of the files is usable
    assert bts.detected.all()


def test_bts_point_and_metadata(bts):
    # light-curves/ZTF17aadlxmv.csv row 1: 58863.35146989999,19.798999786376957,0.2009...,R
    k = point(bts, "ZTF17aadlxmv", 58863.35146989999, "r")
    assert bts.flux[k] == pytest.approx(ab(19.798999786376957), rel=1e-6)
    assert bts.flux_err[k] == pytest.approx(
        ab(19.798999786376957) * LN10_OVER_2_5 * 0.2009020000696182, rel=1e-6
    )
    point(bts, "ZTF18accjdgs", 59762.44666669984, "i")  # the one i-band point
    j = int(np.flatnonzero(bts.object_id == "ZTF17aadlxmv")[0])
    assert bts.metadata["ra"][j] == pytest.approx(15 * (8 + 29 / 60 + 47.59 / 3600))
    assert bts.metadata["redshift"][j] == pytest.approx(0.062)
    assert bts.metadata["ebv"][j] == pytest.approx(0.106 / 3.1)
    assert bts.metadata["peak_mjd"][j] == pytest.approx(879.69 + 2458000 - 2400000.5)


# -- manyTDE -----------------------------------------------------------------------------------
def test_manytde_counts_and_dropped(tde):
    assert len(tde) == 97
    assert collections.Counter(tde.label.tolist()) == {"TDE": 97}
    assert int(tde.offsets[-1]) == 46846 + 37197  # every r.ztf and g.ztf row
    assert int((tde.lengths == 0).sum()) == 18  # TDEs found before ZTF
    assert tde.dropped["filter i.ztf (not ZTF g/r)"] == 6064
    assert tde.dropped["filter UVW2.uvot (not ZTF g/r)"] == 2292
    assert tde.dropped["filter W1.wise (not ZTF g/r)"] == 1564
    assert sum(tde.dropped.values()) == 103435 - 84043  # all rows minus kept rows
    assert not tde.detected.any()  # forced photometry


def test_manytde_point(tde):
    # AT2018bsi.json: [58217.17, "r.ztf", 0.000201703, 6.266438985494319e-06]
    k = point(tde, "AT2018bsi", 58217.17, "r")
    assert tde.flux[k] == pytest.approx(201703.0, rel=1e-6)
    assert tde.flux_err[k] == pytest.approx(6266.438985494319, rel=1e-6)
    assert (tde.flux < 0).any()  # negative forced fluxes are kept


# -- SLSN-I ------------------------------------------------------------------------------------
def test_slsne_counts_and_dropped(slsne):
    assert len(slsne) == 265
    assert collections.Counter(slsne.label.tolist()) == {"SLSN-I": 265}
    assert int(slsne.offsets[-1]) + sum(slsne.dropped.values()) == 51807  # every row accounted
    assert slsne.dropped["flagged Ignore in the catalogue"] == 9345
    assert slsne.dropped["filter orange"] == 5052  # ATLAS
    assert slsne.dropped["filter G"] == 374  # Gaia
    assert set(slsne.band.tolist()) == {BAND_INDEX[b] for b in "ugrizy"}


def test_slsne_points(slsne):
    # 2018bsz: 58257.0 Mag 15.4438 Raw 16.17 MagErr 0.05 g AB -> observed = Raw
    k = point(slsne, "2018bsz", 58257.0, "g")
    assert slsne.flux[k] == pytest.approx(ab(16.17), rel=1e-6)
    assert slsne.flux_err[k] == pytest.approx(ab(16.17) * LN10_OVER_2_5 * 0.05, rel=1e-6)
    assert slsne.detected[k]
    # 2018avk (EBV 0.011): 58214.3339 Mag 19.2453 Raw nan MagErr 0.14 r AB (ZTF)
    k = point(slsne, "2018avk", 58214.3339, "r")
    assert slsne.flux[k] == pytest.approx(ab(19.2453 + 2.68 * 0.011), rel=1e-6)
    # 2006oz: 54367.02 Mag 24.1009 Raw 24.209 r upper limit (SDSS)
    k = point(slsne, "2006oz", 54367.02, "r")
    assert slsne.flux[k] == 0.0 and not slsne.detected[k]
    assert slsne.flux_err[k] == pytest.approx(ab(24.209) / 5, rel=1e-6)


# -- Open Supernova Catalog ----------------------------------------------------------------------
def test_osc_counts_and_dropped(osc):
    assert len(osc) == 2069
    labels = collections.Counter(osc.label.tolist())
    assert labels["SNIa"] == 1739
    assert labels["SNII"] == 180  # II 131 + II P 47 + II Pec 2
    assert labels["SNIIn"] == 54
    assert labels["SLSN-I"] == 22
    assert sum(labels.values()) == 2069
    assert int(osc.offsets[-1]) + sum(osc.dropped.values()) == 515494  # every row accounted
    assert osc.dropped["band R"] == 34401
    assert osc.dropped["band C"] == 14611
    assert osc.metadata["n_mag_err_imputed"].sum() > 20000  # PS1 Medium Deep detections


def test_osc_points(osc):
    # ASASSN-13cu: r, no system (AB), 16.8001 +- 0.01515 at 56531.4793028785
    k = point(osc, "ASASSN-13cu", 56531.4793028785, "r")
    assert osc.flux[k] == pytest.approx(ab(16.8001), rel=1e-6)
    assert osc.flux_err[k] == pytest.approx(ab(16.8001) * LN10_OVER_2_5 * 0.01515, rel=1e-6)
    # PTF10ops: g Vega 19.837 -> AB 19.757
    k = point(osc, "PTF10ops", 55392.0, "g")
    assert osc.flux[k] == pytest.approx(ab(19.837 - 0.08), rel=1e-6)


def test_osc_without_imputed_errors_drops_and_counts(shared_data, osc):
    strict = read_osc(paths(shared_data)["osc"], missing_mag_err=None)
    imputed = int(osc.metadata["n_mag_err_imputed"].sum())
    assert strict.dropped["detection without magnitude error"] == imputed
    assert int(strict.offsets[-1]) == int(osc.offsets[-1]) - imputed


# -- ALeRCE examples ---------------------------------------------------------------------------
def test_alerce_counts(alerce):
    assert len(alerce) == 30
    assert collections.Counter(alerce.label.tolist()) == {
        "SNIa": 19,
        "SNIbc": 8,
        "SLSN": 2,
        "SNII": 1,
    }
    assert int(alerce.offsets[-1]) == 784 + 635  # detections + non-detections
    assert alerce.dropped == {}
    assert int(alerce.detected.sum()) == 784
    assert int((alerce.flux < 0).sum()) == 1  # the one isdiffpos -1.0 detection


def test_alerce_points(alerce):
    # detection: mjd 58586.476666700095, fid 1, magpsf 20.9083, sigmapsf 0.334612, isdiffpos 1.0
    k = point(alerce, "ZTF18ablhqle", 58586.476666700095, "g")
    assert alerce.flux[k] == pytest.approx(ab(20.9083), rel=1e-6)
    assert alerce.flux_err[k] == pytest.approx(ab(20.9083) * LN10_OVER_2_5 * 0.334612, rel=1e-6)
    # non-detection: jd 2458305.8359491, fid 2, diffmaglim 20.4888
    k = point(alerce, "ZTF18ablhqle", 2458305.8359491 - 2400000.5, "r")
    assert alerce.flux[k] == 0.0 and not alerce.detected[k]
    assert alerce.flux_err[k] == pytest.approx(ab(20.4888) / 5, rel=1e-6)


# -- recognition -----------------------------------------------------------------------------
RECOGNISERS = {
    "ztf_bts": looks_like_ztf_bts,
    "manytde": looks_like_manytde,
    "slsne": looks_like_slsne,
    "osc": looks_like_osc,
    "alerce": looks_like_alerce_examples,
}


@pytest.mark.parametrize("reader", sorted(RECOGNISERS))
def test_looks_like_recognises_own_input_only(shared_data, reader):
    where = paths(shared_data)
    for name, path in where.items():
        assert RECOGNISERS[reader](path) is (name == reader), f"{reader} on {name}"


def test_looks_like_on_single_files(shared_data):
    where = paths(shared_data)
    assert looks_like_ztf_bts(where["ztf_bts"] / "bts.csv")
    assert looks_like_manytde(where["manytde"] / "data" / "sources" / "AT2018bsi.json")
    assert looks_like_osc(where["osc"] / "photometry.parquet")
    assert looks_like_alerce_examples(where["alerce"] / "30_sne_labels.csv")
    assert looks_like_slsne(where["slsne"] / "slsne" / "ref_data" / "sne_data.txt")
    assert not looks_like_manytde(where["ztf_bts"] / "bts.csv")
    assert not looks_like_ztf_bts(where["alerce"] / "30_sne_labels.csv")


# -- the real-sky split ------------------------------------------------------------------------
def test_real_sky_split_is_deterministic_and_order_free(bts):
    mask = real_sky_split(bts.object_id)
    assert 0.25 < mask.mean() < 0.35
    order = np.random.default_rng(1).permutation(len(bts))
    assert np.array_equal(real_sky_split(bts.object_id[order]), mask[order])
    assert np.array_equal(real_sky_split(bts.object_id[:10]), mask[:10])
