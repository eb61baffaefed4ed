"""Small hand-built light curves for unit tests."""

from __future__ import annotations

import numpy as np

from astro_classifier.core.lightcurve import BAND_INDEX, LightCurveBatch


def make_batch(
    curves: dict[str, list[tuple]], metadata: dict[str, list[float]] | None = None
) -> LightCurveBatch:
    """Objects -> points ``(time, band letter, flux, flux_err, detected)``, in the given order."""
    rows = [(obj, *point) for obj, points in curves.items() for point in points]
    return LightCurveBatch.from_points(
        object_id=np.array([r[0] for r in rows], dtype=str),
        time=np.array([r[1] for r in rows], dtype=float),
        band=np.array([BAND_INDEX[r[2]] for r in rows], dtype=np.int8),
        flux=np.array([r[3] for r in rows], dtype=np.float32),
        flux_err=np.array([r[4] for r in rows], dtype=np.float32),
        detected=np.array([r[5] for r in rows], dtype=bool),
        objects=list(curves),
        metadata={k: np.asarray(v, float) for k, v in (metadata or {}).items()},
    )
