"""Alert image cutouts as one normalised float32 array batch: :class:`CutoutBatch`.

Every alert carries three stamps, in this channel order: ``cutoutScience``,
``cutoutTemplate``, ``cutoutDifference`` (:data:`STAMPS`). A batch holds N alerts' stamps,
one row per alert, each ``size x size`` (default :data:`STAMP_SIZE` = 63, ZTF's native
size), normalised, with a validity mask. How stamps are decoded, cropped and normalised is
:mod:`astro_classifier.formats.stamps`; which alerts carry them is each format's business
(:mod:`astro_classifier.formats`). numpy only (it is on the inference path: no torch).

**Failures are counted, never silently dropped.** Each alert keeps its row; a stamp that
cannot be used makes its alert ``ok = False`` with the reason in ``failure`` and its images
zero. ``failures`` counts failing stamps by reason: :data:`MISSING` (null or empty cutout),
:data:`CORRUPT_GZIP`, :data:`NOT_FITS` (not a FITS file, or no image HDU in it),
:data:`WRONG_SHAPE` (not 2-D after dropping length-1 axes, or a side below the minimum),
:data:`ALL_NAN` (no finite pixel). Files under a folder that are not alerts with cutouts
(schemas, JSON samples) are counted in ``skipped_files``.

**Labels the alert itself provides** (float64, NaN where the alert lacks the field): ZTF
``candidate.ssdistnr``, ``sgscore1``, ``distpsnr1``, ``drb``; Rubin gives the solar-system
label only (``diaSource.ssObjectId`` set). Derived labels (:meth:`CutoutBatch.labels`):
``solar_system`` (``0 <= ssdistnr < 5``; ZTF writes -999 for "no known object nearby"),
``point_source`` (``sgscore1 > 0.5`` and ``0 <= distpsnr1 < 1``), ``real`` (``drb > 0.5``,
a proxy: drb is ZTF's deep-learning real/bogus score, not a human label).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from astro_classifier.core.counts import merge_counts

STAMPS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")  # channel order
STAMP_SIZE = 63  # output side in pixels (ZTF's native stamp size)
SOLAR_SYSTEM_RADIUS_ARCSEC = 5.0
POINT_SOURCE_SGSCORE = 0.5
POINT_SOURCE_RADIUS_ARCSEC = 1.0
REAL_DRB = 0.5

# Failure reasons (keys of CutoutBatch.failures).
MISSING = "missing cutout"
CORRUPT_GZIP = "corrupt gzip"
NOT_FITS = "not a FITS image"
WRONG_SHAPE = "wrong shape"
ALL_NAN = "all-NaN"
NO_ALERT = "no alert with cutouts for this object"  # a row added by align_cutouts / missing()
FAILURE_REASONS = (MISSING, CORRUPT_GZIP, NOT_FITS, WRONG_SHAPE, ALL_NAN)

LABEL_FIELDS = ("ssdistnr", "sgscore1", "distpsnr1", "drb")
# Class names of the labels the alert provides (CutoutBatch.labels() 1 -> first, 0 -> second),
# for training classifiers on them (a training config's data.alert_label).
ALERT_LABELS: dict[str, tuple[str, str]] = {
    "solar_system": ("SolarSystem", "NotSolarSystem"),
    "point_source": ("PointSource", "NotPointSource"),
    "real": ("Real", "Bogus"),
}
SURVEYS = ("ztf", "rubin")


# The per-row arrays of a CutoutBatch (concatenated and indexed together).
_ROW_ARRAYS = (
    "images",
    "valid",
    "ok",
    "failure",
    "shape",
    "survey",
    "object_id",
    "alert_id",
    "source",
)


@dataclass
class CutoutBatch:
    """N alerts' stamps, one row per alert in input order (failed alerts included)."""

    images: np.ndarray  # (N, 3, S, S) float32, normalised; zeros where not valid
    valid: np.ndarray  # (N, 3, S, S) bool: a finite input pixel (not NaN, not padding)
    ok: np.ndarray  # (N,) bool: all three stamps usable
    failure: np.ndarray  # (N,) object str: "" when ok, else "<stamp>: <reason>: <detail>"
    shape: np.ndarray  # (N, 3, 2) int32: (NAXIS2, NAXIS1) of each stamp, 0 when it failed
    survey: np.ndarray  # (N,) object str: "ztf" or "rubin"
    object_id: np.ndarray  # (N,) object str
    alert_id: np.ndarray  # (N,) object str
    source: np.ndarray  # (N,) object str: the file or message
    fields: dict[str, np.ndarray]  # LABEL_FIELDS + "ss_object" -> (N,) float64, NaN unknown
    failures: dict[str, int] = field(default_factory=dict)  # failing stamps by reason
    skipped_files: dict[str, int] = field(default_factory=dict)  # folder reads: why

    def __len__(self) -> int:
        return len(self.ok)

    @classmethod
    def empty(cls, size: int = STAMP_SIZE) -> CutoutBatch:
        obj = np.empty(0, dtype=object)
        return cls(
            images=np.zeros((0, 3, size, size), np.float32),
            valid=np.zeros((0, 3, size, size), bool),
            ok=np.zeros(0, bool),
            failure=obj,
            shape=np.zeros((0, 3, 2), np.int32),
            survey=obj.copy(),
            object_id=obj.copy(),
            alert_id=obj.copy(),
            source=obj.copy(),
            fields={name: np.zeros(0) for name in (*LABEL_FIELDS, "ss_object")},
        )

    @classmethod
    def missing(cls, n: int, size: int = STAMP_SIZE) -> CutoutBatch:
        """``n`` rows of objects that have no cutouts at all (``ok`` False, images zero); not
        counted in ``failures`` (no stamp failed: there was none)."""
        text = lambda value: np.full(n, value, dtype=object)  # noqa: E731
        return cls(
            images=np.zeros((n, 3, size, size), np.float32),
            valid=np.zeros((n, 3, size, size), bool),
            ok=np.zeros(n, bool),
            failure=text(NO_ALERT),
            shape=np.zeros((n, 3, 2), np.int32),
            survey=text(""),
            object_id=text(""),
            alert_id=text(""),
            source=text(""),
            fields={name: np.full(n, np.nan) for name in (*LABEL_FIELDS, "ss_object")},
        )

    @classmethod
    def concat(cls, batches: Sequence[CutoutBatch]) -> CutoutBatch:
        if not batches:
            raise ValueError("nothing to concatenate")
        failures = merge_counts(b.failures for b in batches)
        skipped = merge_counts(b.skipped_files for b in batches)
        arrays = {name: np.concatenate([getattr(b, name) for b in batches]) for name in _ROW_ARRAYS}
        fields = {k: np.concatenate([b.fields[k] for b in batches]) for k in batches[0].fields}
        return cls(**arrays, fields=fields, failures=failures, skipped_files=skipped)

    def take(self, index: np.ndarray) -> CutoutBatch:
        """The rows ``index`` (indices or a boolean mask); counts are kept as they were."""
        pick = {name: getattr(self, name)[index] for name in _ROW_ARRAYS}
        return CutoutBatch(
            **pick,
            fields={k: v[index] for k, v in self.fields.items()},
            failures=dict(self.failures),
            skipped_files=dict(self.skipped_files),
        )

    def labels(self) -> dict[str, np.ndarray]:
        """Binary labels the alert provides, float64 (1, 0, NaN = unknown); see the module
        docstring: ``solar_system``, ``point_source``, ``real``."""
        ss = self.fields["ssdistnr"]
        solar = np.where(np.isnan(ss), np.nan, ((ss >= 0) & (ss < SOLAR_SYSTEM_RADIUS_ARCSEC)))
        rubin = self.survey == "rubin"
        solar = np.where(rubin, self.fields["ss_object"], solar)
        sg, dist = self.fields["sgscore1"], self.fields["distpsnr1"]
        point = (sg > POINT_SOURCE_SGSCORE) & (dist >= 0) & (dist < POINT_SOURCE_RADIUS_ARCSEC)
        point = np.where(np.isnan(sg) | np.isnan(dist), np.nan, point)
        drb = self.fields["drb"]
        real = np.where(np.isnan(drb), np.nan, drb > REAL_DRB)
        return {
            "solar_system": solar.astype(np.float64),
            "point_source": point.astype(np.float64),
            "real": real.astype(np.float64),
        }


