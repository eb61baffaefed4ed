"""Spectra onto a model's wavelength grid: one resampling and one normalisation, the same in
training and serving (numpy only).

Resampling (:func:`resample`): **flux-conserving**: each grid bin gets the exact integral of
the linearly interpolated flux density over the part of the bin the spectrum covers, divided
by the covered width; a bin less than half covered is NaN (no data). The error of a bin is
the RMS native error over the bin divided by sqrt(number of native pixels in the bin, at
least 1), i.e. independent pixels averaged. The grid is ``spectrum_grid`` = (first centre,
last centre, bins) in Å, linear, observer frame (as :class:`ClipConfig` holds it).

Normalisation (:func:`normalise`): flux and error divided by the RMS of the flux over the
grid, bins without data counting as 0 (NaN stays NaN in the output). The CLIP spectrum tower
applies the same formula in the ONNX graph (it is idempotent: a normalised spectrum has RMS
1), so serving may feed :func:`model_input`'s output or a raw resampled spectrum alike; the
float64 normalisation here keeps fluxes of 1e-19 erg/s/cm^2/Å clear of float32 underflow.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from astro_classifier.core.counts import count
from astro_classifier.core.spectra import Spectra

MIN_COVERAGE = 0.1  # share of the model grid a spectrum must cover to be used


def grid_centres(grid: Sequence[float]) -> np.ndarray:
    """Bin centres (Å) of ``grid`` = (first centre, last centre, bins)."""
    first, last, bins = float(grid[0]), float(grid[1]), int(grid[2])
    if not (bins >= 2 and last > first > 0):
        raise ValueError(
            f"spectrum grid {list(grid)}: expected (first > 0, last > first, bins >= 2)"
        )
    return np.linspace(first, last, bins)


def grid_edges(grid: Sequence[float]) -> np.ndarray:
    c = grid_centres(grid)
    half = 0.5 * (c[1] - c[0])
    return np.concatenate([[c[0] - half], 0.5 * (c[1:] + c[:-1]), [c[-1] + half]])


def _cumulative(w: np.ndarray, f: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Integral from w[0] to x of the linear interpolation of f (x clipped to [w0, w-1])."""
    x = np.clip(x, w[0], w[-1])
    seg = np.concatenate([[0.0], np.cumsum(0.5 * (f[1:] + f[:-1]) * np.diff(w))])
    k = np.clip(np.searchsorted(w, x, side="right") - 1, 0, len(w) - 2)
    dx = x - w[k]
    slope = (f[k + 1] - f[k]) / (w[k + 1] - w[k])
    return seg[k] + f[k] * dx + 0.5 * slope * dx * dx


def resample(spectra: Spectra, grid: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flux-conserving resampling onto ``grid`` (see the module docstring).

    Returns (flux (S, G), flux_err (S, G), coverage (S,)): float64, NaN where a bin is less
    than half covered (errors also NaN where unknown); coverage = share of bins with flux.
    """
    edges = grid_edges(grid)
    lo, hi = edges[:-1], edges[1:]
    width = hi - lo
    n, g = len(spectra), len(lo)
    flux = np.full((n, g), np.nan)
    err = np.full((n, g), np.nan)
    for i in range(n):
        w, f, e = spectra.spectrum(i)
        a, b = np.maximum(lo, w[0]), np.minimum(hi, w[-1])
        covered = np.clip(b - a, 0.0, None)
        ok = covered >= 0.5 * width
        if not ok.any():
            continue
        integral = _cumulative(w, f, b[ok]) - _cumulative(w, f, a[ok])
        flux[i, ok] = integral / covered[ok]
        if np.isfinite(e).all():
            var = _cumulative(w, e * e, b[ok]) - _cumulative(w, e * e, a[ok])
            pixel = np.interp(0.5 * (a[ok] + b[ok]), 0.5 * (w[1:] + w[:-1]), np.diff(w))
            n_pix = np.maximum(covered[ok] / pixel, 1.0)
            err[i, ok] = np.sqrt(var / covered[ok] / n_pix)
    coverage = np.isfinite(flux).mean(axis=1) if g else np.zeros(n)
    return flux, err, coverage


def normalise(flux: np.ndarray, flux_err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flux and error (S, G) divided by each spectrum's flux RMS over the grid (bins without
    data count as 0; NaN stays NaN; an all-zero spectrum is left as is)."""
    x = np.where(np.isfinite(flux), flux, 0.0)
    rms = np.sqrt((x * x).mean(axis=1, keepdims=True))
    rms = np.where(rms > 0, rms, 1.0)
    return flux / rms, flux_err / rms


def model_input(
    spectra: Spectra, grid: Sequence[float], min_coverage: float = MIN_COVERAGE
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """What a spectrum tower takes, for every spectrum: ((S, 2, G) float32 normalised flux and
    error on ``grid``, NaN = no data; (S,) bool usable; counts of the unusable by reason).
    A spectrum covering less than ``min_coverage`` of the grid is unusable (all NaN)."""
    flux, err, coverage = resample(spectra, grid)
    flux, err = normalise(flux, err)
    usable = coverage >= min_coverage
    dropped: dict[str, int] = {}
    count(dropped, f"covers less than {min_coverage:.0%} of the model grid", (~usable).sum())
    out = np.stack([flux, err], axis=1).astype(np.float32)
    out[~usable] = np.nan
    return out, usable, dropped


def peak_times(object_id: np.ndarray, time: np.ndarray, flux: np.ndarray, owner: np.ndarray):
    """{object: time of its brightest point} from light-curve points (``owner`` = point ->
    object row); the reference time of :meth:`Spectra.one_per_object`."""
    out: dict[str, float] = {}
    order = np.lexsort((-np.nan_to_num(flux, nan=-np.inf), owner))
    first = np.concatenate([[True], owner[order][1:] != owner[order][:-1]]) if len(order) else []
    for p in order[np.asarray(first, bool)]:
        out[str(object_id[owner[p]])] = float(time[p])
    return out


def spectra_for(batch, spectra: Spectra, grid: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """((N, 2, G) model-grid input, (N,) bool has one) for each object of the light-curve
    ``batch``: its spectrum closest to the light curve's brightest point, resampled and
    normalised as in training (:func:`model_input`)."""
    n_bins = int(grid[2])
    out = np.full((len(batch), 2, n_bins), np.nan, np.float32)
    has = np.zeros(len(batch), bool)
    if len(spectra) == 0 or len(batch) == 0:
        return out, has
    mine = spectra.select(np.flatnonzero(np.isin(spectra.object_id, batch.object_id)))
    peaks = peak_times(batch.object_id, batch.time, batch.flux, batch.point_object_index())
    one = mine.one_per_object(peaks)
    row = one.index_of(batch.object_id)
    arr, usable, _ = model_input(one, grid)
    has = row >= 0
    has[has] = usable[row[has]]
    out[has] = arr[row[has]]
    return out, has
