"""Spectra: one canonical batch type (numpy only: serving imports it). The readers of the
real spectra are :mod:`astro_classifier.catalogs.spectra`, the resampling onto a model's
wavelength grid and the normalisation :mod:`astro_classifier.features.spectra`.

Canonical form (:class:`Spectra`): one row per spectrum, several spectra per object allowed;
per spectrum the object id, the observation time (MJD, NaN when unknown), the object's
redshift (NaN when unknown), the flux unit as the source states it, and ragged arrays of
wavelength (Å, **observer frame**, strictly increasing), flux (the source's unit; a model
only ever sees it normalised) and flux error (same unit, NaN when unknown).

Which spectrum a model uses (:meth:`Spectra.one_per_object`): the one observed closest to a
reference time (the light curve's peak) where both are known, else the earliest with a
known time, else the first in file order.

Every reader builds its batch with :class:`SpectrumBuilder`, one cleaning rule for all: bad
spectra are refused and counted by reason in ``Spectra.dropped`` (never silently): empty,
fewer than :data:`MIN_POINTS` finite points, wavelengths not strictly increasing,
wavelengths outside 500-100000 Å, de-redshifted without a redshift, unreadable file.
Non-finite points of a kept spectrum are removed and counted (``points: ...``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from astro_classifier.core.counts import count

MIN_POINTS = 10
WAVELENGTH_RANGE = (500.0, 100_000.0)  # Å: anything outside is another unit or garbage


@dataclass
class Spectra:
    """A batch of spectra (see the module docstring); arrays of points are ragged by
    ``offsets`` (S + 1)."""

    object_id: np.ndarray  # (S,) str
    offsets: np.ndarray  # (S + 1,) int64
    wavelength: np.ndarray  # (P,) float64, Å, observer frame, increasing per spectrum
    flux: np.ndarray  # (P,) float64, unit flux_unit
    flux_err: np.ndarray  # (P,) float64, NaN = unknown
    time: np.ndarray  # (S,) float64 MJD, NaN = unknown
    redshift: np.ndarray  # (S,) float64, NaN = unknown
    flux_unit: np.ndarray  # (S,) str as the source states it ("" unstated)
    source: np.ndarray  # (S,) str: file or instrument
    dropped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.object_id = np.asarray(self.object_id).astype(str)
        self.offsets = np.asarray(self.offsets, np.int64)
        for name in ("wavelength", "flux", "flux_err", "time", "redshift"):
            setattr(self, name, np.asarray(getattr(self, name), np.float64))
        self.flux_unit = np.asarray(self.flux_unit).astype(str)
        self.source = np.asarray(self.source).astype(str)
        n = len(self.object_id)
        if len(self.offsets) != n + 1 or self.offsets[0] != 0:
            raise ValueError(f"offsets must have {n + 1} entries starting at 0")
        p = int(self.offsets[-1])
        for name in ("wavelength", "flux", "flux_err"):
            if len(getattr(self, name)) != p:
                raise ValueError(f"{name} has {len(getattr(self, name))} points, expected {p}")
        for name in ("time", "redshift", "flux_unit", "source"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, expected {n}")

    @classmethod
    def empty(cls) -> Spectra:
        z = np.zeros(0)
        return cls(np.zeros(0, str), np.zeros(1, np.int64), z, z, z, z, z, [], [])

    def __len__(self) -> int:
        return len(self.object_id)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def spectrum(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(wavelength, flux, flux_err) of spectrum ``i``."""
        s = slice(self.offsets[i], self.offsets[i + 1])
        return self.wavelength[s], self.flux[s], self.flux_err[s]

    def select(self, index: Sequence[int] | np.ndarray) -> Spectra:
        index = np.asarray(index, np.int64)
        lengths = self.lengths[index]
        points = (
            np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in index])
            if len(index)
            else np.zeros(0, np.int64)
        )
        return Spectra(
            self.object_id[index],
            np.concatenate([[0], np.cumsum(lengths)]),
            self.wavelength[points],
            self.flux[points],
            self.flux_err[points],
            self.time[index],
            self.redshift[index],
            self.flux_unit[index],
            self.source[index],
            dict(self.dropped),
        )

    @classmethod
    def concat(cls, parts: Sequence[Spectra]) -> Spectra:
        if not parts:
            return cls.empty()
        offsets, base = [np.zeros(1, np.int64)], 0
        for p in parts:
            offsets.append(p.offsets[1:] + base)
            base += int(p.offsets[-1])
        dropped: dict[str, int] = {}
        for p in parts:
            for k, v in p.dropped.items():
                count(dropped, k, v)

        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts])

        return cls(
            cat("object_id"),
            np.concatenate(offsets),
            cat("wavelength"),
            cat("flux"),
            cat("flux_err"),
            cat("time"),
            cat("redshift"),
            cat("flux_unit"),
            cat("source"),
            dropped,
        )

    def one_per_object(self, reference_time: Mapping[str, float] | None = None) -> Spectra:
        """The spectrum a model uses per object: closest in time to ``reference_time[object]``
        (e.g. the light curve's peak) where both are finite, else the earliest with a known
        time, else the first in file order. Objects keep their first-appearance order."""
        reference_time = reference_time or {}
        chosen: dict[str, int] = {}
        for i, obj in enumerate(self.object_id.tolist()):
            if obj not in chosen:
                chosen[obj] = i
                continue
            j = chosen[obj]
            ref = reference_time.get(obj, np.nan)
            ti, tj = self.time[i], self.time[j]
            if np.isfinite(ref) and np.isfinite(ti):
                better = not np.isfinite(tj) or abs(ti - ref) < abs(tj - ref)
            else:
                better = np.isfinite(ti) and (not np.isfinite(tj) or ti < tj)
            if better:
                chosen[obj] = i
        return self.select(np.array(list(chosen.values()), np.int64))

    def index_of(self, object_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Row of each object's spectrum (the first when several; -1: none)."""
        first: dict[str, int] = {}
        for i, obj in enumerate(self.object_id.tolist()):
            first.setdefault(obj, i)
        return np.array([first.get(str(o), -1) for o in object_ids], np.int64)


# -- building from raw arrays (one cleaning rule for every reader) ------------------------


class SpectrumBuilder:
    """Spectra added one by one, checked and counted (see the module docstring)."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.dropped: dict[str, int] = {}

    def add(
        self,
        object_id: str,
        wavelength,
        flux,
        flux_err,
        time: float,
        redshift: float,
        flux_unit: str,
        source: str,
    ) -> None:
        w = np.asarray(wavelength, np.float64)
        f = np.asarray(flux, np.float64)
        e = np.full(len(f), np.nan) if flux_err is None else np.asarray(flux_err, np.float64)
        if len(w) == 0 or len(f) == 0:
            count(self.dropped, "empty")
            return
        if not (len(w) == len(f) == len(e)):
            count(self.dropped, "wavelength, flux and error of different lengths")
            return
        finite = np.isfinite(w) & np.isfinite(f)
        count(self.dropped, "points: non-finite wavelength or flux (removed)", (~finite).sum())
        w, f, e = w[finite], f[finite], e[finite]
        if len(w) < MIN_POINTS:
            count(self.dropped, f"fewer than {MIN_POINTS} finite points")
            return
        if not np.all(np.diff(w) > 0):
            count(self.dropped, "wavelengths not strictly increasing")
            return
        if w[0] < WAVELENGTH_RANGE[0] or w[-1] > WAVELENGTH_RANGE[1]:
            count(self.dropped, "wavelengths outside 500-100000 Å (another unit?)")
            return
        if np.isfinite(e).any() and np.array_equal(e, f):
            count(self.dropped, "error column equals the flux (read as unknown)")
            e = np.full(len(f), np.nan)
        bad_err = np.isfinite(e) & ~(e > 0)
        count(self.dropped, "points: error <= 0 (read as unknown)", bad_err.sum())
        e = np.where(bad_err, np.nan, e)
        self.rows.append((object_id, w, f, e, time, redshift, flux_unit, source))

    def build(self) -> Spectra:
        if not self.rows:
            out = Spectra.empty()
            out.dropped = self.dropped
            return out
        cols = list(zip(*self.rows, strict=True))
        lengths = [len(w) for w in cols[1]]
        return Spectra(
            np.array(cols[0], str),
            np.concatenate([[0], np.cumsum(lengths)]),
            np.concatenate(cols[1]),
            np.concatenate(cols[2]),
            np.concatenate(cols[3]),
            np.array(cols[4], np.float64),
            np.array(cols[5], np.float64),
            np.array(cols[6], str),
            np.array(cols[7], str),
            self.dropped,
        )
