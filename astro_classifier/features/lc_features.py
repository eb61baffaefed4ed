"""Light-curve features for the tabular branch, for a whole batch in a few array passes.

Features are computed per band on flux in nJy with its errors, over all points of the band
(detections and forced photometry alike). Their definitions are those of the ``light-curve``
package (Rust; Malanchev et al. 2021), feature by feature: amplitude, beyond 1 std, cusum,
eta, excess variance, inter-percentile range 10 %, kurtosis, linear fit (slope, its sigma,
reduced chi2), maximum slope, mean, median, median absolute deviation, reduced chi2, skew,
standard deviation, Stetson K and weighted mean. The set is chosen for serving cost: all are
O(n) or O(n log n), so no periodogram (what one would cost is measured in
benchmarks/RESULTS.md).

**Why not call the package per object.** ``light_curve.Extractor.many`` computes one light
curve at a time behind a Python list of per-object arrays: about 0.4 ms an object, the wall
of ``classify()`` on a GPU (a model call costs ~3 µs an object there). Here every feature is a
*segment reduction* over the flat point arrays of all objects at once (``np.add.reduceat``,
one stable sort for the median and percentiles), so the cost per object is a few
microseconds and training, batch and stream share this one code path. The package stays the
reference: :func:`reference_light_curve_features` calls it, and a test compares both on
every shared real light curve (``tests/test_lc_features.py``; the tolerance is stated there).

A feature that a band cannot support (fewer than 4 points, or a flat light curve where the
package reports an error) is NaN; the model embeds NaN as "missing" inside the ONNX graph,
so nothing needs imputation at serving time. A few summary columns (detection counts, time
spans, peak S/N) separate transients from variable stars cheaply.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np

from astro_classifier.core.lightcurve import BAND_INDEX, BANDS, LightCurveBatch

_MIN_POINTS = 4  # Kurtosis, the most demanding feature here, needs 4 points
_MIN_ERROR = 1e-3  # nJy; errors must be > 0 (weights are 1 / error^2)
_IPR_QUANTILE = np.float32(0.1)  # InterPercentileRange(0.1); the package works in float32 here

# Names of the per-band features, in column order (the ``light-curve`` extractor's names for
# the same features: a test checks them against the package).
BAND_FEATURE_NAMES = (
    "amplitude", "beyond_1_std", "cusum", "eta", "excess_variance", "inter_percentile_range_10",
    "kurtosis", "linear_fit_slope", "linear_fit_slope_sigma", "linear_fit_reduced_chi2",
    "maximum_slope", "mean", "median", "median_absolute_deviation", "chi2", "skew",
    "standard_deviation", "stetson_K", "weighted_mean",
)  # fmt: skip

SUMMARY_FEATURES = ("n_detections", "detection_span_days", "total_span_days", "max_snr")

# Objects per chunk when ``n_jobs`` > 1 spreads a batch over threads (NumPy's sorts and
# reductions release the GIL, so threads scale without copying the batch to processes).
_CHUNK_OBJECTS = 4096


def band_feature_names() -> list[str]:
    """Names of the per-band light-curve features (before the band suffix)."""
    return list(BAND_FEATURE_NAMES)


def feature_names(bands: Sequence[str]) -> list[str]:
    """All light-curve feature names for a model using ``bands``, in column order."""
    names = [f"{name}_{band}" for band in bands for name in band_feature_names()]
    return names + list(SUMMARY_FEATURES)


def compute_light_curve_features(
    batch: LightCurveBatch, bands: Sequence[str], n_jobs: int = 1
) -> np.ndarray:
    """Light-curve features for every object of ``batch``.

    Returns (N, len(feature_names(bands))) float32; NaN where a band has fewer than 4
    points or a feature is undefined. Points in bands outside ``bands`` are ignored. Points
    are taken in the batch's order, which is time order within each object.
    ``n_jobs`` > 1 computes chunks of objects on that many threads (-1: one per core).
    """
    n = len(batch)
    if n_jobs < 1:
        n_jobs = os.cpu_count() or 1
    if n_jobs > 1 and n > _CHUNK_OBJECTS:
        edges = list(range(0, n, _CHUNK_OBJECTS)) + [n]
        with ThreadPoolExecutor(max_workers=n_jobs) as pool:
            parts = pool.map(
                lambda lo_hi: _features(batch, bands, *lo_hi),
                zip(edges[:-1], edges[1:], strict=True),
            )
            return np.concatenate(list(parts), axis=0)
    return _features(batch, bands, 0, n)


def _features(batch: LightCurveBatch, bands: Sequence[str], lo: int, hi: int) -> np.ndarray:
    """Features of objects ``lo:hi`` of ``batch`` (a view of its point arrays, no copy)."""
    n = hi - lo
    n_band = len(BAND_FEATURE_NAMES)
    out = np.full((n, len(bands) * n_band + len(SUMMARY_FEATURES)), np.nan, np.float32)
    if n == 0:
        return out
    p0, p1 = int(batch.offsets[lo]), int(batch.offsets[hi])
    obj = np.repeat(np.arange(n), np.diff(batch.offsets[lo : hi + 1]))
    band = batch.band[p0:p1]
    time, flux, flux_err = batch.time[p0:p1], batch.flux[p0:p1], batch.flux_err[p0:p1]
    # Points grouped by band, keeping object and time order within a band (a stable sort of
    # int8 keys is a radix sort: one pass), so that each band is one slice.
    by_band = np.argsort(band, kind="stable")
    edges = np.searchsorted(band[by_band], np.arange(len(BANDS) + 1))
    for j, name in enumerate(bands):
        b = BAND_INDEX[name]
        points = by_band[edges[b] : edges[b + 1]]
        counts = np.bincount(obj[points], minlength=n)
        usable = counts >= _MIN_POINTS
        if not usable.any():
            continue
        keep = points[usable[obj[points]]]  # objects with enough points in the band
        out[usable, j * n_band : (j + 1) * n_band] = band_features(
            time[keep], flux[keep], flux_err[keep], counts[usable]
        )
    out[:, len(bands) * n_band :] = _summary_features(
        obj, band, time, flux, flux_err, batch.detected[p0:p1], n, bands
    )
    return out


def band_features(
    time: np.ndarray, flux: np.ndarray, flux_err: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """(K, 19) float64 per-band features of K light curves given as consecutive segments.

    ``time``, ``flux``, ``flux_err`` hold the points of light curve 0, then 1, ... (time
    order within each), ``counts`` (K,) how many points each has (every count >= 4).
    Each feature follows the ``light-curve`` package's definition (names in
    :data:`BAND_FEATURE_NAMES`); standard deviations use N - 1, weights are 1 / error^2.
    """
    k = len(counts)
    t = np.asarray(time, np.float64)
    m = np.asarray(flux, np.float64)
    err = np.maximum(np.asarray(flux_err, np.float64), _MIN_ERROR)
    n = counts.astype(np.float64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    last = starts + counts - 1  # the last point of each light curve
    seg = np.repeat(np.arange(k), counts)

    def totals(*columns: np.ndarray) -> list[np.ndarray]:
        """Per-light-curve sums of several per-point columns in one reduction."""
        return list(np.add.reduceat(np.stack(columns), starts, axis=1))

    # Pass 1: plain and weighted sums (columns written in place, summed in one reduction)
    cols = np.empty((5, len(m)))
    cols[0] = m
    np.multiply(err, err, out=cols[1])
    np.divide(1.0, cols[1], out=cols[2])  # w = 1 / err^2
    w = cols[2]
    np.multiply(w, t, out=cols[3])
    np.multiply(w, m, out=cols[4])
    sum_m, sum_err2, s, sx, sy = np.add.reduceat(cols, starts, axis=1)
    mean = sum_m / n
    weighted_mean = sy / s
    t_mean = sx / s

    # Successive differences within each light curve; the pair that would straddle two
    # curves (from the last point of one) is zeroed for sums and -inf for maxima.
    dm = np.append(np.diff(m), 0.0)
    dt = np.append(np.diff(t), 0.0)
    dm[last] = 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        slopes = np.abs(dm / dt)
    slopes[~np.isfinite(slopes)] = -np.inf  # equal times give no slope, as in the package
    slopes[last] = -np.inf

    # Pass 2: moments about the mean and the weighted mean, the straight line in time
    d = m - mean[seg]
    r = m - weighted_mean[seg]
    tc = t - t_mean[seg]
    cols = np.empty((8, len(m)))
    d2 = np.multiply(d, d, out=cols[0])
    np.multiply(d2, d, out=cols[1])  # d^3
    np.multiply(d2, d2, out=cols[2])  # d^4
    np.multiply(dm, dm, out=cols[3])
    wr = np.multiply(w, r)
    np.multiply(wr, r, out=cols[4])  # w r^2
    np.multiply(np.abs(r), np.sqrt(w), out=cols[5])
    wtc = np.multiply(w, tc)
    np.multiply(wtc, tc, out=cols[6])  # w tc^2
    np.multiply(wtc, m, out=cols[7])  # w tc m
    sum_d2, sum_d3, sum_d4, sum_dm2, chi2_sum, stetson_sum, stt, sty = np.add.reduceat(
        cols, starts, axis=1
    )
    std2 = sum_d2 / (n - 1)
    std = np.sqrt(std2)
    m_max = np.maximum.reduceat(m, starts)
    m_min = np.minimum.reduceat(m, starts)
    # The package reports an error for a flat light curve where a feature divides by its
    # spread; that is NaN here.
    varies = m_max > m_min
    scaled = np.where(varies, std, np.nan)
    slope = sty / stt
    intercept = (sy - sx * slope) / s

    # Pass 3: what needs the line or the standard deviation
    residual = m - intercept[seg] - slope[seg] * t
    beyond_sum, fit_chi2_sum = totals(
        (np.abs(d) > std[seg]).astype(np.float64), w * residual * residual
    )

    # Cumulative sums within each light curve: a global running sum of the centred values,
    # minus its value before the segment starts (the centred sum of a segment is ~0, so the
    # running sum stays small and loses no precision across segments).
    running = np.cumsum(d)
    before = np.concatenate([[0.0], running[last[:-1]]])
    cusum_in = running - before[seg]
    cusum_range = np.maximum.reduceat(cusum_in, starts) - np.minimum.reduceat(cusum_in, starts)

    # Order statistics: flux sorted within each light curve, then |flux - median| sorted
    median, mad, ipr = _order_statistics(m, starts, counts)

    maximum_slope = np.maximum.reduceat(slopes, starts)
    maximum_slope[~np.isfinite(maximum_slope)] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        kurtosis = sum_d4 / np.where(std2 > 0, std2, np.nan) ** 2 * n * (n + 1) / (
            (n - 1) * (n - 2) * (n - 3)
        ) - 3 * (n - 1) ** 2 / ((n - 2) * (n - 3))
        skew = sum_d3 / scaled**3 * n / ((n - 1) * (n - 2))
        excess_variance = (std2 - sum_err2 / n) / mean**2
        cusum = cusum_range / (scaled * n)
        eta = sum_dm2 / (n - 1) / (scaled * scaled)
        stetson_k = stetson_sum / np.sqrt(n * np.where(varies & (chi2_sum > 0), chi2_sum, np.nan))
    beyond = beyond_sum / n
    chi2 = chi2_sum / (n - 1)
    fit_chi2 = fit_chi2_sum / (n - 2)

    return np.stack(
        [
            (m_max - m_min) / 2,  # amplitude
            beyond,
            cusum,
            eta,
            excess_variance,
            ipr,
            kurtosis,
            slope,
            np.sqrt(1.0 / stt),  # linear_fit_slope_sigma
            fit_chi2,
            maximum_slope,
            mean,
            median,
            mad,
            chi2,
            skew,
            std,
            stetson_k,
            weighted_mean,
        ],
        axis=1,
    )


def _order_statistics(
    m: np.ndarray, starts: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median, median absolute deviation and 10-90 % inter-percentile range of each segment.

    Segments become rows of a matrix padded with +inf, one matrix per power-of-two width (so
    padding at most doubles the work), sorted along the rows: NumPy's row sort is 3-4x faster
    than ``np.lexsort((values, segment))`` over the flat arrays. The deviations from each
    row's median are sorted in the same matrices, so nothing returns to the flat layout."""
    k = len(counts)
    median, mad, ipr = np.empty(k), np.empty(k), np.empty(k)
    level = np.ceil(np.log2(np.maximum(counts, 1))).astype(np.int64)  # row width 2**level
    for width_level in np.unique(level):
        rows = np.flatnonzero(level == width_level)
        n = counts[rows]
        first = np.repeat(np.cumsum(n) - n, n)  # where each row's points start in this group
        column = np.arange(int(n.sum())) - first
        points = np.repeat(starts[rows], n) + column
        matrix = np.full((len(rows), 1 << int(width_level)), np.inf)
        matrix[np.repeat(np.arange(len(rows)), n), column] = m[points]
        matrix.sort(axis=1)
        median[rows] = _median_of_rows(matrix, n)
        ipr[rows] = _ppf_of_rows(matrix, n, np.float32(1) - _IPR_QUANTILE) - _ppf_of_rows(
            matrix, n, _IPR_QUANTILE
        )
        deviation = np.abs(matrix - median[rows, None])  # the padding stays +inf
        deviation.sort(axis=1)
        mad[rows] = _median_of_rows(deviation, n)
    return median, mad, ipr


