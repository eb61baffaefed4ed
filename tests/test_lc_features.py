"""Light-curve features: names agree with the light-curve package, NaN rules, real objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from astro_classifier.core.lightcurve import BAND_INDEX, LightCurveBatch
from astro_classifier.features.lc_features import (
    SUMMARY_FEATURES,
    _band_extractor,
    band_feature_names,
    compute_light_curve_features,
    feature_names,
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
