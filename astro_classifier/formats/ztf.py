"""ZTF alert packets (Avro) -> canonical light curves (:class:`LightCurveBatch`).

One alert becomes one object: ``object_id`` is the alert's ``objectId``, ``alert_id`` its
``candid`` (as a string; the top-level ``candid`` where present, else ``candidate.candid``:
brokers re-publishing alerts drop the top-level copy), and the per-object metadata are
``ra`` and ``dec`` of the alert's ``candidate`` (degrees, J2000, float64) and
``solar_system`` (1.0 when ``ssdistnr``, the distance to the nearest known solar-system
object, is below 5 arcsec). The points are the ``candidate`` plus the
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

ZTF alerts come as Avro containers (ZTF's own ``ztf.alert`` schema, or a broker's
re-publication: Spark's ``topLevelRecord`` with every field nullable, any Avro codec) and as
Parquet rows (Fink's and ALeRCE's data lakes: one row per alert, ``objectId``, ``candid``,
``candidate`` struct, ``prv_candidates`` list, optional ``fp_hists``, plus broker columns
that are not read). Records are recognised by their fields (``objectId`` and a ``candidate``
with ``fid`` and ``magpsf``), not by schema names.

Points the reader cannot use are counted in ``LightCurveBatch.dropped``: history entries
with neither a magnitude nor a limit, forced-photometry epochs without a measurement; the
format registry then applies :func:`astro_classifier.core.quality.clean_points`.

Times are checked against the exposure time that ZTF encodes in every point's ``pid``
(night number since 2017-01-01 UT in the leading digits, then the UT fraction of the day in
five digits); real alerts agree with it to 1e-5 d. Alerts re-published by Fink with schema
4.02 carry a ``jd`` overwritten by a replay time (every ``prv_candidates`` entry of all 561
such files in the shared data holds the same ``jd``). Where ``jd`` and the ``pid`` time differ
by more than 1e-3 d the ``pid`` time is used and a warning says how many points were repaired.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from astro_classifier.core.cutouts import LABEL_FIELDS, STAMP_SIZE, STAMPS, CutoutBatch
from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import BAND_INDEX, SOLAR_SYSTEM, LightCurveBatch, as_id_array
from astro_classifier.core.units import (
    ab_mag_to_njy,
    mjd_from_jd,
    ztf_difference_mag_to_njy,
    ztf_forced_flux_to_njy,
)
from astro_classifier.formats.avro import decode_avro_container, merge_projections
from astro_classifier.formats.base import InputFormat, ReadOptions, project_arrow_schema
from astro_classifier.formats.stamps import label_value, parquet_stamp_records, stamps_to_batch

logger = logging.getLogger(__name__)

EXPECTED = (
    "expected ZTF alerts (an Avro container or Parquet rows with objectId and a candidate "
    "holding fid and magpsf)"
)
ZTF_ALERT_FIELDS = ("objectId", "candidate")  # candid is optional (inside candidate too)
ZTF_CANDIDATE_FIELDS = ("fid", "magpsf")  # what tells a ZTF candidate from ATLAS', say
# Top-level columns of ZTF alerts stored as Parquet rows; broker columns are not read.
PARQUET_COLUMNS = ("objectId", "candid", "candidate", "prv_candidates", "fp_hists")
SOLAR_SYSTEM_RADIUS_ARCSEC = 5.0  # ssdistnr below this: the alert is a known asteroid
DROP_NO_MAGNITUDE = "history entry without magnitude or limit"
DROP_FORCED_NO_MEASUREMENT = "forced photometry without a measurement"
DROP_SAME_EPOCH = "repeat of a point at the same epoch (kept once)"
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
# What the reader uses of an alert: Avro containers are decoded with these fields only
# (formats/avro.py; the cutouts and the other candidate fields are skipped, not decoded).
CANDIDATE_FIELDS = (*POINT_FIELDS, "candid", "ra", "dec", "ssdistnr")
AVRO_FIELDS = (
    "objectId",
    "candid",
    ("candidate", CANDIDATE_FIELDS),
    ("prv_candidates", POINT_FIELDS),
    ("fp_hists", POINT_FIELDS),
)
_FIDS = frozenset(ZTF_FID_BANDS)
_FID_BAND_TABLE = np.zeros(max(ZTF_FID_BANDS) + 1, dtype=np.int8)
_FID_BAND_TABLE[list(ZTF_FID_BANDS)] = list(ZTF_FID_BANDS.values())
# Point kinds, in the order they win a (time, fid) tie.
_DETECTION, _NON_DETECTION, _FORCED = 0, 1, 2


def decode_ztf_avro_bytes(data: bytes, source: str) -> list[dict[str, Any]]:
    """Decode an Avro container (a file's or a Kafka message's bytes) into alert records.

    Raises :class:`InputError` naming ``source`` when the bytes are not a complete Avro
    container or hold no record. Whether the records are ZTF alerts is checked by
    :func:`ztf_records_to_batch`. Records hold only the fields the reader uses
    (:data:`AVRO_FIELDS`, where the writer schema has them); the writer schema is parsed
    once per distinct container header.
    """
    return decode_avro_container(data, source, EXPECTED, AVRO_FIELDS)[1]


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
    points: list[dict[str, Any]] = []  # the points with flux info, alert by alert
    point_kind: list[int] = []
    alert_sizes: list[int] = []  # points of each alert in ``points``
    object_ids, alert_ids, candids, ra, dec, solar_system = [], [], [], [], [], []
    no_flux_info = 0
    invalid: Exception | None = None  # what the first record that is not a ZTF alert raised
    for record in records:
        try:
            _check_alert(record, source)
            candidate = record["candidate"]
            candid = record.get("candid")
            candid = candidate.get("candid") if candid is None else candid
            metadata = (_float(candidate.get("ra")), _float(candidate.get("dec")))
            metadata += (_solar_system(candidate),)
            history = [candidate, *(record.get("prv_candidates") or [])]
            kinds = [_point_kind(point) for point in history]
            forced = record.get("fp_hists") or []
        except Exception as exc:  # raised below, unless a point of an earlier alert is bad
            invalid = exc
            break
        object_ids.append(record["objectId"])
        candids.append(candid)
        alert_ids.append(None if candid is None else str(candid))
        ra.append(metadata[0])
        dec.append(metadata[1])
        solar_system.append(metadata[2])
        if None in kinds:
            no_flux_info += kinds.count(None)
            history = [
                point for point, kind in zip(history, kinds, strict=True) if kind is not None
            ]
            kinds = [kind for kind in kinds if kind is not None]
        points += history
        points += forced
        point_kind += kinds
        point_kind += [_FORCED] * len(forced)
        alert_sizes.append(len(history) + len(forced))

    # Columns of the point fields, one pass each (None where a point lacks the field).
    columns = {name: [point.get(name) for point in points] for name in POINT_FIELDS}
    alert = np.repeat(np.arange(len(alert_sizes), dtype=np.int64), alert_sizes)
    _check_points(columns, alert, object_ids, candids, source)
    if invalid is not None:
        raise invalid

    kind = np.asarray(point_kind, dtype=np.int8)
    jd = np.asarray(columns["jd"], dtype=np.float64)  # no None: checked
    pid_jd = _pid_exposure_jd(columns["pid"])
    repair = np.abs(jd - pid_jd) > JD_REPAIR_TOLERANCE_DAYS  # False where pid is null (NaN)
    time = mjd_from_jd(np.where(repair, pid_jd, jd))
    band = _FID_BAND_TABLE[np.asarray(columns["fid"], dtype=np.int64)]  # fid checked

    floats = {
        name: _float_column(columns[name])
        for name in (
            "magpsf",
            "sigmapsf",
            "diffmaglim",
            "forcediffimflux",
            "forcediffimfluxunc",
            "magzpsci",
        )
    }

    flux = np.full(len(kind), np.nan)
    flux_err = np.full(len(kind), np.nan)
    is_detection = kind == _DETECTION
    flux[is_detection], flux_err[is_detection] = ztf_difference_mag_to_njy(
        _masked(floats["magpsf"], columns["magpsf"], is_detection),
        _masked(floats["sigmapsf"], columns["sigmapsf"], is_detection),
        np.asarray(columns["isdiffpos"], dtype=object)[is_detection].astype(str),
    )
    is_limit = kind == _NON_DETECTION
    limit_flux, _ = ab_mag_to_njy(
        _masked(floats["diffmaglim"], columns["diffmaglim"], is_limit), 0.0
    )
    flux[is_limit], flux_err[is_limit] = 0.0, limit_flux / LIMIT_SIGMA
    is_forced = kind == _FORCED
    forced_flux = _masked(floats["forcediffimflux"], columns["forcediffimflux"], is_forced)
    forced_err = _masked(floats["forcediffimfluxunc"], columns["forcediffimfluxunc"], is_forced)
    forced_zp = _masked(floats["magzpsci"], columns["magzpsci"], is_forced)
    flux[is_forced], flux_err[is_forced] = ztf_forced_flux_to_njy(
        forced_flux, forced_err, forced_zp
    )
    sentinel = np.zeros(len(kind), dtype=bool)
    sentinel[is_forced] = (
        (forced_flux == FORCED_PHOT_SENTINEL)
        | ~np.isfinite(forced_flux)
        | ~(forced_err > 0)
        | ~np.isfinite(forced_zp)
    )
    same_epoch = _forced_at_detection_epoch(alert, kind, time) & ~sentinel
    keep = ~sentinel & ~same_epoch  # non-finite values are dropped (and counted) by clean_points

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
    dropped = {
        DROP_NO_MAGNITUDE: no_flux_info,
        DROP_FORCED_NO_MEASUREMENT: int(sentinel.sum()),
        DROP_SAME_EPOCH: int(same_epoch.sum()) + int(same_as_previous.sum()),
    }
    batch = LightCurveBatch(
        object_id=as_id_array(object_ids),
        offsets=np.concatenate([[0], np.cumsum(counts)]),
        time=time[order],
        band=band[order],
        flux=flux[order],
        flux_err=flux_err[order],
        detected=kind[order] == _DETECTION,
        metadata={
            "ra": np.asarray(ra, np.float64),
            "dec": np.asarray(dec, np.float64),
            SOLAR_SYSTEM: np.asarray(solar_system, np.float64),
        },
        alert_id=np.asarray(alert_ids, dtype=object),
        dropped={reason: n for reason, n in dropped.items() if n},
    )
    return batch, int(repair[order].sum())


def _check_points(
    columns: dict[str, list[Any]],
    alert: np.ndarray,
    object_ids: list[Any],
    candids: list[Any],
    source: str,
) -> None:
    """InputError for the first point without a jd or with a fid that is not 1, 2 or 3."""
    jds, fids = columns["jd"], columns["fid"]
    if None not in jds and set(fids) <= _FIDS:
        return
    for index, (jd, fid) in enumerate(zip(jds, fids, strict=True)):
        if jd is None or fid not in ZTF_FID_BANDS:
            a = alert[index]
            raise InputError(
                source,
                f"alert {object_ids[a]} candid={candids[a]}: a point has jd={jd!r}, "
                f"fid={fid!r}; expected a jd and fid 1 (g), 2 (r) or 3 (i)",
            )


def _check_alert(record: object, source: str) -> None:
    if not isinstance(record, dict):
        raise InputError(source, f"a record is a {type(record).__name__}; {EXPECTED}")
    missing = [name for name in ZTF_ALERT_FIELDS if record.get(name) is None]
    if missing or not isinstance(record["candidate"], dict):
        raise InputError(source, f"record lacks {missing or ['candidate (a record)']}; {EXPECTED}")
    if "fid" not in record["candidate"]:
        raise InputError(
            source,
            f"the candidate of {record['objectId']!r} has no fid (fields "
            f"{sorted(record['candidate'])[:8]}...); {EXPECTED}",
        )


# -- recognising ZTF alerts -------------------------------------------------------------
def _record_fields(avro_type: Any) -> dict[str, Any]:
    """name -> type of an Avro record type, looking through nullable unions (Spark writes
    ``["long", "null"]`` for every field); {} when ``avro_type`` holds no record."""
    if isinstance(avro_type, list):
        for member in avro_type:
            fields = _record_fields(member)
            if fields:
                return fields
        return {}
    if isinstance(avro_type, dict) and avro_type.get("type") == "record":
        return {f["name"]: f["type"] for f in avro_type.get("fields", []) if isinstance(f, dict)}
    return {}


def is_ztf_alert_schema(schema: Any) -> bool:
    """True if an Avro writer schema describes ZTF alerts: ``objectId`` and a ``candidate``
    record with ``fid`` and ``magpsf`` (ZTF's ``ztf.alert`` or a broker's re-publication)."""
    fields = _record_fields(schema)
    candidate = _record_fields(fields.get("candidate"))
    return "objectId" in fields and set(ZTF_CANDIDATE_FIELDS) <= set(candidate)


def is_ztf_parquet_schema(schema: pa.Schema) -> bool:
    """True if a Parquet file holds ZTF alerts as rows (``objectId``, ``candidate`` struct
    with ``fid`` and ``magpsf``)."""
    if "objectId" not in schema.names or "candidate" not in schema.names:
        return False
    candidate = schema.field("candidate").type
    return pa.types.is_struct(candidate) and all(
        candidate.get_field_index(name) >= 0 for name in ZTF_CANDIDATE_FIELDS
    )


# -- Parquet rows -----------------------------------------------------------------------
def ztf_parquet_records(parquet: pq.ParquetFile, source: str) -> list[dict[str, Any]]:
    """The alert records of a Parquet file of ZTF alert rows (only the columns used)."""
    if not is_ztf_parquet_schema(parquet.schema_arrow):
        raise InputError(
            source,
            f"columns {parquet.schema_arrow.names[:10]} lack objectId and a candidate struct "
            f"with fid and magpsf; {EXPECTED}",
        )
    columns = [name for name in PARQUET_COLUMNS if name in parquet.schema_arrow.names]
    table = parquet.read(columns=columns)
    # ~100 candidate fields per row otherwise become Python objects: 2.5x the conversion time
    return table.cast(project_arrow_schema(table.schema, AVRO_FIELDS)).to_pylist()


def read_ztf_parquet(paths: Sequence[Path | str]) -> LightCurveBatch:
    """Read ZTF alerts stored as Parquet rows (one alert per row) into one batch."""
    batches = []
    for path in paths:
        try:
            records = ztf_parquet_records(pq.ParquetFile(path), str(path))
        except (OSError, pa.ArrowException) as exc:
            raise InputError(path, f"cannot read Parquet ({exc}); {EXPECTED}") from exc
        batches.append(ztf_records_to_batch(records, str(path)))
    return LightCurveBatch.concat(batches)


def decode_ztf_parquet_bytes(data: bytes, source: str) -> list[dict[str, Any]]:
    """The alert records of a Parquet file held in memory (a Kafka message's value)."""
    try:
        return ztf_parquet_records(pq.ParquetFile(pa.BufferReader(data)), source)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(source, f"cannot read Parquet ({exc}); {EXPECTED}") from exc


def _solar_system(candidate: dict[str, Any]) -> float:
    """1.0 when a known solar-system object lies within SOLAR_SYSTEM_RADIUS_ARCSEC of the
    candidate (``ssdistnr``; ZTF writes -999 or null when there is none), else 0.0."""
    distance = candidate.get("ssdistnr")
    if distance is None or not np.isfinite(distance) or distance < 0:
        return 0.0
    return float(distance < SOLAR_SYSTEM_RADIUS_ARCSEC)


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
    if None in pids:
        pids = [-1 if p is None else p for p in pids]
    pid = np.array(pids, dtype=np.int64)
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


def _float_column(values: list[Any]) -> np.ndarray | None:
    """``values`` as float64 (null -> NaN) in one conversion; None where some value does not
    convert (only the values of the points that use the field must: see :func:`_masked`)."""
    try:
        return np.array(values, np.float64)  # None converts to NaN
    except (TypeError, ValueError):
        return None


def _masked(column: np.ndarray | None, values: list[Any], mask: np.ndarray) -> np.ndarray:
    """``values[mask]`` as float64, null -> NaN (:func:`_floats`), from the converted column."""
    return _floats(values, mask) if column is None else column[mask]


def _floats(values: list[Any], mask: np.ndarray) -> np.ndarray:
    """``values[mask]`` as float64, null -> NaN."""
    return np.array(
        [np.nan if v is None else v for v, m in zip(values, mask, strict=True) if m], np.float64
    )


def _float(value: Any) -> float:
    return np.nan if value is None else float(value)


# -- image stamps -----------------------------------------------------------------------
# Projection of the stamps: the ids, the labels and the cutouts; nothing of the light curves.
STAMP_FIELDS = (
    "objectId",
    "candid",
    ("candidate", ("candid", *LABEL_FIELDS)),
    *STAMPS,
)


def ztf_cutouts(
    records: Iterable[Mapping[str, Any]], source: str, size: int = STAMP_SIZE
) -> CutoutBatch:
    """Decoded ZTF alert records (Avro or Parquet rows, holding the cutouts) -> batch."""
    rows = []
    for record in records:
        candidate = record.get("candidate")
        if not isinstance(record, Mapping) or not isinstance(candidate, Mapping):
            raise InputError(source, "a record has no candidate; expected ZTF alert records")
        if record.get("objectId") is None:
            raise InputError(source, "a record has no objectId; expected ZTF alert records")
        candid = record.get("candid") or candidate.get("candid")
        labels = {k: label_value(candidate.get(k)) for k in LABEL_FIELDS}
        rows.append((str(record["objectId"]), str(candid), labels, record))
    return stamps_to_batch(rows, "ztf", source, size)


# One decode for the light curves and the stamps (the worker, for models with an image tower).
AVRO_STAMP_FIELDS = merge_projections(AVRO_FIELDS, STAMP_FIELDS)


def _avro_stamps(value: bytes, _schemas: Any, source: str, size: int) -> CutoutBatch:
    return ztf_cutouts(
        decode_avro_container(value, source, EXPECTED, STAMP_FIELDS)[1], source, size
    )


def _avro_records_with_stamps(value: bytes, _schemas: Any, source: str) -> list[Any]:
    return decode_avro_container(value, source, EXPECTED, AVRO_STAMP_FIELDS)[1]


def _parquet_stamps(value: bytes, _schemas: Any, source: str, size: int) -> CutoutBatch:
    records = parquet_stamp_records(value, source, STAMP_FIELDS, "ztf-parquet")
    return ztf_cutouts(records, source, size)


# -- the formats ------------------------------------------------------------------------
def _read_avro(paths: list[Path], _options: ReadOptions) -> LightCurveBatch:
    return read_ztf_avro(paths)


def _avro_records(value: bytes, _schemas: Any, source: str) -> list[Any]:
    return decode_ztf_avro_bytes(value, source)


def _decode_avro(value: bytes, schemas: Any, source: str) -> LightCurveBatch:
    return ztf_records_to_batch(_avro_records(value, schemas, source), source)


def _read_parquet(paths: list[Path], _options: ReadOptions) -> LightCurveBatch:
    return read_ztf_parquet(paths)


def _decode_parquet(value: bytes, _schemas: Any, source: str) -> LightCurveBatch:
    return ztf_records_to_batch(decode_ztf_parquet_bytes(value, source), source)


ZTF_AVRO = InputFormat(
    "ztf-avro",
    "ZTF alert Avro containers (ZTF's or a broker's re-publication)",
    lambda probe: probe.is_avro_container and is_ztf_alert_schema(probe.avro_schema),
    _read_avro,
    _decode_avro,
    decode_records=_avro_records,
    records_to_batch=ztf_records_to_batch,
    message_per_file=True,
    stamps=_avro_stamps,
    decode_records_with_stamps=_avro_records_with_stamps,
    records_stamps=ztf_cutouts,
)
ZTF_PARQUET = InputFormat(
    "ztf-parquet",
    "ZTF alerts as Parquet rows {objectId, candidate, prv_candidates}",
    lambda probe: probe.is_parquet and is_ztf_parquet_schema(probe.parquet_schema),
    _read_parquet,
    _decode_parquet,
    stamps=_parquet_stamps,
)
