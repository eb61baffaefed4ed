"""Re-render light curves in another *processing*, so that no class owns a processing.

Each real class entered training from one catalogue with its own processing (SN Ia from
alert photometry: detections only; SLSNe from a dense catalogue with upper limits; TDEs
from forced difference photometry with multi-year baselines; AGN only from simulation). A
model then learns the catalogue, not the physics. Every training light curve, real or
simulated, is therefore re-rendered at random into one of :data:`PROCESSINGS`
(:func:`render_random`), and the same renderer measures how stable a prediction is when one
object is shown in another processing (:func:`render`).

Conventions (those of :class:`~astro_classifier.core.lightcurve.LightCurveBatch` and the
readers):

- A point is **significant** (:func:`significant`) when the survey flagged it detected or
  ``|flux| >= 5 flux_err`` (:data:`DETECTION_SIGMA`; a difference image alerts on negative
  flux too). Rendered points carry ``detected`` = significant (``as-read`` keeps the flags).
- An **upper limit** (non-detection) is a point with ``flux = 0``, ``flux_err`` = (flux of
  the 5-sigma limit) / 5 and ``detected = False``, as the ZTF alert reader writes
  ``diffmaglim`` (and the ALeRCE, OSC and SLSN readers their limits). A measured point of
  error sigma has a 5-sigma limit of 5 sigma, so it becomes a limit by ``flux = 0`` with its
  ``flux_err`` unchanged.
- A **night** is ``floor(MJD + 0.25)`` (:func:`night_of`): the day boundary at 18:00 UTC
  falls in daytime at both Palomar (ZTF) and Cerro Pachon (Rubin); ``floor(MJD)`` would
  split Rubin's nights, which straddle 0h UTC.
- Every transform takes a batch and a :class:`numpy.random.Generator`, returns a new batch
  (object ids, metadata, labels, alert ids, cutouts and drop counts carried; points sorted
  by time within each object) and never modifies its input. An object with at least one
  point never comes back empty: if a rule would drop all of its points, its brightest point
  (largest flux) is kept. The same batch and generator state give the same output.

API: :func:`render` (one processing for the whole batch), :func:`render_random` (one drawn
per object, for training), the transforms themselves (:func:`as_read`, :func:`alert`,
:func:`forced`, :func:`detections`, :func:`sparse`, :func:`rubin`), :func:`nightly_bin`,
:func:`cap_history` and :func:`difference_flux`. numpy only (no torch): serving imports it.

Long histories (multi-year forced photometry, deep-field Rubin histories) are reduced with
:func:`nightly_bin` and :func:`cap_history`, which serving and training both apply;
:func:`difference_flux` turns total-flux light curves (quasar magnitudes) into difference
flux against a reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from astro_classifier.core.lightcurve import BANDS, LightCurveBatch

__all__ = [
    "ALERT_HISTORY_DAYS",
    "DETECTION_SIGMA",
    "PROCESSINGS",
    "alert",
    "as_read",
    "cap_history",
    "detections",
    "difference_flux",
    "forced",
    "night_of",
    "nightly_bin",
    "render",
    "render_random",
    "rubin",
    "significant",
    "sparse",
]

DETECTION_SIGMA = 5.0  # a point is significant at |flux| >= 5 sigma
ALERT_HISTORY_DAYS = 30.0  # ZTF alerts carry 30 days of history before the candidate
RUBIN_HISTORY_DAYS = 365.0  # Rubin alerts carry 12 months of sources and forced sources
NIGHT_SHIFT_DAYS = 0.25  # night = floor(MJD + 0.25): the day turns at 18:00 UTC
BASELINE_SPAN_DAYS = (100.0, 1000.0)  # forced: pre-explosion baseline length
BASELINE_CADENCE_DAYS = 3.0  # forced: one baseline epoch every ~3 days (ZTF-like)
BASELINE_JITTER_DAYS = 1.0  # forced: each baseline epoch moves by up to +-1 day
SPARSE_NIGHT_FRACTION = (0.3, 0.6)  # sparse: share of nights kept, drawn per object
RUBIN_CADENCE_NIGHTS = 3  # rubin: about one visit per band per this many nights

PROCESSINGS: dict[str, str] = {
    "as-read": "unchanged (a copy of the points as the reader gave them)",
    "alert": "a ZTF alert at a random time: history from 30 d before the first >=5-sigma "
    "point up to a detection drawn uniformly in time; sub-5-sigma points become upper limits",
    "forced": "forced photometry: every epoch keeps its flux (detected = >=5 sigma), plus a "
    "100-1000 d zero-signal baseline before the first point where baseline=True",
    "detections": "a catalogue of detections in magnitudes: only >=5-sigma points with "
    "positive flux",
    "sparse": "ZTF-like sparse cadence: a random 30-60 % of nights kept, per object",
    "rubin": "Rubin alert: about one visit per band per 3 nights, history from 365 d before "
    "the first >=5-sigma point up to a random detection; sub-5-sigma points keep their flux "
    "(Rubin alerts carry forced sources, not limits)",
}


# -- helpers ------------------------------------------------------------------------------
def night_of(time: np.ndarray) -> np.ndarray:
    """Night index (int64) of MJD times: ``floor(MJD + 0.25)`` (see the module docstring)."""
    return np.floor(np.asarray(time, np.float64) + NIGHT_SHIFT_DAYS).astype(np.int64)


def significant(batch: LightCurveBatch) -> np.ndarray:
    """(P,) bool: the survey's detection flag, or ``|flux| >= 5 flux_err`` (error > 0)."""
    flux = batch.flux.astype(np.float64)
    err = batch.flux_err.astype(np.float64)
    with np.errstate(invalid="ignore"):
        snr = (err > 0) & (np.abs(flux) >= DETECTION_SIGMA * err)
    return batch.detected | snr


