"""Processings (astro_classifier.data.render): exact rules on hand-made curves, one real set."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from astro_classifier.core.lightcurve import BAND_INDEX, LightCurveBatch
from astro_classifier.features.render import (
    ALERT_HISTORY_DAYS,
    PROCESSINGS,
    RUBIN_HISTORY_DAYS,
    cap_history,
    difference_flux,
    night_of,
    nightly_bin,
    render,
    render_random,
    significant,
)
from tests.builders import make_batch

T0 = 59000.3  # mid-night at Palomar (MJD fraction 0.3)
G, R = BAND_INDEX["g"], BAND_INDEX["r"]


def _transient() -> LightCurveBatch:
    """Forced-photometry-like transient: noise for 60 days, then a rise and decline; a
    second object with nothing significant; a third without points."""
    pts = []
    for day in range(0, 200, 2):
        band = "g" if day % 4 == 0 else "r"
        signal = 0.0 if day < 60 else 400.0 * np.exp(-abs(day - 90) / 30.0)
        noise = 3.0 * np.sin(day)  # deterministic, below 5 sigma
        pts.append((T0 + day, band, signal + noise, 10.0, False))
    faint = [(T0 + d, "g", 20.0 + d, 10.0, False) for d in (0.0, 3.0, 6.0)]
    batch = make_batch({"sn": pts, "faint": faint, "empty": []}, {"redshift": [0.1, 0.2, 0.3]})
    return dataclasses.replace(
        batch,
        label=np.array(["SN Ia", "TDE", "AGN"]),
        alert_id=np.array(["a1", None, "a3"], dtype=object),
    )


def _random_batch(n: int = 40, seed: int = 3) -> LightCurveBatch:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 60, n)
    lengths[0] = 1
    obj = np.repeat(np.arange(n), lengths)
    p = len(obj)
    err = rng.uniform(5, 20, p)
    flux = rng.normal(0, 1, p) * err + np.where(rng.random(p) < 0.3, 150.0, 0.0)
    return LightCurveBatch.from_points(
        object_id=obj.astype(str),
        time=T0 + rng.uniform(0, 900, p),
        band=rng.integers(0, 6, p),
        flux=flux,
        flux_err=err,
        detected=rng.random(p) < 0.1,
        objects=np.arange(n).astype(str),
        metadata={"ra": rng.uniform(0, 360, n)},
        label=np.array([f"class{i % 3}" for i in range(n)]),
    )


def _points(batch: LightCurveBatch, k: int) -> dict[str, np.ndarray]:
    s = slice(batch.offsets[k], batch.offsets[k + 1])
    return {
        "time": batch.time[s],
        "band": batch.band[s],
        "flux": batch.flux[s],
        "flux_err": batch.flux_err[s],
        "detected": batch.detected[s],
    }


def _same(a: LightCurveBatch, b: LightCurveBatch) -> None:
    for name in ("object_id", "offsets", "time", "band", "flux", "flux_err", "detected"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.metadata.keys() == b.metadata.keys()
    for key in a.metadata:
        np.testing.assert_array_equal(a.metadata[key], b.metadata[key])
    for name in ("label", "alert_id"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None)
        if x is not None:
            assert x.tolist() == y.tolist()


# -- alert ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(20))
def test_alert_window_and_limits(seed: int) -> None:
    batch = _transient()
    out = render(batch, "alert", np.random.default_rng(seed))
    src, got = _points(batch, 0), _points(out, 0)
    sig = significant(batch)[: batch.offsets[1]]
    first = src["time"][sig].min()
    assert got["time"].min() >= first - ALERT_HISTORY_DAYS
    alert_time = got["time"].max()
    assert got["detected"][-1]  # the alert is a detection
    # exactly the input points in [first - 30 d, alert time] are kept, none after it
    window = (src["time"] >= first - ALERT_HISTORY_DAYS) & (src["time"] <= alert_time)
    np.testing.assert_array_equal(got["time"], src["time"][window])
    np.testing.assert_array_equal(got["flux_err"], src["flux_err"][window])
    np.testing.assert_array_equal(got["detected"], sig[window])
    # detections keep their flux; the rest are limits: flux 0, error = limit / 5 (kept)
    np.testing.assert_array_equal(got["flux"], np.where(sig[window], src["flux"][window], 0.0))
    assert not got["detected"][got["flux"] == 0].any()


def test_alert_time_is_random() -> None:
    batch = _transient()
    ends = set()
    for seed in range(40):
        out = render(batch, "alert", np.random.default_rng(seed))
        ends.add(_points(out, 0)["time"].max())
    assert len(ends) > 5


def test_object_without_detection_keeps_its_brightest_point() -> None:
    batch = _transient()
    for name in PROCESSINGS:
        out = render(batch, name, np.random.default_rng(0), baseline=True)
        faint = _points(out, 1)
        assert len(faint["time"]) >= 1, name
        assert out.lengths[2] == 0, name  # no points in, none out
    out = render(batch, "detections", np.random.default_rng(0))
    assert _points(out, 1)["time"].tolist() == [T0 + 6.0]  # flux 26, the brightest


# -- forced --------------------------------------------------------------------------------
def test_forced_without_baseline_keeps_every_epoch() -> None:
    batch = _transient()
    out = render(batch, "forced", np.random.default_rng(0))
    np.testing.assert_array_equal(out.time, batch.time)
    np.testing.assert_array_equal(out.flux, batch.flux)
    np.testing.assert_array_equal(out.detected, significant(batch))


@pytest.mark.parametrize("seed", range(5))
def test_forced_baseline_before_first_point(seed: int) -> None:
    batch = _transient()
    out = render(batch, "forced", np.random.default_rng(seed), baseline=np.array([1, 0, 1], bool))
    src, got = _points(batch, 0), _points(out, 0)
    first = src["time"][0]
    new = got["time"] < first
    n_new = int(new.sum())
    assert 100 // 3 <= n_new <= 1000 // 3
    # original epochs unchanged, baseline strictly before them, cadence ~3 d
    np.testing.assert_array_equal(got["time"][~new], src["time"])
    np.testing.assert_array_equal(got["flux"][~new], src["flux"])
    span = first - got["time"][new].min()
    assert 100 - 3 <= span <= 1000 + 1
    gaps = np.diff(got["time"][new])
    assert gaps.min() >= 1.0 - 1e-9 and gaps.max() <= 5.0 + 1e-9
    # bands alternate over the object's bands; noise sigma = median error of that band
    assert set(got["band"][new].tolist()) == {G, R}
    assert (got["band"][new][1:] != got["band"][new][:-1]).all()
    np.testing.assert_array_equal(got["flux_err"][new], 10.0)
    # zero-mean noise: |mean| within 5 standard errors
    assert abs(got["flux"][new].mean()) < 5 * 10.0 / np.sqrt(n_new)
    assert 5.0 < got["flux"][new].std() < 15.0
    assert out.lengths[1] == batch.lengths[1]  # baseline=False for this object


# -- detections, sparse, rubin ----------------------------------------------------------------
def test_detections_keep_only_detected() -> None:
    batch = _random_batch()
    out = render(batch, "detections", np.random.default_rng(0))
    keep = significant(batch) & (batch.flux > 0)
    for k in range(len(batch)):
        mine = keep[batch.offsets[k] : batch.offsets[k + 1]]
        got, src = _points(out, k), _points(batch, k)
        if mine.any():
            np.testing.assert_array_equal(got["time"], src["time"][mine])
            np.testing.assert_array_equal(got["flux"], src["flux"][mine])
            assert got["detected"].all()
        else:
            assert len(got["time"]) == min(1, len(src["time"]))  # the brightest point


def test_sparse_keeps_whole_nights() -> None:
    days = [(T0 + d + h, "g", 100.0, 10.0, True) for d in range(100) for h in (0.0, 0.05)]
    batch = make_batch({"a": days})
    out = render(batch, "sparse", np.random.default_rng(1))
    nights, counts = np.unique(night_of(out.time), return_counts=True)
    assert (counts == 2).all()  # a night is kept whole
    assert 15 <= len(nights) <= 75  # 30-60 % of 100 nights, with sampling noise


def test_rubin_cadence_and_history() -> None:
    batch = _random_batch()
    out = render(batch, "rubin", np.random.default_rng(0))
    sig = significant(batch)
    for k in range(len(out)):
        got = _points(out, k)
        src_sig = sig[batch.offsets[k] : batch.offsets[k + 1]]
        if src_sig.any():
            first = _points(batch, k)["time"][src_sig].min()
            assert got["time"].min() >= first - RUBIN_HISTORY_DAYS
        for band in np.unique(got["band"]):
            nights = np.sort(night_of(got["time"][got["band"] == band]))
            # one visit per band per 3-night window: distinct nights, few enough of them
            assert (np.diff(nights) >= 1).all()
            assert len(nights) <= (nights[-1] - nights[0]) // 3 + 2
    # sub-5-sigma points keep their flux (forced sources): no limits invented
    assert np.isin(out.flux, batch.flux).all()


# -- every processing ----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PROCESSINGS))
def test_processing_keeps_objects_and_never_mutates(name: str) -> None:
    batch = _random_batch()
    before = copy.deepcopy(batch)
    out = render(batch, name, np.random.default_rng(7), baseline=True)
    _same(batch, before)  # input untouched
    assert out.object_id.tolist() == batch.object_id.tolist()
    assert out.label.tolist() == batch.label.tolist()
    np.testing.assert_array_equal(out.metadata["ra"], batch.metadata["ra"])
    assert ((out.lengths > 0) == (batch.lengths > 0)).all()  # nobody loses every point
    for k in range(len(out)):  # time order within objects
        assert (np.diff(_points(out, k)["time"]) >= 0).all()
    again = render(batch, name, np.random.default_rng(7), baseline=True)
    _same(out, again)  # deterministic for a seed
    out.flux[:] = -1.0
    out.metadata["ra"][:] = -1.0
    _same(batch, before)  # the output shares no arrays with the input


def test_render_random() -> None:
    batch = _random_batch(60)
    out, names = render_random(batch, np.random.default_rng(5), baseline=True)
    assert out.object_id.tolist() == batch.object_id.tolist()
    assert set(names.tolist()) <= set(PROCESSINGS) and len(set(names.tolist())) > 3
    out2, names2 = render_random(batch, np.random.default_rng(5), baseline=True)
    _same(out, out2)
    assert names.tolist() == names2.tolist()
    only, which = render_random(
        batch, np.random.default_rng(0), ["as-read", "alert"], weights=[1.0, 0.0]
    )
    assert set(which.tolist()) == {"as-read"}
    np.testing.assert_array_equal(only.flux, batch.flux)
    with pytest.raises(ValueError):
        render(batch, "nonsense", np.random.default_rng(0))


# -- binning, capping, difference flux -------------------------------------------------------
def test_nightly_bin_weighted_mean() -> None:
    batch = make_batch(
        {
            "a": [
                (T0, "g", 100.0, 10.0, False),
                (T0 + 0.1, "g", 130.0, 20.0, True),
                (T0 + 0.05, "r", 50.0, 5.0, False),
                (T0 + 1.0, "g", 80.0, 8.0, False),
            ]
        }
    )
    out = nightly_bin(batch)
    assert out.lengths.tolist() == [3]
    w = np.array([1 / 100, 1 / 400])
    g = (out.band == G) & (out.time < T0 + 0.5)
    assert out.flux[g][0] == pytest.approx((w @ [100.0, 130.0]) / w.sum(), rel=1e-6)
    assert out.flux_err[g][0] == pytest.approx(1 / np.sqrt(w.sum()), rel=1e-6)
    assert out.time[g][0] == pytest.approx(T0 + w[1] * 0.1 / w.sum(), abs=1e-9)
    assert out.detected[g][0]  # any
    r = out.band == R
    assert (out.flux[r][0], out.flux_err[r][0], out.time[r][0]) == (50.0, 5.0, T0 + 0.05)
    assert (np.diff(out.time) >= 0).all()


def test_cap_history_keeps_latest() -> None:
    batch = make_batch(
        {"a": [(T0 + d, "g", d, 1.0, False) for d in range(10)], "b": [(T0, "r", 1.0, 1.0, True)]}
    )
    out = cap_history(batch, 3)
    assert out.lengths.tolist() == [3, 1]
    assert out.flux[:3].tolist() == [7.0, 8.0, 9.0]


def test_difference_flux() -> None:
    batch = make_batch(
        {
            "q": [
                (T0, "g", 1000.0, 10.0, True),
                (T0 + 1, "g", 1100.0, 10.0, True),
                (T0 + 2, "g", 1020.0, 10.0, True),
                (T0 + 3, "r", 500.0, 10.0, True),
            ]
        }
    )
    out = difference_flux(batch)
    assert out.flux.tolist() == [-20.0, 80.0, 0.0, 0.0]
    assert out.detected.tolist() == [False, True, False, False]
    np.testing.assert_array_equal(out.flux_err, batch.flux_err)
    ref = difference_flux(batch, np.random.default_rng(0))
    assert (ref.flux[:3] == 0).sum() == 1  # one g epoch is the reference
    assert ref.flux[3] == 0.0


# -- real data ------------------------------------------------------------------------------
def test_real_manytde_processings(shared_data: Path) -> None:
    from astro_classifier.formats.registry import read_light_curves

    batch = read_light_curves(shared_data / "lightcurves" / "manytde" / "data" / "sources")
    assert len(batch) > 50
    rng = np.random.default_rng(0)
    for name in PROCESSINGS:
        out = render(batch, name, rng, baseline=True)
        assert isinstance(out, LightCurveBatch)  # built through the validating constructor
        assert out.object_id.tolist() == batch.object_id.tolist()
        assert ((out.lengths > 0) == (batch.lengths > 0)).all(), name
        assert np.isfinite(out.flux).all() and (out.flux_err > 0).all(), name
    binned = nightly_bin(batch)
    assert binned.offsets[-1] < batch.offsets[-1]
    assert ((binned.lengths > 0) == (batch.lengths > 0)).all()
    assert len(np.unique(night_of(binned.time) * 8 + binned.band)) <= binned.offsets[-1]
    mixed, names = render_random(batch, rng, baseline=True)
    assert len(mixed) == len(batch) == len(names)
