"""ALeRCE example supernovae (alercebroker/lc_classifier ``data_examples/``) -> batch.

Three CSV files in one folder (``path`` is the folder or one of them):

- ``30_sne_detections_corr.csv``: ZTF detections as ALeRCE serves them (``objectId``,
  ``mjd``, ``fid``, ``magpsf``, ``sigmapsf``, ``isdiffpos`` as ``1.0``/``-1.0``, ``ra``,
  ``dec``, ... plus ALeRCE's corrected magnitudes ``magpsf_corr``);
- ``30_sne_non_detections.csv``: non-detections (``objectId``, ``jd``, ``fid``,
  ``diffmaglim``);
- ``30_sne_labels.csv``: ``objectId``, ``classALeRCE`` (SNIa, SNIbc, SNII, SLSN).

The folder's ``100_objects*.csv`` files hold features and labels but no light curves and are
not read.

Conventions, as the ZTF alert reader's:

- **Detections**: difference-image flux from ``magpsf``/``sigmapsf`` and the sign of
  ``isdiffpos`` (:func:`ztf_difference_mag_to_njy`; ``-1``/``-1.0``/``f``/``0`` are negative),
  time ``mjd``, ``detected=True``. ``magpsf_corr`` (the reference-corrected total magnitude)
  is not used.
- **Non-detections**: flux 0, error :func:`limiting_mag_to_njy_err` of ``diffmaglim`` (flux of
  the limit / 5), time ``jd`` -> MJD, ``detected=False``.
- ``fid`` 1, 2, 3 -> g, r, i. Points with a non-finite value, a non-positive error or an
  unknown ``fid`` are dropped and counted.
- **Labels**: :func:`canonical_label` of ``classALeRCE`` (``SLSN`` stays ``SLSN``).
- **Metadata**: ``ra``, ``dec`` (degrees, mean of the detections).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from astro_classifier.core.counts import count
from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import BAND_INDEX, LightCurveBatch
from astro_classifier.core.tables import read_table, require_columns
from astro_classifier.core.taxonomy import canonical_label
from astro_classifier.core.units import (
    limiting_mag_to_njy_err,
    mjd_from_jd,
    ztf_difference_mag_to_njy,
)

ALERCE_DETECTIONS = "30_sne_detections_corr.csv"
ALERCE_NON_DETECTIONS = "30_sne_non_detections.csv"
ALERCE_LABELS = "30_sne_labels.csv"
DETECTION_COLUMNS = ("objectId", "mjd", "fid", "magpsf", "sigmapsf", "isdiffpos", "ra", "dec")
NON_DETECTION_COLUMNS = ("objectId", "jd", "fid", "diffmaglim")
LABEL_COLUMNS = ("objectId", "classALeRCE")
ALERCE_FID_BANDS: dict[int, str] = {1: "g", 2: "r", 3: "i"}


def _folder(path: str | Path) -> Path:
    path = Path(path)
    return path.parent if path.is_file() else path


def _header(path: Path) -> list[str]:
    try:
        with path.open(encoding="utf-8") as fh:
            return fh.readline().strip().split(",")
    except (OSError, UnicodeDecodeError):
        return []


def looks_like_alerce_examples(path: str | Path) -> bool:
    """True for the folder (or one of its files) with ALeRCE detections, non-detections, labels."""
    folder = _folder(path)
    return all(
        all(c in _header(folder / name) for c in columns)
        for name, columns in (
            (ALERCE_DETECTIONS, DETECTION_COLUMNS),
            (ALERCE_NON_DETECTIONS, NON_DETECTION_COLUMNS),
            (ALERCE_LABELS, LABEL_COLUMNS),
        )
    )


def read_alerce_examples(path: str | Path) -> LightCurveBatch:
    """Read the ALeRCE example supernovae; see the module docstring."""
    folder = _folder(path)
    if not looks_like_alerce_examples(folder):
        raise InputError(
            path, f"expected {ALERCE_DETECTIONS}, {ALERCE_NON_DETECTIONS} and {ALERCE_LABELS}"
        )
    det = read_table(folder / ALERCE_DETECTIONS)
    non = read_table(folder / ALERCE_NON_DETECTIONS)
    labels = read_table(folder / ALERCE_LABELS)
    require_columns(det, DETECTION_COLUMNS, folder / ALERCE_DETECTIONS, "ALeRCE detections")
    require_columns(non, NON_DETECTION_COLUMNS, folder / ALERCE_NON_DETECTIONS, "non-detections")
    require_columns(labels, LABEL_COLUMNS, folder / ALERCE_LABELS, "ALeRCE labels")
    dropped: dict[str, int] = {}

    raw_sign = _strings(det["isdiffpos"])
    sign = _floats(det["isdiffpos"].cast(pa.string()))
    negative = np.isin(raw_sign, ["f", "0"]) | (sign < 0)
    unknown_sign = ~negative & ~(np.isin(raw_sign, ["t", "1"]) | (sign > 0))
    isdiffpos = np.where(negative, "f", "t")
    det_flux, det_err = ztf_difference_mag_to_njy(
        _floats(det["magpsf"]), _floats(det["sigmapsf"]), isdiffpos
    )
    det_time = _floats(det["mjd"])
    det_ok = ~unknown_sign
    count(dropped, "detection with unreadable isdiffpos", unknown_sign.sum())

    non_time = mjd_from_jd(_floats(non["jd"]))
    non_err = limiting_mag_to_njy_err(_floats(non["diffmaglim"]))

    ids = np.concatenate([_strings(det["objectId"]), _strings(non["objectId"])])
    time = np.concatenate([det_time, non_time])
    fid = np.concatenate([_floats(det["fid"]), _floats(non["fid"])])
    flux = np.concatenate([det_flux, np.zeros(non.num_rows)])
    flux_err = np.concatenate([det_err, non_err])
    detected = np.concatenate([np.ones(det.num_rows, bool), np.zeros(non.num_rows, bool)])
    ok = np.concatenate([det_ok, np.ones(non.num_rows, bool)])

    known_fid = np.isin(fid, list(ALERCE_FID_BANDS))
    count(dropped, "unknown fid", (ok & ~known_fid).sum())
    ok &= known_fid
    finite = np.isfinite(time) & np.isfinite(flux) & np.isfinite(flux_err)
    count(dropped, "non-finite time, flux or error", (ok & ~finite).sum())
    ok &= finite
    positive = flux_err > 0
    count(dropped, "flux error <= 0", (ok & ~positive).sum())
    ok &= positive

    objects = _strings(labels["objectId"])
    unlabelled = ~np.isin(ids, objects)
    count(dropped, "object without a label", (ok & unlabelled).sum())
    ok &= ~unlabelled
    raw_labels = _strings(labels["classALeRCE"])
    canonical = np.array([canonical_label(c) or c for c in raw_labels.tolist()], dtype=str)

    det_ids = _strings(det["objectId"])
    ra, dec = _floats(det["ra"]), _floats(det["dec"])
    mean_ra = np.array(
        [np.nanmean(ra[det_ids == o]) if (det_ids == o).any() else np.nan for o in objects]
    )
    mean_dec = np.array(
        [np.nanmean(dec[det_ids == o]) if (det_ids == o).any() else np.nan for o in objects]
    )
    batch = LightCurveBatch.from_points(
        ids[ok],
        time[ok],
        np.array([BAND_INDEX[ALERCE_FID_BANDS[int(f)]] for f in fid[ok]], np.int8),
        flux[ok],
        flux_err[ok],
        detected[ok],
        objects=objects,
        metadata={"ra": mean_ra, "dec": mean_dec},
        label=canonical,
    )
    batch.dropped = dropped
    return batch


def _strings(column: pa.ChunkedArray) -> np.ndarray:
    return np.array(["" if v is None else str(v) for v in column.to_pylist()], dtype=str)


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        values = []
        for v in column.to_pylist():
            try:
                values.append(float(v))
            except (TypeError, ValueError):
                values.append(np.nan)
        return np.asarray(values, np.float64)
    return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), np.float64)