def _objects(batch: LightCurveBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(object index per point, indices of objects with points, their first positions)."""
    nonempty = np.flatnonzero(batch.lengths > 0)
    return batch.point_object_index(), nonempty, batch.offsets[:-1][nonempty]


def _per_object(
    reduce: np.ufunc, values: np.ndarray, batch: LightCurveBatch, fill: float = np.nan
) -> np.ndarray:
    """(N,) ``reduce`` of ``values`` (P,) over each object's points; ``fill`` where empty."""
    out = np.full(len(batch), fill, dtype=np.float64)
    _, nonempty, starts = _objects(batch)
    if len(nonempty):
        out[nonempty] = reduce.reduceat(values, starts)
    return out


def _brightest(batch: LightCurveBatch) -> np.ndarray:
    """(N,) position of each object's largest-flux point, the first one on a tie (its first
    point when no flux is finite; -1 for an object without points)."""
    obj, nonempty, starts = _objects(batch)
    flux = batch.flux.astype(np.float64)
    peak = _per_object(np.fmax, flux, batch)
    out = np.full(len(batch), -1, np.int64)
    out[nonempty] = starts
    hits = np.flatnonzero(flux == peak[obj])
    first_hit = np.ones(len(hits), bool)
    first_hit[1:] = obj[hits[1:]] != obj[hits[:-1]]
    out[obj[hits[first_hit]]] = hits[first_hit]
    return out


def _keep_nonempty(batch: LightCurveBatch, keep: np.ndarray) -> np.ndarray:
    """``keep`` plus the brightest point of every object that would lose all its points."""
    kept = np.bincount(batch.point_object_index()[keep], minlength=len(batch))
    lost = np.flatnonzero((kept == 0) & (batch.lengths > 0))
    if len(lost):
        keep = keep.copy()
        keep[_brightest(batch)[lost]] = True
    return keep


def _build(
    batch: LightCurveBatch,
    obj: np.ndarray,
    time: np.ndarray,
    band: np.ndarray,
    flux: np.ndarray,
    flux_err: np.ndarray,
    detected: np.ndarray,
) -> LightCurveBatch:
    """A new batch with ``batch``'s objects and these points (sorted by object, then time)."""
    if _in_order(obj, time):
        order = slice(None)
        time, band, flux, flux_err, detected = (
            np.array(a, copy=True) for a in (time, band, flux, flux_err, detected)
        )
    else:
        order = _time_order(obj, time)
    counts = np.bincount(obj, minlength=len(batch))
    return LightCurveBatch(
        object_id=batch.object_id.copy(),
        offsets=np.concatenate([[0], np.cumsum(counts)]),
        time=time[order],
        band=band[order],
        flux=flux[order],
        flux_err=flux_err[order],
        detected=detected[order],
        metadata={k: np.array(v, copy=True) for k, v in batch.metadata.items()},
        alert_id=None if batch.alert_id is None else batch.alert_id.copy(),
        label=None if batch.label is None else batch.label.copy(),
        cutouts=batch.cutouts,
        dropped=dict(batch.dropped),
    )


def _time_order(obj: np.ndarray, time: np.ndarray) -> np.ndarray:
    """Permutation sorting points by object, then time (ties keep their order).

    When the points are already grouped by object (as every producer here leaves them) the
    sort key is one float per point, the object index plus the time's fraction of that
    object's span, sorted stably: NumPy's stable sort (timsort) runs in near-linear time on
    the almost-sorted points of :func:`nightly_bin`, 5-10x faster than ``np.lexsort``. Two
    times closer than the key's resolution (~1e-10 of the span) could swap; the result is
    checked and a ``lexsort`` redoes it then."""
    if len(obj) and (np.diff(obj) >= 0).all():
        starts = np.flatnonzero(np.r_[True, obj[1:] != obj[:-1]])
        lo = np.minimum.reduceat(time, starts)
        span = np.maximum.reduceat(time, starts) - lo
        group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(obj)]))
        scale = np.divide(1.0, span * (1.0 + 1e-9), out=np.zeros_like(span), where=span > 0)
        key = group + (time - lo[group]) * scale[group]
        order = np.argsort(key, kind="stable")
        if _in_order(obj[order], time[order]):
            return order
    return np.lexsort((time, obj))