def align_cutouts(batch: Any, cutouts: CutoutBatch) -> CutoutBatch:
    """The rows of ``cutouts`` for each object of the light-curve ``batch``, in its order:
    matched by alert id (by object id where the batch has no alert ids). Objects without a
    match get a :meth:`CutoutBatch.missing` row; ``failures`` and ``skipped_files`` are kept."""
    size = cutouts.images.shape[-1]
    keys = batch.alert_id if batch.alert_id is not None else batch.object_id
    theirs = cutouts.alert_id if batch.alert_id is not None else cutouts.object_id
    row_of: dict[str, int] = {}
    for i, key in enumerate(theirs.tolist()):
        row_of.setdefault(key, i)  # the first of repeated alerts
    rows = np.array([row_of.get(k, -1) if k is not None else -1 for k in keys.tolist()], np.int64)
    found = rows >= 0
    if found.all():
        out = cutouts.take(rows)
    else:
        out = CutoutBatch.concat(
            [cutouts.take(rows[found]), CutoutBatch.missing(int((~found).sum()), size)]
        )
        order = np.empty(len(rows), np.int64)
        order[np.flatnonzero(found)] = np.arange(int(found.sum()))
        order[np.flatnonzero(~found)] = int(found.sum()) + np.arange(int((~found).sum()))
        out = out.take(order)
    out.failures = dict(cutouts.failures)
    out.skipped_files = dict(cutouts.skipped_files)
    return out
