"""The canonical light-curve batch: every reader produces it, everything downstream reads it.

A batch holds N objects in compressed-row form: the points of object ``k`` are
``offsets[k]:offsets[k + 1]`` of the point arrays. Units are fixed for the whole project:

- ``time``: MJD (days), float64
- ``band``: index into :data:`BANDS` (``u g r i z y``), int8
- ``flux``, ``flux_err``: nJy, float32 (difference-image flux for alerts; may be negative)
- ``detected``: bool, the survey's own detection flag (False for forced photometry and
  non-detection points that still carry a flux)

Per-object columns live in ``metadata`` (name -> array of length N, float64 unless the
reader says otherwise). ``alert_id`` is the alert identifier where the input was an alert
(``None`` for batch light-curve files), ``label`` the class label where the input is labelled.
``cutouts`` is None unless a model that uses images asked for them: then a
:class:`astro_classifier.core.cutouts.CutoutBatch` with one row per object (its alert's three
stamps, ``ok`` False where they are missing or unusable), carried through ``select`` and
``concat`` like the other per-object columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from astro_classifier.core.counts import merge_counts
from astro_classifier.core.cutouts import CutoutBatch
from astro_classifier.core.errors import InputError

BANDS: tuple[str, ...] = ("u", "g", "r", "i", "z", "y")
BAND_INDEX: dict[str, int] = {b: i for i, b in enumerate(BANDS)}
# Metadata column set by alert readers: 1.0 when the alert is a known solar-system object
# (ZTF ``ssdistnr`` < 5", Rubin ``ssObjectId``), 0.0 when not, NaN when unknown.
SOLAR_SYSTEM = "solar_system"


def band_indices(names: Iterable[str], source: str) -> np.ndarray:
    """Map band letters (``u g r i z y``, case-insensitive) to canonical indices (int8)."""
    names = np.asarray(list(names) if not isinstance(names, np.ndarray) else names).astype(str)
    uniq, inverse = np.unique(np.char.lower(names), return_inverse=True)
    unknown = [str(u) for u in uniq if u not in BAND_INDEX]
    if unknown:
        raise InputError(source, f"unknown band(s) {unknown}; expected one of {list(BANDS)}")
    lut = np.array([BAND_INDEX[u] for u in uniq], dtype=np.int8)
    return lut[inverse].astype(np.int8)


def as_id_array(values: Iterable[object] | np.ndarray) -> np.ndarray:
    """Identifiers as a (N,) object array of Python str, every character kept."""
    values = values.tolist() if isinstance(values, np.ndarray) else list(values)
    out = np.empty(len(values), dtype=object)
    out[:] = [str(v) for v in values]
    return out


def _joined_cutouts(batches: Sequence[LightCurveBatch]) -> Any:
    """The batches' cutouts concatenated (None when none has any; a batch without them
    contributes rows marked missing)."""
    if all(b.cutouts is None for b in batches):
        return None
    size = next(b.cutouts for b in batches if b.cutouts is not None).images.shape[-1]
    return CutoutBatch.concat(
        [b.cutouts if b.cutouts is not None else CutoutBatch.missing(len(b), size) for b in batches]
    )


@dataclass
class LightCurveBatch:
    """N light curves in compressed-row form (see module docstring for units)."""

    object_id: np.ndarray  # (N,) object array of str (every character kept, NUL included)
    offsets: np.ndarray  # (N + 1,) int64
    time: np.ndarray  # (P,) float64, MJD
    band: np.ndarray  # (P,) int8, index into BANDS
    flux: np.ndarray  # (P,) float32, nJy
    flux_err: np.ndarray  # (P,) float32, nJy
    detected: np.ndarray  # (P,) bool
    metadata: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (N,)
    alert_id: np.ndarray | None = None  # (N,) object: str, or None for an object without alert
    label: np.ndarray | None = None  # (N,) str or None
    cutouts: Any = None  # CutoutBatch (N rows) or None; see the module docstring
    # Points the reader could not use, by reason ("non-finite flux", ...): counted, never silent.
    dropped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # object dtype of Python str: NumPy's fixed-width strings drop trailing NUL characters
        # and pyarrow cuts them at the first NUL; an id must keep every character
        self.object_id = as_id_array(self.object_id)
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        self.time = np.asarray(self.time, dtype=np.float64)
        self.band = np.asarray(self.band, dtype=np.int8)
        with np.errstate(
            over="ignore", invalid="ignore"
        ):  # absurd values become inf, counted later
            self.flux = np.asarray(self.flux, dtype=np.float32)
            self.flux_err = np.asarray(self.flux_err, dtype=np.float32)
        self.detected = np.asarray(self.detected, dtype=bool)
        n = len(self.object_id)
        if self.offsets.shape != (n + 1,) or self.offsets[0] != 0:
            raise ValueError(f"offsets must have length {n + 1} and start at 0")
        p = int(self.offsets[-1])
        for name in ("time", "band", "flux", "flux_err", "detected"):
            if len(getattr(self, name)) != p:
                raise ValueError(f"{name} has {len(getattr(self, name))} points, offsets say {p}")
        for key, col in self.metadata.items():
            if len(col) != n:
                raise ValueError(f"metadata column {key!r} has {len(col)} rows, expected {n}")
        if self.alert_id is not None:
            self.alert_id = np.array(
                [None if a is None else str(a) for a in np.asarray(self.alert_id, dtype=object)],
                dtype=object,
            )
        if self.label is not None:
            self.label = np.asarray(self.label).astype(str)
        if self.cutouts is not None and len(self.cutouts) != n:
            raise ValueError(f"cutouts have {len(self.cutouts)} rows, expected {n}")

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_points(
        cls,
        object_id: np.ndarray,
        time: np.ndarray,
        band: np.ndarray,
        flux: np.ndarray,
        flux_err: np.ndarray,
        detected: np.ndarray,
        objects: Sequence[str] | np.ndarray | None = None,
        metadata: dict[str, np.ndarray] | None = None,
        alert_id: np.ndarray | None = None,
        label: np.ndarray | None = None,
    ) -> LightCurveBatch:
        """Build a batch from long-format points (one row per observation).

        Points are grouped by ``object_id`` and sorted by time within each object.
        ``objects`` gives the object order (and the row order of ``metadata``); when None
        the order of first appearance is used. Objects listed without points get an empty
        light curve.
        """
        point_ids = as_id_array(object_id)
        if objects is None:
            _, first = np.unique(point_ids, return_index=True)
            objects = point_ids[np.sort(first)]
        objects = as_id_array(objects)
        if len(np.unique(objects)) != len(objects):
            raise ValueError("object ids in the object table are not unique")
        order_of = {o: i for i, o in enumerate(objects)}
        try:
            obj_index = np.fromiter((order_of[o] for o in point_ids), np.int64, len(point_ids))
        except KeyError as exc:
            raise ValueError(
                f"points reference object {exc.args[0]!r} missing from the object table"
            ) from exc
        time = np.asarray(time, dtype=np.float64)
        order = np.lexsort((time, obj_index))
        counts = np.bincount(obj_index, minlength=len(objects))
        offsets = np.concatenate([[0], np.cumsum(counts)])
        return cls(
            object_id=objects,
            offsets=offsets,
            time=time[order],
            band=np.asarray(band)[order],
            flux=np.asarray(flux)[order],
            flux_err=np.asarray(flux_err)[order],
            detected=np.asarray(detected)[order],
            metadata=dict(metadata or {}),
            alert_id=alert_id,
            label=label,
        )

    @classmethod
    def concat(cls, batches: Sequence[LightCurveBatch]) -> LightCurveBatch:
        """Concatenate batches; metadata columns missing in some batches become NaN."""
        if not batches:
            raise ValueError("nothing to concatenate")
        if len(batches) == 1:
            return batches[0]
        keys: list[str] = []
        for b in batches:
            keys += [k for k in b.metadata if k not in keys]
        metadata = {}
        for k in keys:
            cols = [b.metadata[k] if k in b.metadata else np.full(len(b), np.nan) for b in batches]
            metadata[k] = np.concatenate(cols)
        offsets = [np.zeros(1, np.int64)]
        base = 0
        for b in batches:
            offsets.append(b.offsets[1:] + base)
            base += int(b.offsets[-1])

        def joined(name: str, missing: str | None) -> np.ndarray | None:
            cols = [getattr(b, name) for b in batches]
            if all(c is None for c in cols):
                return None
            return np.concatenate(
                [
                    c if c is not None else np.full(len(b), missing, dtype=object)
                    for c, b in zip(cols, batches, strict=True)
                ]
            )

        return cls(
            object_id=np.concatenate([b.object_id for b in batches]),
            offsets=np.concatenate(offsets),
            time=np.concatenate([b.time for b in batches]),
            band=np.concatenate([b.band for b in batches]),
            flux=np.concatenate([b.flux for b in batches]),
            flux_err=np.concatenate([b.flux_err for b in batches]),
            detected=np.concatenate([b.detected for b in batches]),
            metadata=metadata,
            alert_id=joined("alert_id", None),  # objects from light-curve files have no alert
            label=joined("label", ""),
            cutouts=_joined_cutouts(batches),
            dropped=merge_counts(b.dropped for b in batches),
        )

    # -- access -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.object_id)

    @property
    def lengths(self) -> np.ndarray:
        """Number of points per object, (N,) int64."""
        return np.diff(self.offsets)

    def point_object_index(self) -> np.ndarray:
        """Object index of each point, (P,) int64."""
        return np.repeat(np.arange(len(self)), self.lengths)

    def point_positions(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions of the points of objects ``index``, in that order (P',) int64; their
        offsets (len(index) + 1,)), without a Python loop over objects."""
        index = np.asarray(index, dtype=np.int64)
        lengths = self.lengths[index]
        offsets = np.zeros(len(index) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        points = np.repeat(self.offsets[index] - offsets[:-1], lengths)
        points += np.arange(offsets[-1], dtype=np.int64)
        return points, offsets

    def select(self, index: np.ndarray | Sequence[int]) -> LightCurveBatch:
        """A new batch holding the objects at ``index`` (in that order)."""
        index = np.asarray(index, dtype=np.int64)
        points, offsets = self.point_positions(index)
        return LightCurveBatch(
            object_id=self.object_id[index],
            offsets=offsets,
            time=self.time[points],
            band=self.band[points],
            flux=self.flux[points],
            flux_err=self.flux_err[points],
            detected=self.detected[points],
            metadata={k: v[index] for k, v in self.metadata.items()},
            alert_id=None if self.alert_id is None else self.alert_id[index],
            label=None if self.label is None else self.label[index],
            cutouts=None if self.cutouts is None else self.cutouts.take(index),
            dropped=dict(self.dropped),
        )

    def select_points(self, keep: np.ndarray) -> LightCurveBatch:
        """A new batch with only the points where ``keep`` (P,) is True; objects are kept."""
        keep = np.asarray(keep, dtype=bool)
        counts = np.bincount(self.point_object_index()[keep], minlength=len(self))
        return LightCurveBatch(
            object_id=self.object_id,
            offsets=np.concatenate([[0], np.cumsum(counts)]),
            time=self.time[keep],
            band=self.band[keep],
            flux=self.flux[keep],
            flux_err=self.flux_err[keep],
            detected=self.detected[keep],
            metadata=dict(self.metadata),
            alert_id=self.alert_id,
            label=self.label,
            cutouts=self.cutouts,
            dropped=dict(self.dropped),
        )

    def first_detection_time(self) -> np.ndarray:
        """MJD of each object's first detected point (first point if none is detected); NaN if empty."""
        out = np.full(len(self), np.nan)
        nonempty = np.flatnonzero(self.lengths > 0)
        if len(nonempty) == 0:
            return out
        starts = self.offsets[nonempty]  # strictly increasing: reduceat's segments are objects
        first_det = np.minimum.reduceat(np.where(self.detected, self.time, np.inf), starts)
        first_any = np.minimum.reduceat(self.time, starts)
        first = np.where(np.isfinite(first_det), first_det, first_any)
        out[nonempty] = np.where(np.isfinite(first), first, np.nan)
        return out

    def truncate_after_first_detection(self, days: float | np.ndarray) -> LightCurveBatch:
        """Keep points observed at most ``days`` after each object's first detection.

        ``days`` is a scalar or one value per object; ``inf`` keeps everything.
        """
        limit = self.first_detection_time() + np.broadcast_to(np.asarray(days, float), (len(self),))
        keep = self.time <= limit[self.point_object_index()]
        return self.select_points(keep)