def _median_of_rows(matrix: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Median of the first ``n`` values of each sorted row (mean of the middle two for an
    even count, as the package)."""
    row = np.arange(len(n))
    return 0.5 * (matrix[row, (n - 1) // 2] + matrix[row, n // 2])


def _ppf_of_rows(matrix: np.ndarray, n: np.ndarray, q: np.float32) -> np.ndarray:
    """Quantile ``q`` of the first ``n`` values of each sorted row: the package's R-5
    definition (h = N q - 1/2, linear between neighbours), with h in float32 as there."""
    row = np.arange(len(n))
    h = n.astype(np.float32) * q - np.float32(0.5)
    h_floor = np.floor(h)
    i = np.clip(h_floor, 0, None).astype(np.int64)
    frac = (h - h_floor).astype(np.float64)
    nxt = np.minimum(i + 1, n - 1)
    inner = matrix[row, i] + frac * (matrix[row, nxt] - matrix[row, i])
    return np.where(h_floor < 0, matrix[:, 0], np.where(i >= n - 1, matrix[row, n - 1], inner))


def _summary_features(
    obj: np.ndarray,
    band: np.ndarray,
    time: np.ndarray,
    flux: np.ndarray,
    flux_err: np.ndarray,
    detected: np.ndarray,
    n: int,
    bands: Sequence[str],
) -> np.ndarray:
    """(N, 4): detections, time span of detections, time span of all points, max S/N."""
    in_bands = np.isin(band, [BAND_INDEX[b] for b in bands])
    if not in_bands.all():
        obj, time, flux, flux_err, detected = (
            a[in_bands] for a in (obj, time, flux, flux_err, detected)
        )
    snr = np.abs(flux.astype(np.float64)) / np.maximum(flux_err, _MIN_ERROR)

    def per_object(which: np.ndarray, *reductions: tuple[np.ufunc, np.ndarray]) -> list:
        """Each ``ufunc`` reduced over each object's values (NaN for an object with none);
        points are grouped by object, so one ``reduceat`` over the non-empty groups."""
        counts = np.bincount(which, minlength=n)
        has = counts > 0
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[has]
        out = []
        for ufunc, values in reductions:
            column = np.full(n, np.nan)
            if len(starts):
                column[has] = ufunc.reduceat(values, starts)
            out.append(column)
        return out

    first, last, max_snr = per_object(
        obj, (np.minimum, time), (np.maximum, time), (np.maximum, snr)
    )
    first_det, last_det = per_object(
        obj[detected], (np.minimum, time[detected]), (np.maximum, time[detected])
    )
    n_det = np.bincount(obj[detected], minlength=n).astype(np.float64)
    return np.stack([n_det, last_det - first_det, last - first, max_snr], axis=1)


# -- the reference: the light-curve package itself ----------------------------------------


@lru_cache(maxsize=1)
def _band_extractor() -> Any:
    """The ``light_curve.Extractor`` of the same per-band features (imported on first use)."""
    import light_curve as lc

    return lc.Extractor(
        lc.Amplitude(),
        lc.BeyondNStd(1.0),
        lc.Cusum(),
        lc.Eta(),
        lc.ExcessVariance(),
        lc.InterPercentileRange(float(_IPR_QUANTILE)),
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


def reference_light_curve_features(
    batch: LightCurveBatch, bands: Sequence[str], n_jobs: int = 1
) -> np.ndarray:
    """The same features from the ``light-curve`` package, one light curve at a time.

    The reference :func:`compute_light_curve_features` is tested against (and the rate it
    is compared with in ``benchmarks/feature_throughput.py``); not used for serving."""
    extractor = _band_extractor()
    n_band = len(BAND_FEATURE_NAMES)
    n = len(batch)
    out = np.full((n, len(bands) * n_band + len(SUMMARY_FEATURES)), np.nan, np.float32)
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
        curves = [
            (
                t[starts[k] : starts[k + 1]],
                f[starts[k] : starts[k + 1]].astype(np.float64),
                np.maximum(e[starts[k] : starts[k + 1]].astype(np.float64), _MIN_ERROR),
            )
            for k in usable
        ]
        values = extractor.many(curves, fill_value=np.nan, sorted=True, check=False, n_jobs=n_jobs)
        out[usable, j * n_band : (j + 1) * n_band] = values
    out[:, len(bands) * n_band :] = compute_light_curve_features(batch, bands)[
        :, len(bands) * n_band :
    ]
    return out
