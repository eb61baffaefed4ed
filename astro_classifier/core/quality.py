"""Point quality: drop photometry no survey could have measured, and count every point dropped.

Every reader's batch passes through :func:`clean_points` once (the format registry calls it,
for files and Kafka messages alike), so that the same rules hold in every door. A point is
dropped, and counted under its reason in ``LightCurveBatch.dropped``, when:

- its time is not finite, or (for formats whose times are MJD) before 1990-01-01 or more
  than a day in the future: no survey that alerts today observed then (EROS-1 counts its
  days from an arbitrary zero, so its times are only checked for being finite);
- its flux or flux error is not finite (NaN or infinite magnitudes, overflowing values);
- its flux error is zero or negative (no measurement has no noise: a magnitude of 1e308
  becomes flux 0 ± 0);
- its flux is brighter than AB magnitude -10 (|flux| > 3.6e16 nJy): brighter than any
  object a survey difference image can measure; such values are corrupted data.

Floating-point warnings (overflow in ``10 ** (-m / 2.5)`` of absurd magnitudes, NaN
comparisons) are silenced here and where readers convert units: the reason counts say what
happened, and no numpy warning reaches stdout or a JSON log.
"""

from __future__ import annotations

import time as _time

import numpy as np

from astro_classifier.core.counts import merge_counts
from astro_classifier.core.lightcurve import LightCurveBatch

MJD_1990 = 47892.0  # 1990-01-01
UNIX_EPOCH_MJD = 40587.0  # 1970-01-01
FUTURE_MARGIN_DAYS = 1.0
MAX_ABS_FLUX_NJY = 10.0 ** ((31.4 + 10.0) / 2.5)  # AB magnitude -10

DROP_TIME_NON_FINITE = "non-finite time"
DROP_TIME_BEFORE_1990 = "time before 1990"
DROP_TIME_FUTURE = "time in the future"
DROP_FLUX_NON_FINITE = "non-finite flux or flux error"
DROP_ERR_NOT_POSITIVE = "flux error <= 0"
DROP_FLUX_ABSURD = "flux brighter than magnitude -10"


def now_mjd() -> float:
    """The current time as MJD (UTC)."""
    return UNIX_EPOCH_MJD + _time.time() / 86400.0


def point_problems(
    time: np.ndarray, flux: np.ndarray, flux_err: np.ndarray, absolute_time: bool = True
) -> tuple[np.ndarray, dict[str, int]]:
    """(keep mask, reason -> count) for points; each dropped point counts under its first reason."""
    with np.errstate(all="ignore"):
        time = np.asarray(time, np.float64)
        flux = np.asarray(flux, np.float64)
        flux_err = np.asarray(flux_err, np.float64)
        checks = [(DROP_TIME_NON_FINITE, ~np.isfinite(time))]
        if absolute_time:
            checks += [
                (DROP_TIME_BEFORE_1990, time < MJD_1990),
                (DROP_TIME_FUTURE, time > now_mjd() + FUTURE_MARGIN_DAYS),
            ]
        checks += [
            (DROP_FLUX_NON_FINITE, ~(np.isfinite(flux) & np.isfinite(flux_err))),
            (DROP_ERR_NOT_POSITIVE, ~(flux_err > 0)),
            (DROP_FLUX_ABSURD, np.abs(flux) > MAX_ABS_FLUX_NJY),
        ]
    keep = np.ones(len(time), dtype=bool)
    counts: dict[str, int] = {}
    for reason, bad in checks:
        new = bad & keep
        if new.any():
            counts[reason] = int(new.sum())
            keep &= ~new
    return keep, counts


def clean_points(batch: LightCurveBatch, absolute_time: bool = True) -> LightCurveBatch:
    """``batch`` without the points of the module docstring's rules, counted in ``dropped``.

    ``absolute_time``: times are MJD (checked against 1990 and now); False for formats with a
    relative time axis (EROS-1). Objects are kept, possibly with no point left: classify()
    then lists them as skipped (batch) or the worker dead-letters their alert (stream).
    """
    keep, counts = point_problems(batch.time, batch.flux, batch.flux_err, absolute_time)
    if keep.all():
        return batch
    cleaned = batch.select_points(keep)
    cleaned.dropped = merge_counts([batch.dropped, counts])
    return cleaned