def _in_order(obj: np.ndarray, time: np.ndarray) -> bool:
    """True when points are sorted by object and by time within each object."""
    if len(obj) < 2:
        return True
    d_obj = np.diff(obj)
    return bool((d_obj >= 0).all() and ((d_obj > 0) | (np.diff(time) >= 0)).all())


def _group_key(obj: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """One int64 key per point, ordered like (obj, *keys) (each key a small-range integer)."""
    key = obj.astype(np.int64)
    for k in keys:
        k = k.astype(np.int64)
        low = int(k.min()) if len(k) else 0
        span = (int(k.max()) - low + 1) if len(k) else 1
        key = key * span + (k - low)
    return key


def _subset(
    batch: LightCurveBatch,
    keep: np.ndarray,
    flux: np.ndarray | None = None,
    detected: np.ndarray | None = None,
) -> LightCurveBatch:
    """The points ``keep`` (with ``flux`` / ``detected`` replaced where given), never
    leaving an object without points."""
    keep = _keep_nonempty(batch, keep)
    flux = batch.flux if flux is None else flux
    detected = batch.detected if detected is None else detected
    return _build(
        batch,
        batch.point_object_index()[keep],
        batch.time[keep],
        batch.band[keep],
        flux[keep],
        batch.flux_err[keep],
        detected[keep],
    )


def _group_starts(*sorted_keys: np.ndarray) -> np.ndarray:
    """Start positions of runs of equal keys in arrays already sorted together."""
    n = len(sorted_keys[0])
    if n == 0:
        return np.zeros(0, np.int64)
    change = np.zeros(n, bool)
    change[0] = True
    for key in sorted_keys:
        change[1:] |= key[1:] != key[:-1]
    return np.flatnonzero(change)


def _band_median_err(batch: LightCurveBatch) -> np.ndarray:
    """(N, len(BANDS)) median flux_err per object and band (NaN where the band is absent)."""
    obj = batch.point_object_index()
    err = batch.flux_err.astype(np.float64)
    key = _group_key(obj, batch.band)
    order = np.lexsort((err, key))
    out = np.full((len(batch), len(BANDS)), np.nan)
    if len(order) == 0:
        return out
    o, b, e = obj[order], batch.band[order], err[order]
    starts = _group_starts(key[order])
    ends = np.append(starts[1:], len(order))
    count = ends - starts
    out[o[starts], b[starts]] = 0.5 * (e[starts + (count - 1) // 2] + e[starts + count // 2])
    return out


# -- processings --------------------------------------------------------------------------
def as_read(batch: LightCurveBatch, rng: np.random.Generator) -> LightCurveBatch:
    """The points unchanged (a copy)."""
    return _subset(batch, np.ones(int(batch.offsets[-1]), bool))


def _alert_cut(
    batch: LightCurveBatch, rng: np.random.Generator, history_days: float, limits: bool
) -> LightCurveBatch:
    """An alert's view at a random time (shared by ``alert`` and ``rubin``).

    Anchor = first significant point (the brightest point where none is). A time is drawn
    uniformly between the anchor and the last point; the alert is the last significant point
    at or before it (an alert is always triggered by a detection). Points from
    ``anchor - history_days`` to the alert are kept; with ``limits`` sub-5-sigma points become
    upper limits (flux 0, error kept), otherwise they keep their flux (forced sources).
    """
    obj, nonempty, _ = _objects(batch)
    sig = significant(batch)
    first_sig = _per_object(np.minimum, np.where(sig, batch.time, np.inf), batch)
    anchor = np.full(len(batch), np.nan)
    bright = _brightest(batch)
    anchor[nonempty] = batch.time[bright[nonempty]]
    anchor = np.where(np.isfinite(first_sig), first_sig, anchor)
    last = _per_object(np.maximum, batch.time, batch)
    draw = anchor + rng.random(len(batch)) * (last - anchor)
    with np.errstate(invalid="ignore"):
        candidate = np.where(sig & (batch.time <= draw[obj]), batch.time, -np.inf)
    alert_time = _per_object(np.maximum, candidate, batch)
    alert_time = np.where(np.isfinite(alert_time), alert_time, anchor)
    with np.errstate(invalid="ignore"):
        keep = (batch.time >= anchor[obj] - history_days) & (batch.time <= alert_time[obj])
    flux = np.where(sig, batch.flux, np.float32(0.0)) if limits else batch.flux
    return _subset(batch, keep, flux=flux, detected=sig)


def alert(batch: LightCurveBatch, rng: np.random.Generator) -> LightCurveBatch:
    """ZTF alert at a random time (30-day history before the first detection, limits)."""
    return _alert_cut(batch, rng, ALERT_HISTORY_DAYS, limits=True)


def forced(
    batch: LightCurveBatch, rng: np.random.Generator, baseline: bool | np.ndarray | None = None
) -> LightCurveBatch:
    """Forced photometry: every point keeps its flux, ``detected`` = significant.

    For objects where ``baseline`` (a bool, or (N,) bools; None = no baseline) a
    pre-explosion baseline is added before the first point: a span drawn uniformly in
    100-1000 days holds ``floor(span / 3)`` epochs, one every 3 days (each moved by up to
    +-1 day) counting back from the first point, cycling through the object's bands from a
    random one; each has flux ~ N(0, sigma) and error sigma, sigma = the object's median
    flux_err in that band.
    """
    n = len(batch)
    obj, nonempty, starts = _objects(batch)
    sig = significant(batch)
    add = np.zeros(n, bool)
    if baseline is not None:
        add = np.broadcast_to(np.asarray(baseline, bool), (n,)).copy()
    add &= batch.lengths > 0
    span = rng.uniform(*BASELINE_SPAN_DAYS, n)
    band_phase = rng.integers(0, len(BANDS), n)
    if not add.any():
        return _subset(batch, np.ones(len(obj), bool), detected=sig)

    who = np.flatnonzero(add)
    epochs = np.floor(span[who] / BASELINE_CADENCE_DAYS).astype(np.int64)
    new_obj = np.repeat(who, epochs)
    k = np.arange(epochs.sum()) - np.repeat(np.cumsum(epochs) - epochs, epochs)
    first = _per_object(np.minimum, batch.time, batch)
    jitter = rng.uniform(-BASELINE_JITTER_DAYS, BASELINE_JITTER_DAYS, len(k))
    new_time = first[new_obj] - BASELINE_CADENCE_DAYS * (k + 1) + jitter

    presence = np.zeros((n, len(BANDS)), bool)
    presence[obj, batch.band] = True
    n_bands = presence.sum(axis=1)
    band_table = np.argsort(~presence, axis=1, kind="stable")  # present bands first, in order
    slot = (k + band_phase[new_obj]) % n_bands[new_obj]
    new_band = band_table[new_obj, slot].astype(np.int8)
    sigma = _band_median_err(batch)[new_obj, new_band]
    new_flux = rng.normal(0.0, 1.0, len(k)) * sigma
    with np.errstate(invalid="ignore"):
        new_det = (sigma > 0) & (np.abs(new_flux) >= DETECTION_SIGMA * sigma)

    # each object's baseline (oldest first) goes just before its own points: the result is
    # already in (object, time) order when the input was, and _build need not sort it
    per_object = np.zeros(n, np.int64)
    per_object[who] = epochs
    before = np.cumsum(per_object) - per_object
    at_old = np.arange(len(obj)) + before[obj] + per_object[obj]
    at_new = batch.offsets[:-1][new_obj] + before[new_obj] + (per_object[new_obj] - 1 - k)

    def place(old: np.ndarray, new: np.ndarray) -> np.ndarray:
        out = np.empty(len(old) + len(new), dtype=np.result_type(old, new))
        out[at_old] = old
        out[at_new] = new
        return out

    return _build(
        batch,
        place(obj, new_obj),
        place(batch.time, new_time),
        place(batch.band, new_band),
        place(batch.flux.astype(np.float64), new_flux),
        place(batch.flux_err.astype(np.float64), sigma),
        place(sig, new_det),
    )


def detections(batch: LightCurveBatch, rng: np.random.Generator) -> LightCurveBatch:
    """Only significant points with positive flux (a magnitude catalogue cannot hold a
    negative flux), all ``detected``."""
    sig = significant(batch)
    return _subset(batch, sig & (batch.flux > 0), detected=sig)


def sparse(batch: LightCurveBatch, rng: np.random.Generator) -> LightCurveBatch:
    """A random 30-60 % (drawn per object) of each object's nights, every point of a kept
    night; ``detected`` = significant."""
    obj = batch.point_object_index()
    night = night_of(batch.time)
    fraction = rng.uniform(*SPARSE_NIGHT_FRACTION, len(batch))
    if len(night) == 0:
        return _subset(batch, np.zeros(0, bool))
    key = obj * (int(night.max() - night.min()) + 1) + (night - night.min())
    uniq, inverse = np.unique(key, return_inverse=True)
    u = rng.random(len(uniq))
    keep = u[inverse] < fraction[obj]
    return _subset(batch, keep, detected=significant(batch))


def rubin(batch: LightCurveBatch, rng: np.random.Generator) -> LightCurveBatch:
    """Rubin-like: one random visit per band per 3-night window (random window phase per
    object), then an alert cut with 365 days of history; sub-5-sigma points keep their flux
    (forced sources), ``detected`` = significant."""
    obj = batch.point_object_index()
    phase = rng.integers(0, RUBIN_CADENCE_NIGHTS, len(batch))
    window = (night_of(batch.time) + phase[obj]) // RUBIN_CADENCE_NIGHTS
    key = _group_key(obj, batch.band, window)
    order = np.argsort(key, kind="stable")
    starts = _group_starts(key[order])
    count = np.diff(np.append(starts, len(order)))
    pick = np.minimum((rng.random(len(starts)) * count).astype(np.int64), count - 1)
    keep = np.zeros(len(obj), bool)
    keep[order[starts + pick]] = True
    thinned = _subset(batch, keep)
    return _alert_cut(thinned, rng, RUBIN_HISTORY_DAYS, limits=False)


_TRANSFORMS: dict[str, Callable[[LightCurveBatch, np.random.Generator], LightCurveBatch]] = {
    "as-read": as_read,
    "alert": alert,
    "detections": detections,
    "sparse": sparse,
    "rubin": rubin,
}


def render(
    batch: LightCurveBatch,
    processing: str,
    rng: np.random.Generator,
    baseline: bool | np.ndarray | None = None,
) -> LightCurveBatch:
    """``batch`` rendered in ``processing`` (a key of :data:`PROCESSINGS`).

    ``baseline`` (bool or (N,) bools; used by ``forced`` only) marks transients that get a
    pre-explosion baseline. Raises ValueError for an unknown processing.
    """
    if processing == "forced":
        return forced(batch, rng, baseline)
    if processing not in _TRANSFORMS:
        raise ValueError(f"unknown processing {processing!r}; expected one of {list(PROCESSINGS)}")
    return _TRANSFORMS[processing](batch, rng)


def render_random(
    batch: LightCurveBatch,
    rng: np.random.Generator,
    processings: Sequence[str] = tuple(PROCESSINGS),
    weights: Sequence[float] | np.ndarray | None = None,
    baseline: bool | np.ndarray | None = None,
) -> tuple[LightCurveBatch, np.ndarray]:
    """Each object rendered in a processing drawn at random (``weights``: relative
    probabilities, uniform when None). Returns the rendered batch (objects in the input
    order) and the (N,) array of processing names (str) used per object."""
    processings = list(processings)
    for name in processings:
        if name not in PROCESSINGS:
            raise ValueError(f"unknown processing {name!r}; expected one of {list(PROCESSINGS)}")
    p = None
    if weights is not None:
        p = np.asarray(weights, np.float64)
        if p.shape != (len(processings),) or (p < 0).any() or p.sum() <= 0:
            raise ValueError("weights must be one non-negative number per processing")
        p = p / p.sum()
    n = len(batch)
    choice = rng.choice(len(processings), size=n, p=p)
    names = np.asarray(processings, dtype=object)[choice].astype(str)
    if baseline is not None:
        baseline = np.broadcast_to(np.asarray(baseline, bool), (n,))
    pieces, index = [], []
    for j, name in enumerate(processings):
        idx = np.flatnonzero(choice == j)
        if len(idx) == 0:
            continue
        part = batch.select(idx)
        pieces.append(render(part, name, rng, None if baseline is None else baseline[idx]))
        index.append(idx)
    if not pieces:
        return as_read(batch, rng), names
    joined = LightCurveBatch.concat(pieces)
    if len(pieces) == 1:
        return joined, names
    return joined.select(np.argsort(np.concatenate(index), kind="stable")), names


# -- history reduction --------------------------------------------------------------------
def nightly_bin(batch: LightCurveBatch) -> LightCurveBatch:
    """One point per object, band and night (:func:`night_of`).

    Flux = inverse-variance weighted mean (weights 1 / flux_err^2), flux_err =
    1 / sqrt(sum of weights), time = weighted mean time, detected = any. A night with a single
    point keeps it exactly; points with a non-finite or non-positive error get weight 0, and
    a night where every weight is 0 takes the plain means of flux, time and error.
    """
    obj = batch.point_object_index()
    if len(obj) == 0:
        return as_read(batch, np.random.default_rng(0))
    night = night_of(batch.time)
    # (object, night, band): points in time order are already sorted by (object, night), so
    # the stable sort below only reorders bands within a night (near-linear), and the binned
    # points come out almost in time order (cheap for _build to finish)
    key = _group_key(obj, night, batch.band)
    # time order within a group: a stable sort keeps it when the points come in time order
    if _in_order(obj, batch.time):
        order = np.argsort(key, kind="stable")
    else:
        order = np.lexsort((batch.time, key))
    o, b, t = obj[order], batch.band[order], batch.time[order]
    f = batch.flux[order].astype(np.float64)
    e = batch.flux_err[order].astype(np.float64)
    d = batch.detected[order]
    starts = _group_starts(key[order])
    count = np.diff(np.append(starts, len(order)))
    # A night with one point keeps it exactly; only the points of multi-point nights are
    # reduced (most nights of an alert stream hold one point per band).
    flux, err, when, det = f[starts], e[starts], t[starts], d[starts]
    multi = np.flatnonzero(count > 1)
    if len(multi):
        points = np.repeat(count > 1, count)
        mf, me, mt, md = f[points], e[points], t[points], d[points]
        n = count[multi]
        sub = np.concatenate([[0], np.cumsum(n)[:-1]])  # group starts within the subset
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(np.isfinite(me) & (me > 0) & np.isfinite(mf), 1.0 / me**2, 0.0)
            rel = mt - np.repeat(mt[sub], n)  # times relative to the night's first point
            sw, swf, swt, sf, st, se = np.add.reduceat(
                np.stack([w, w * np.where(w > 0, mf, 0.0), w * rel, mf, rel, me]), sub, axis=1
            )
            weighted = sw > 0
            flux[multi] = np.where(weighted, swf / sw, sf / n)
            when[multi] = mt[sub] + np.where(weighted, swt / sw, st / n)
            err[multi] = np.where(weighted, 1.0 / np.sqrt(sw), se / n)
        det[multi] = np.logical_or.reduceat(md, sub)
    return _build(batch, o[starts], when, b[starts], flux, err, det)


def cap_history(batch: LightCurveBatch, max_points: int) -> LightCurveBatch:
    """Each object's latest ``max_points`` points (points are in time order within an
    object, as every batch keeps them); apply after :func:`nightly_bin`."""
    if max_points < 1:
        raise ValueError(f"max_points must be at least 1, got {max_points}")
    obj = batch.point_object_index()
    from_end = batch.offsets[1:][obj] - np.arange(len(obj))  # 1 for the last point
    keep = from_end <= max_points
    return _build(
        batch,
        obj[keep],
        batch.time[keep],
        batch.band[keep],
        batch.flux[keep],
        batch.flux_err[keep],
        batch.detected[keep],
    )


def difference_flux(
    batch: LightCurveBatch,
    rng: np.random.Generator | None = None,
    which: np.ndarray | None = None,
) -> LightCurveBatch:
    """Total-flux light curves -> difference flux against a reference, per object and band.

    The reference is the band's median flux (``rng`` None) or the flux of one epoch of that
    band drawn with ``rng``. ``flux_err`` is unchanged and ``detected`` becomes
    ``|flux| >= 5 flux_err`` (the survey's flag on a total-flux point says nothing about the
    difference). ``which`` ((N,) bools, default all) limits the change to some objects.
    """
    obj = batch.point_object_index()
    which = np.ones(len(batch), bool) if which is None else np.asarray(which, bool)
    f = batch.flux.astype(np.float64)
    key = _group_key(obj, batch.band)
    order = np.lexsort((f, key))
    reference = np.zeros(len(obj))
    if len(order):
        starts = _group_starts(key[order])
        count = np.diff(np.append(starts, len(order)))
        fs = f[order]
        if rng is None:
            ref = 0.5 * (fs[starts + (count - 1) // 2] + fs[starts + count // 2])
        else:
            pick = np.minimum((rng.random(len(starts)) * count).astype(np.int64), count - 1)
            ref = fs[starts + pick]
        reference[order] = np.repeat(ref, count)
    mine = which[obj]
    flux = np.where(mine, f - reference, f)
    err = batch.flux_err.astype(np.float64)
    with np.errstate(invalid="ignore"):
        diff_det = (err > 0) & (np.abs(flux) >= DETECTION_SIGMA * err)
    return _build(
        batch,
        obj,
        batch.time,
        batch.band,
        flux,
        batch.flux_err,
        np.where(mine, diff_det, batch.detected),
    )
