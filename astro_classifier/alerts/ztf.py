"""ZTF alert packets (Avro) -> canonical light curves (:class:`LightCurveBatch`).

One alert becomes one object: ``object_id`` is the alert's ``objectId``, ``alert_id`` its
``candid`` (as a string), and the per-object metadata are ``ra`` and ``dec`` of the alert's
``candidate`` (degrees, J2000, float64). The points are the ``candidate`` plus the
``prv_candidates`` plus the forced photometry ``fp_hists`` where the alert carries it:

- **detection** (``magpsf`` not null): flux from ``magpsf``/``sigmapsf`` with the sign of
  ``isdiffpos`` (difference-image flux, nJy; :func:`ztf_difference_mag_to_njy`),
  ``detected=True``.
- **non-detection** (no ``magpsf`` but a ``diffmaglim``): ``flux = 0`` and ``flux_err`` =
  (flux of the 5-sigma limiting magnitude ``diffmaglim``, nJy) / 5, i.e. the 1-sigma noise the
  limit implies; ``detected=False``. A zero flux with that error tells a model "nothing was
  seen down to this depth" in the same unit as every other point.
- **forced photometry** (records with ``forcediffimflux``): flux from
  ``forcediffimflux``/``forcediffimfluxunc`` and the science zero point ``magzpsci``
  (:func:`ztf_forced_flux_to_njy`), ``detected=False``. Epochs whose flux, error or zero point
  is null, non-finite or the sentinel -99999 (or whose error is not positive) are skipped, and
  so are epochs within 1e-4 d of one of the alert's detections (the detection is kept).
  Schema 4.x carries them in ``fp_hists``; the schema-3.5 forced-photometry test alerts carry
  the same records inside ``prv_candidates``: both are read.

``fid`` 1, 2, 3 map to the canonical bands g, r, i; time is ``jd`` converted to MJD. Points
with identical (time, ``fid``) are kept once (detection before non-detection before forced
photometry), and points are sorted by time.

Times are checked against the exposure time that ZTF encodes in every point's ``pid``
(night number since 2017-01-01 UT in the leading digits, then the UT fraction of the day in
five digits); real alerts agree with it to 1e-5 d. Alerts re-published by Fink with schema
4.02 carry a ``jd`` overwritten by a replay time (every ``prv_candidates`` entry of all 561
such files in the shared data holds the same ``jd``). Where ``jd`` and the ``pid`` time differ
by more than 1e-3 d the ``pid`` time is used and a warning says how many points were repaired.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from astro_classifier.alerts.avro import decode_avro_container
from astro_classifier.data.lightcurve import BAND_INDEX, LightCurveBatch
from astro_classifier.data.units import (
    ab_mag_to_njy,
    mjd_from_jd,
    ztf_difference_mag_to_njy,
    ztf_forced_flux_to_njy,
)
from astro_classifier.errors import InputError

logger = logging.getLogger(__name__)

EXPECTED = "expected a ZTF alert Avro container (fields objectId, candid, candidate)"
ZTF_ALERT_FIELDS = ("objectId", "candid", "candidate")
# ZTF filter id -> canonical band index.
ZTF_FID_BANDS: dict[int, int] = {1: BAND_INDEX["g"], 2: BAND_INDEX["r"], 3: BAND_INDEX["i"]}
FORCED_PHOT_SENTINEL = -99999.0  # ZTF forced photometry: "no measurement"
SAME_EPOCH_DAYS = 1e-4  # forced epoch this close to a detection is that detection's exposure
LIMIT_SIGMA = 5.0  # ``diffmaglim`` is a 5-sigma limiting magnitude
# ``pid`` encodes the exposure: night ``pid // 10**9`` counted from 2017-01-01 00:00 UT (JD),
# UT day fraction in the next five digits.
PID_NIGHT_ZERO_JD = 2457754.5
JD_REPAIR_TOLERANCE_DAYS = 1e-3

# Fields read from candidate, prv_candidates and fp_hists records (survey names verbatim).
POINT_FIELDS = (
    "jd",
    "pid",
    "fid",
    "magpsf",
    "sigmapsf",
    "isdiffpos",
    "diffmaglim",
    "forcediffimflux",
    "forcediffimfluxunc",
    "magzpsci",
)
# Point kinds, in the order they win a (time, fid) tie.
_DETECTION, _NON_DETECTION, _FORCED = 0, 1, 2


def decode_ztf_avro_bytes(data: bytes, source: str) -> list[dict[str, Any]]:
    """Decode an Avro container (a file's or a Kafka message's bytes) into alert records.

    Raises :class:`InputError` naming ``source`` when the bytes are not a complete Avro
    container or hold no record. Whether the records are ZTF alerts is checked by
    :func:`ztf_records_to_batch`.
    """
    return decode_avro_container(data, source, EXPECTED)[1]


def read_ztf_avro(paths: Sequence[Path | str]) -> LightCurveBatch:
    """Read ZTF alert Avro container files (one or more alerts each) into one batch.

    One object per alert, in file order then record order (see the module docstring for
    the point rules and units). A file that cannot be read or decoded, or whose records are
    not ZTF alerts, raises :class:`InputError` naming it.
    """
    if not paths:
        raise InputError("ztf-avro", "no input files given")
    batches = []
    repaired = total = 0
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise InputError(path, f"cannot read file ({exc}); {EXPECTED}") from exc
        batch, n_repaired = _records_to_batch(decode_ztf_avro_bytes(data, str(path)), str(path))
        batches.append(batch)
        repaired += n_repaired
        total += len(batch.time)
    _warn_repaired_times(repaired, total, f"{len(paths)} ZTF file(s)")
    return LightCurveBatch.concat(batches)


def ztf_records_to_batch(records: list[dict[str, Any]], source: str) -> LightCurveBatch:
    """Convert decoded ZTF alert records into a batch, one object per alert.

    ``source`` names where the records came from (a path, or topic/partition/offset) in
    errors and warnings. See the module docstring for the point rules; fluxes in nJy, time
    in MJD.
    """
    batch, repaired = _records_to_batch(records, source)
    _warn_repaired_times(repaired, len(batch.time), source)
    return batch


def _warn_repaired_times(repaired: int, total: int, source: str) -> None:
    # DEBUG, not WARNING: every Fink re-published alert has it, and a stream would log one
    # line per message.
    if repaired:
        logger.debug(
            "%s: %d of %d ZTF points carry a jd more than %g d away from the exposure time "
            "encoded in their pid (a re-published alert); the pid time was used",
            source,
            repaired,
            total,
            JD_REPAIR_TOLERANCE_DAYS,
        )


def _records_to_batch(records: list[dict[str, Any]], source: str) -> tuple[LightCurveBatch, int]:
    """The batch of ``records`` and the number of point times repaired from ``pid``."""
    columns: dict[str, list[Any]] = {name: [] for name in POINT_FIELDS}
    point_alert: list[int] = []
    point_kind: list[int] = []
    object_ids, alert_ids, ra, dec = [], [], [], []
    for alert_index, record in enumerate(records):
        _check_alert(record, source)
        candidate = record["candidate"]
        object_ids.append(record["objectId"])
        alert_ids.append(str(record["candid"]))
        ra.append(_float(candidate.get("ra")))
        dec.append(_float(candidate.get("dec")))
        history = [candidate, *(record.get("prv_candidates") or [])]
        forced = record.get("fp_hists") or []
        points = [(point, _point_kind(point)) for point in history]
        points += [(point, _FORCED) for point in forced]
        for point, kind in points:
            if kind is None:
                continue
            if point.get("jd") is None or point.get("fid") not in ZTF_FID_BANDS:
                raise InputError(
                    source,
                    f"alert candid={record['candid']}: a point has jd={point.get('jd')!r}, "
                    f"fid={point.get('fid')!r}; expected a jd and fid 1 (g), 2 (r) or 3 (i)",
                )
            point_alert.append(alert_index)
            point_kind.append(kind)
            for name in POINT_FIELDS:
                columns[name].append(point.get(name))

    alert = np.asarray(point_alert, dtype=np.int64)
    kind = np.asarray(point_kind, dtype=np.int8)
    jd = np.asarray(columns["jd"], dtype=np.float64)
    pid_jd = _pid_exposure_jd(columns["pid"])
    repair = np.abs(jd - pid_jd) > JD_REPAIR_TOLERANCE_DAYS  # False where pid is null (NaN)
    time = mjd_from_jd(np.where(repair, pid_jd, jd))
    band = np.array([ZTF_FID_BANDS[f] for f in columns["fid"]], dtype=np.int8)

    flux = np.full(len(kind), np.nan)
    flux_err = np.full(len(kind), np.nan)
    is_detection = kind == _DETECTION
    flux[is_detection], flux_err[is_detection] = ztf_difference_mag_to_njy(
        _floats(columns["magpsf"], is_detection),
        _floats(columns["sigmapsf"], is_detection),
        np.asarray(columns["isdiffpos"], dtype=object)[is_detection].astype(str),
    )
    is_limit = kind == _NON_DETECTION
    limit_flux, _ = ab_mag_to_njy(_floats(columns["diffmaglim"], is_limit), 0.0)
    flux[is_limit], flux_err[is_limit] = 0.0, limit_flux / LIMIT_SIGMA
    is_forced = kind == _FORCED
    forced_flux = _floats(columns["forcediffimflux"], is_forced)
    forced_err = _floats(columns["forcediffimfluxunc"], is_forced)
    flux[is_forced], flux_err[is_forced] = ztf_forced_flux_to_njy(
        forced_flux, forced_err, _floats(columns["magzpsci"], is_forced)
    )
    sentinel = np.zeros(len(kind), dtype=bool)
    sentinel[is_forced] = (forced_flux == FORCED_PHOT_SENTINEL) | ~(forced_err > 0)
    keep = np.isfinite(flux) & np.isfinite(flux_err) & ~sentinel
    keep &= ~_forced_at_detection_epoch(alert, kind, time)

    # Sort by (alert, time, band, kind) so that the first of equal (alert, time, band) wins.
    order = np.flatnonzero(keep)
    order = order[np.lexsort((kind[order], band[order], time[order], alert[order]))]
    same_as_previous = (
        (alert[order][1:] == alert[order][:-1])
        & (time[order][1:] == time[order][:-1])
        & (band[order][1:] == band[order][:-1])
    )
    order = order[np.concatenate([[True], ~same_as_previous])] if len(order) else order

    counts = np.bincount(alert[order], minlength=len(records))
    batch = LightCurveBatch(
        object_id=np.asarray(object_ids, dtype=str),
        offsets=np.concatenate([[0], np.cumsum(counts)]),
        time=time[order],
        band=band[order],
        flux=flux[order],
        flux_err=flux_err[order],
        detected=kind[order] == _DETECTION,
        metadata={"ra": np.asarray(ra, np.float64), "dec": np.asarray(dec, np.float64)},
        alert_id=np.asarray(alert_ids, dtype=str),
    )
    return batch, int(repair[order].sum())


def _check_alert(record: object, source: str) -> None:
    if not isinstance(record, dict):
        raise InputError(source, f"a record is a {type(record).__name__}; {EXPECTED}")
    missing = [name for name in ZTF_ALERT_FIELDS if record.get(name) is None]
    if missing or not isinstance(record["candidate"], dict):
        raise InputError(source, f"record lacks {missing or ['candidate (a record)']}; {EXPECTED}")


def _point_kind(point: dict[str, Any]) -> int | None:
    """Detection, non-detection or forced photometry; None when the point has no flux info."""
    if point.get("magpsf") is not None:
        return _DETECTION
    if "forcediffimflux" in point:  # an fp_hist record (schema 3.5 test alerts: in prv_candidates)
        return _FORCED
    if point.get("diffmaglim") is not None:
        return _NON_DETECTION
    return None


def _pid_exposure_jd(pids: list[int | None]) -> np.ndarray:
    """Exposure start (JD, to 1e-5 d) encoded in ZTF processing ids; NaN where pid is null."""
    pid = np.array([-1 if p is None else p for p in pids], dtype=np.int64)
    exposure_jd = PID_NIGHT_ZERO_JD + pid // 10**9 + (pid // 10**4 % 10**5) / 1e5
    return np.where(pid >= 0, exposure_jd, np.nan)


def _forced_at_detection_epoch(alert: np.ndarray, kind: np.ndarray, time: np.ndarray) -> np.ndarray:
    """True for forced-photometry points within SAME_EPOCH_DAYS of a detection of their alert."""
    coincident = np.zeros(len(kind), dtype=bool)
    is_forced = kind == _FORCED
    for alert_index in np.unique(alert[is_forced]):
        detection_times = time[(alert == alert_index) & (kind == _DETECTION)]
        forced = np.flatnonzero(is_forced & (alert == alert_index))
        distance = np.abs(time[forced, None] - detection_times[None, :])
        coincident[forced] = (distance < SAME_EPOCH_DAYS).any(axis=1)
    return coincident


def _floats(values: list[Any], mask: np.ndarray) -> np.ndarray:
    """``values[mask]`` as float64, null -> NaN."""
    return np.array(
        [np.nan if v is None else v for v, m in zip(values, mask, strict=True) if m], np.float64
    )


def _float(value: Any) -> float:
    return np.nan if value is None else float(value)
