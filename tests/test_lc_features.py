"""Light-curve features: names agree with the light-curve package, NaN rules, real objects,
and the array implementation equals the package on every shared real light curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from astro_classifier.core.lightcurve import BAND_INDEX, LightCurveBatch
from astro_classifier.features.lc_features import (
    SUMMARY_FEATURES,
    _band_extractor,
    band_feature_names,
    band_features,
    compute_light_curve_features,
    feature_names,
    reference_light_curve_features,
)
from astro_classifier.formats.plasticc import read_plasticc
from tests.builders import make_batch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "plasticc"
N_BAND = len(band_feature_names())


def _points(band: str, n: int, start: float = 0.0) -> list[tuple]:
    rng = np.random.default_rng(n)
    return [
        (start + 1.7 * k, band, 1000.0 + 300.0 * rng.normal(), 20.0 + k, k % 2 == 0)
        for k in range(n)
    ]


def _columns(band: str, bands: tuple[str, ...]) -> slice:
    j = bands.index(band)
    return slice(j * N_BAND, (j + 1) * N_BAND)


def test_band_feature_names_equal_the_light_curve_extractor_names() -> None:
    assert band_feature_names() == list(_band_extractor().names)


def test_feature_names_are_per_band_then_summary() -> None:
    names = feature_names(("g", "r"))
    assert len(names) == 2 * N_BAND + len(SUMMARY_FEATURES)
    assert names[:N_BAND] == [f"{n}_g" for n in band_feature_names()]
    assert names[N_BAND : 2 * N_BAND] == [f"{n}_r" for n in band_feature_names()]
    assert names[2 * N_BAND :] == list(SUMMARY_FEATURES)


def test_band_with_fewer_than_four_points_gives_nan() -> None:
    bands = ("g", "r")
    batch = make_batch({"a": _points("g", 3) + _points("r", 4), "b": _points("g", 4)})
    out = compute_light_curve_features(batch, bands)
    assert out.shape == (2, len(feature_names(bands))) and out.dtype == np.float32
    assert np.isnan(out[0, _columns("g", bands)]).all()  # 3 points
    assert np.isfinite(out[0, _columns("r", bands)]).any()  # 4 points: computed
    assert np.isfinite(out[1, _columns("g", bands)]).any()
    assert np.isnan(out[1, _columns("r", bands)]).all()  # no points


def test_band_values_equal_a_direct_extractor_call() -> None:
    points = _points("r", 12) + _points("g", 9, start=0.3)
    out = compute_light_curve_features(make_batch({"a": points}), ("g", "r"))
    r = [p for p in points if p[1] == "r"]
    t = np.array([p[0] for p in r])
    f = np.array([p[2] for p in r], np.float32).astype(np.float64)
    e = np.array([p[3] for p in r], np.float32).astype(np.float64)
    expected = _band_extractor()(t, f, e, fill_value=np.nan)
    np.testing.assert_allclose(out[0, _columns("r", ("g", "r"))], expected, rtol=1e-6)


def test_points_outside_the_requested_bands_change_nothing() -> None:
    base = _points("g", 8)
    extra = base + _points("u", 6, start=0.5) + _points("y", 5, start=0.2)
    a = compute_light_curve_features(make_batch({"a": base}), ("g",))
    b = compute_light_curve_features(make_batch({"a": extra}), ("g",))
    np.testing.assert_array_equal(a, b)


def test_summary_features() -> None:
    points = [
        (10.0, "g", 0.0, 10.0, False),
        (12.0, "r", 100.0, 10.0, True),  # S/N 10
        (15.0, "g", -500.0, 10.0, True),  # S/N 50 (absolute)
        (19.0, "r", 30.0, 10.0, False),
        (30.0, "u", 9000.0, 1.0, True),  # outside the bands: ignored
    ]
    out = compute_light_curve_features(make_batch({"a": points, "empty": []}), ("g", "r"))
    summary = dict(zip(SUMMARY_FEATURES, out[0, -len(SUMMARY_FEATURES) :].tolist(), strict=True))
    assert summary == {
        "n_detections": 2.0,
        "detection_span_days": 3.0,
        "total_span_days": 9.0,
        "max_snr": 50.0,
    }
    empty = out[1, -len(SUMMARY_FEATURES) :]
    assert empty[0] == 0.0 and np.isnan(empty[1:]).all()


def test_emptymake_batch() -> None:
    batch = make_batch({})
    assert compute_light_curve_features(batch, ("g",)).shape == (0, N_BAND + 4)


@pytest.fixture(scope="module")
def plasticc_examples() -> LightCurveBatch:
    return read_plasticc(EXAMPLES / "lightcurves.csv", EXAMPLES / "metadata.csv")


def test_real_plasticc_object_features_are_finite(plasticc_examples: LightCurveBatch) -> None:
    bands = ("u", "g", "r", "i", "z", "y")
    out = compute_light_curve_features(plasticc_examples, bands)
    assert out.shape == (len(plasticc_examples), len(feature_names(bands)))
    obj = plasticc_examples.point_object_index()
    for k in range(len(plasticc_examples)):
        for band in bands:
            n = int(((obj == k) & (plasticc_examples.band == BAND_INDEX[band])).sum())
            values = out[k, _columns(band, bands)]
            if n >= 4:  # enough points: every per-band feature is defined
                assert np.isfinite(values).all(), (plasticc_examples.object_id[k], band)
            else:
                assert np.isnan(values).all()
        # Every example object has detections, so every summary feature is finite.
        assert np.isfinite(out[k, -len(SUMMARY_FEATURES) :]).all()
    # The first example object (SN Ia 22901) has >= 30 points in every band.
    assert np.isfinite(out[0]).all()
    detected = plasticc_examples.detected[obj == 0]
    assert out[0, feature_names(bands).index("n_detections")] == detected.sum()


# -- the array implementation against the light-curve package -------------------------------

# The stated tolerance: every value within 1e-4 relative (1e-6 absolute near zero) of the
# package's, NaN exactly where the package gives NaN. Both compute in float64 and round to
# float32; the differences are summation order (pairwise in NumPy, sequential in Rust), which
# matters only for a fit whose chi2 is ~1e-23 (an exact line through few points) or a slope
# over a long baseline (a few 1e-5 relative at most on the shared data).
RTOL, ATOL = 1e-4, 1e-6


def assert_equal_to_package(batch: LightCurveBatch, bands: tuple[str, ...], what: str) -> None:
    ours = compute_light_curve_features(batch, bands)
    package = reference_light_curve_features(batch, bands)
    names = feature_names(bands)
    nan_differs = np.isnan(ours) != np.isnan(package)
    assert not nan_differs.any(), (
        what,
        [names[j] for j in np.flatnonzero(nan_differs.any(axis=0))],
    )
    close = np.isclose(ours, package, rtol=RTOL, atol=ATOL, equal_nan=True)
    bad = np.argwhere(~close)
    assert not len(bad), (
        what,
        [(names[j], float(ours[i, j]), float(package[i, j])) for i, j in bad[:5]],
    )


def test_one_flat_and_one_short_curve_give_the_package_nans() -> None:
    """Flat flux (std 0): cusum, eta, kurtosis, skew, Stetson K are NaN in both."""
    flat = [(float(k), "g", 500.0, 10.0, True) for k in range(6)]
    batch = make_batch({"flat": flat, "ok": _points("g", 7), "short": _points("g", 3)})
    assert_equal_to_package(batch, ("g",), "flat")
    out = compute_light_curve_features(batch, ("g",))
    names = band_feature_names()
    for name in ("cusum", "eta", "kurtosis", "skew", "stetson_K"):
        assert np.isnan(out[0, names.index(name)]), name
    assert out[0, names.index("mean")] == 500.0


def test_equal_times_give_no_slope() -> None:
    """Two points at the same time: their pair has no slope (the package skips it)."""
    points = [(1.0, "r", 10.0, 1.0, True), (1.0, "r", 30.0, 1.0, True)] + [
        (2.0 + k, "r", 10.0 * k, 1.0, True) for k in range(4)
    ]
    batch = make_batch({"a": points})
    out = compute_light_curve_features(batch, ("r",))
    assert out[0, band_feature_names().index("maximum_slope")] == pytest.approx(30.0)  # 30 -> 0
    assert_equal_to_package(batch, ("r",), "equal times")


def test_band_features_of_segments_equal_one_at_a_time() -> None:
    """The segment reductions do not mix neighbouring light curves."""
    rng = np.random.default_rng(3)
    counts = rng.integers(4, 40, size=50)
    t = np.concatenate([np.sort(rng.uniform(0, 100, c)) for c in counts])
    f = rng.normal(1000, 300, counts.sum())
    e = rng.uniform(5, 50, counts.sum())
    together = band_features(t, f, e, counts)
    starts = np.concatenate([[0], np.cumsum(counts)])
    for k in range(len(counts)):
        s = slice(starts[k], starts[k + 1])
        alone = band_features(t[s], f[s], e[s], counts[k : k + 1])
        np.testing.assert_allclose(together[k], alone[0], rtol=1e-12, atol=1e-12)


def test_threads_give_the_same_features(plasticc_examples: LightCurveBatch) -> None:
    import astro_classifier.features.lc_features as lc_features

    batch = plasticc_examples.select(np.arange(200) % len(plasticc_examples))
    bands = ("u", "g", "r", "i", "z", "y")
    one = compute_light_curve_features(batch, bands)
    chunk = lc_features._CHUNK_OBJECTS
    try:
        lc_features._CHUNK_OBJECTS = 16  # several chunks from a small batch
        many = compute_light_curve_features(batch, bands, n_jobs=2)
    finally:
        lc_features._CHUNK_OBJECTS = chunk
    np.testing.assert_array_equal(one, many)


def _real_light_curve_sets(data: Path) -> dict[str, LightCurveBatch]:
    """Every real light-curve set of the shared data, read as the training and serving
    paths read it (and PLAsTiCC, the simulation models train on)."""
    from astro_classifier.catalogs.alerce_examples import read_alerce_examples
    from astro_classifier.catalogs.antares_bts import read_antares_bts
    from astro_classifier.catalogs.eros1 import read_eros1
    from astro_classifier.catalogs.manytde import read_manytde
    from astro_classifier.catalogs.osc import read_osc
    from astro_classifier.catalogs.slsne import read_slsne
    from astro_classifier.catalogs.tdss import read_tdss_quasars
    from astro_classifier.catalogs.ztf_bts import read_ztf_bts
    from astro_classifier.formats.registry import read_light_curves

    lcs = data / "lightcurves"
    alerts = data / "alerts"
    return {
        "ZTF alerts": read_light_curves(sorted((alerts / "ztf").rglob("*.avro"))),
        "Rubin alerts (Avro)": read_light_curves(sorted((alerts / "lsst" / "fink-v7.4").glob("*.avro"))),
        "Rubin alerts (Parquet)": read_light_curves([alerts / "lsst" / "fink-v10.0.parquet"]),
        "ELAsTiCC alerts": read_light_curves(sorted((alerts / "elasticc").rglob("*.avro"))),
        "ZTF BTS SN Ia": read_ztf_bts(lcs / "ztf-bts-snia"),
        "ZTF BTS (ANTARES)": read_antares_bts(lcs / "ztf-bts-antares"),
        "ALeRCE examples": read_alerce_examples(lcs / "alerce-examples"),
        "SLSNe": read_slsne(lcs / "slsne"),
        "manyTDE": read_manytde(lcs / "manytde"),
        "TDSS quasars": read_tdss_quasars(lcs / "tdss-quasars"),
        "EROS-1": read_eros1(
            lcs / "eros1" / "train.csv", lcs / "eros1" / "train_varlength_features.csv.gz"
        ),
        "OSC supernovae": read_osc(data / "multimodal" / "osc-sne"),
        "PLAsTiCC training": read_plasticc(
            lcs / "plasticc" / "plasticc_train_lightcurves.csv.gz",
            lcs / "plasticc" / "plasticc_train_metadata.csv.gz",
        ),
    }  # fmt: skip


def test_equal_to_the_package_on_every_shared_real_light_curve(shared_data: Path) -> None:
    from astro_classifier.core.lightcurve import BANDS

    sets = _real_light_curve_sets(shared_data)
    for what, batch in sets.items():
        assert len(batch) > 0, what
        assert_equal_to_package(batch, tuple(BANDS), what)
