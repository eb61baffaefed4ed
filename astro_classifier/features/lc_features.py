"""Light-curve features for the tabular branch, from the ``light-curve`` package (Rust).

Features are computed per band on flux in nJy with its errors, over all points of the band
(detections and forced photometry alike). The set is chosen for serving cost: everything
here is O(n) or O(n log n) per light curve, so no periodogram (what one would cost is
measured in benchmarks/RESULTS.md). A few summary columns come from numpy: detection counts and time spans, which separate
transients from variable stars cheaply.

A feature that a band cannot support (too few points) is NaN; the model embeds NaN as
"missing" inside the ONNX graph, so nothing needs imputation at serving time.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from astro_classifier.core.lightcurve import BAND_INDEX, LightCurveBatch

# Names of the per-band features produced by `_band_extractor`, in order.
_MIN_POINTS = 4  # Kurtosis, the most demanding feature here, needs 4 points


@lru_cache(maxsize=1)
def _band_extractor() -> Any:
    """The ``light_curve.Extractor`` of the per-band features (imported on first use)."""
    import light_curve as lc

    return lc.Extractor(
        lc.Amplitude(),
        lc.BeyondNStd(1.0),
        lc.Cusum(),
        lc.Eta(),
        lc.ExcessVariance(),
        lc.InterPercentileRange(0.1),
        lc.Kurtosis(),
        lc.LinearFit(),
        lc.MaximumSlope(),
        lc.Mean(),
        lc.Median(),
        lc.MedianAbsoluteDeviation(),
        lc.ReducedChi2(),
        lc.Skew(),
        lc.StandardDeviation(),
        lc.StetsonK(),
        lc.WeightedMean(),
    )


# The names `_band_extractor().names` gives, kept here so that naming the features needs no
# light-curve import (training on precomputed features runs without it); a test checks them.
BAND_FEATURE_NAMES = (
    "amplitude", "beyond_1_std", "cusum", "eta", "excess_variance", "inter_percentile_range_10",
    "kurtosis", "linear_fit_slope", "linear_fit_slope_sigma", "linear_fit_reduced_chi2",
    "maximum_slope", "mean", "median", "median_absolute_deviation", "chi2", "skew",
    "standard_deviation", "stetson_K", "weighted_mean",
)  # fmt: skip


def band_feature_names() -> list[str]:
    """Names of the per-band ``light-curve`` features (before the band suffix)."""
    return list(BAND_FEATURE_NAMES)


SUMMARY_FEATURES = ("n_detections", "detection_span_days", "total_span_days", "max_snr")


def feature_names(bands: Sequence[str]) -> list[str]:
    """All light-curve feature names for a model using ``bands``, in column order."""
    names = [f"{name}_{band}" for band in bands for name in band_feature_names()]
    return names + list(SUMMARY_FEATURES)


def compute_light_curve_features(
    batch: LightCurveBatch, bands: Sequence[str], n_jobs: int = 1
) -> np.ndarray:
    """Light-curve features for every object of ``batch``.

    Returns (N, len(feature_names(bands))) float32; NaN where a band has fewer than 4
    points or a feature is undefined. Points in bands outside ``bands`` are ignored.
    """
    extractor = _band_extractor()
    n_band_features = len(extractor.names)
    n = len(batch)
    out = np.full((n, len(bands) * n_band_features + len(SUMMARY_FEATURES)), np.nan, np.float32)
    if n == 0:
        return out
    obj = batch.point_object_index()
    for j, band in enumerate(bands):
        in_band = batch.band == BAND_INDEX[band]
        counts = np.bincount(obj[in_band], minlength=n)
        usable = np.flatnonzero(counts >= _MIN_POINTS)
        if len(usable) == 0:
            continue
        t, f, e = batch.time[in_band], batch.flux[in_band], batch.flux_err[in_band]
        starts = np.concatenate([[0], np.cumsum(counts)])
        # The Rust extractor wants float64 arrays per light curve; errors must be > 0.
        curves = [
            (
                t[starts[k] : starts[k + 1]],
                f[starts[k] : starts[k + 1]].astype(np.float64),
                np.maximum(e[starts[k] : starts[k + 1]].astype(np.float64), 1e-3),
            )
            for k in usable
        ]
        values = extractor.many(curves, fill_value=np.nan, sorted=True, check=False, n_jobs=n_jobs)
        out[usable, j * n_band_features : (j + 1) * n_band_features] = values
    out[:, len(bands) * n_band_features :] = _summary_features(batch, bands)
    return out


def _summary_features(batch: LightCurveBatch, bands: Sequence[str]) -> np.ndarray:
    """(N, 4): detections, time span of detections, time span of all points, max S/N."""
    n = len(batch)
    in_bands = np.isin(batch.band, [BAND_INDEX[b] for b in bands])
    obj = batch.point_object_index()[in_bands]
    t = batch.time[in_bands]
    det = batch.detected[in_bands]
    snr = np.abs(batch.flux[in_bands]) / np.maximum(batch.flux_err[in_bands], 1e-3)

    def span(mask: np.ndarray) -> np.ndarray:
        lo = np.full(n, np.inf)
        hi = np.full(n, -np.inf)
        np.minimum.at(lo, obj[mask], t[mask])
        np.maximum.at(hi, obj[mask], t[mask])
        return np.where(np.isfinite(lo), hi - lo, np.nan)

    max_snr = np.full(n, np.nan)
    if len(obj):
        max_snr_filled = np.full(n, -np.inf)
        np.maximum.at(max_snr_filled, obj, snr)
        max_snr = np.where(np.isfinite(max_snr_filled), max_snr_filled, np.nan)
    n_det = np.bincount(obj[det], minlength=n).astype(np.float64)
    return np.stack([n_det, span(det), span(np.ones_like(det)), max_snr], axis=1)
