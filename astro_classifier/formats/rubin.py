"""Rubin/LSST alerts (Avro container files, Confluent wire format, Parquet rows) -> batch.

One alert becomes one object of the :class:`LightCurveBatch` (so an object observed in
several alerts appears several times, once per alert):

- ``object_id``: the ``diaObjectId`` of the triggering ``diaSource`` (exact int64; the
  ``diaObject`` copy is a fallback because Fink's Parquet stores it as a lossy float64),
  or its ``ssObjectId`` for a solar-system alert, which has ``diaObjectId`` 0 and no
  ``diaObject``.
- ``alert_id``: the triggering ``diaSourceId`` (the top-level ``diaSourceId`` of schema
  v8+, ``diaSource.diaSourceId`` before). Rubin v3-v7 also carry ``alertId``, equal to
  ``diaSourceId`` in every real alert here, but ELAsTiCC and the schema sample alerts set
  it to the placeholder 1231321321, which would make alert ids collide.
- points: the ``diaSource`` and ``prvDiaSources`` (``detected`` True) and
  ``prvDiaForcedSources`` (``detected`` False), de-duplicated on (time, band) with
  detections winning (forced photometry is also measured at the visits of detections).
  Time is MJD (TAI), flux and flux error are nJy, as Rubin publishes them.
- metadata: ``solar_system`` (1.0 for an alert of a known solar-system object: its
  ``diaSource`` has an ``ssObjectId``), ``ra``, ``dec`` (degrees) from the ``diaObject``
  (else the ``diaSource``), and
  ``hostgal_photoz``, ``hostgal_photoz_err``, ``mwebv`` (mag) where the alert carries host
  information (ELAsTiCC), NaN elsewhere.

Field names across the schema versions (lsst/alert_packet 3.0-11.0, ELAsTiCC 0.9):

=================  =========================  ===========================
quantity           v3.0, v4.0, ELAsTiCC 0.9   v5.0 - v11.0
=================  =========================  ===========================
time (MJD TAI)     ``midPointTai``            ``midpointMjdTai``
band               ``filterName``             ``band``
flux, error (nJy)  ``psFlux``, ``psFluxErr``  ``psfFlux``, ``psfFluxErr``
declination (deg)  ``decl``                   ``dec``
=================  =========================  ===========================

v3.0-v7.4 have a top-level ``alertId``; v8.0+ replace it by the top-level ``diaSourceId``.
ELAsTiCC 0.9 names the host redshift ``hostgal_z``/``hostgal_z_err`` (later ELAsTiCC
releases: ``hostgal_zphot``/``hostgal_zphot_err``) and marks missing values with -9.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fastavro.schema import load_schema

from astro_classifier.core.cutouts import STAMP_SIZE, STAMPS, CutoutBatch
from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import (
    SOLAR_SYSTEM,
    LightCurveBatch,
    as_id_array,
    band_indices,
)
from astro_classifier.core.units import rubin_flux_to_njy
from astro_classifier.formats.avro import (
    WIRE_HEADER,
    WIRE_MAGIC_BYTE,
    Projection,
    decode_avro_container,
    merge_projections,
    projected_reader_schema,
)
from astro_classifier.formats.base import InputFormat, ReadOptions, project_arrow_schema
from astro_classifier.formats.stamps import parquet_stamp_records, stamps_to_batch

logger = logging.getLogger(__name__)

PathLike = str | Path

# Field-name variants, newest first (see the module docstring).
TIME_FIELDS = ("midpointMjdTai", "midPointTai")
BAND_FIELDS = ("band", "filterName")
FLUX_FIELDS = ("psfFlux", "psFlux")
FLUX_ERR_FIELDS = ("psfFluxErr", "psFluxErr")
DEC_FIELDS = ("dec", "decl")
# Canonical metadata name -> diaObject field names that carry it (newest first).
HOST_FIELDS: dict[str, tuple[str, ...]] = {
    "hostgal_photoz": ("hostgal_zphot", "hostgal_z"),
    "hostgal_photoz_err": ("hostgal_zphot_err", "hostgal_z_err"),
    "mwebv": ("mwebv",),
}
METADATA_NAMES = ("ra", "dec", *HOST_FIELDS, SOLAR_SYSTEM)

WIRE_EXPECTED = (
    "expected a Confluent wire-format message (magic byte 0, 4-byte big-endian schema id, "
    "schemaless Avro body of a Rubin alert)"
)
# Top-level Parquet columns used; the rest (cutouts, ssSource, ...) is not read.
PARQUET_COLUMNS = (
    "diaSourceId",
    "diaSource",
    "prvDiaSources",
    "prvDiaForcedSources",
    "diaObject",
)
# What the reader uses of an alert: Avro bodies are decoded with these fields only
# (formats/avro.py; cutouts, ssObject and the other source fields are skipped). Sources and
# forced sources share one projection (one named type serves diaSource and prvDiaSources).
SOURCE_FIELDS = (
    "diaSourceId",
    "diaObjectId",
    "ssObjectId",
    "ra",
    *DEC_FIELDS,
    *TIME_FIELDS,
    *BAND_FIELDS,
    *FLUX_FIELDS,
    *FLUX_ERR_FIELDS,
)
OBJECT_FIELDS = (
    "diaObjectId",
    "ra",
    *DEC_FIELDS,
    *(f for names in HOST_FIELDS.values() for f in names),
)
AVRO_FIELDS = (
    "diaSourceId",
    ("diaSource", SOURCE_FIELDS),
    ("prvDiaSources", SOURCE_FIELDS),
    ("prvDiaForcedSources", SOURCE_FIELDS),
    ("diaObject", OBJECT_FIELDS),
)
PARQUET_TABLE_COLUMNS = ("diaSource",)  # what tells Rubin alert rows (Fink Parquet)
DROP_NULL = "null or NaN time, band, flux or flux error"
_SCHEMA_FILE = re.compile(r"lsst\.v(\d+)_(\d+)\.alert\.avsc")


def is_rubin_avro_schema(schema: Mapping[str, Any]) -> bool:
    """True if an Avro writer schema describes Rubin/LSST alerts (top-level ``diaSource``).

    ZTF alerts have ``candidate``/``prv_candidates`` instead. Fink re-publishes both kinds
    under the record name ``topLevelRecord``, so the fields decide, not the name.
    """
    fields = schema.get("fields") if isinstance(schema, Mapping) else None
    return isinstance(fields, list) and any(
        isinstance(f, Mapping) and f.get("name") == "diaSource" for f in fields
    )


# -- records -> batch -------------------------------------------------------------------
def _first_key(record: Mapping[str, Any], names: Sequence[str]) -> str | None:
    """The first of ``names`` present in ``record`` (None if none is)."""
    return next((n for n in names if n in record), None)


def _required_key(record: Mapping[str, Any], names: Sequence[str], what: str, source: str) -> str:
    """The first of ``names`` present in ``record``; none -> :class:`InputError`."""
    key = _first_key(record, names)
    if key is None:
        raise InputError(
            source, f"{what} has none of the fields {list(names)}; expected a Rubin/LSST alert"
        )
    return key


def _id_string(value: Any) -> str:
    """An identifier as text; integral floats (Fink Parquet's diaObject) print as integers."""
    return str(int(value)) if isinstance(value, float) else str(value)


def _float_or_nan(value: Any) -> float:
    """A nullable number as float (null -> NaN)."""
    return np.nan if value is None else float(value)


def _host_value(dia_object: Mapping[str, Any] | None, names: Sequence[str]) -> float:
    """A host/extinction value from the diaObject; absent, null or negative (SNANA's -9
    'missing' sentinel) gives NaN."""
    if not dia_object:
        return np.nan
    key = _first_key(dia_object, names)
    value = _float_or_nan(dia_object.get(key)) if key else np.nan
    return value if value >= 0 else np.nan


def _object_id(record: Mapping[str, Any], source: str) -> str:
    """diaObjectId (diaSource first: exact int64), else ssObjectId; 0 means unset."""
    dia_source = record["diaSource"]
    dia_object = record.get("diaObject") or {}
    for value in (
        dia_source.get("diaObjectId"),
        dia_object.get("diaObjectId"),
        dia_source.get("ssObjectId"),
    ):
        if value:  # Rubin writes 0 for "not associated"
            return _id_string(value)
    raise InputError(
        source,
        f"alert {_alert_id(record)} has neither a diaObjectId nor an ssObjectId; "
        "expected a Rubin/LSST alert associated with an object",
    )


def _alert_id(record: Mapping[str, Any]) -> str:
    """The triggering diaSourceId (top level from v8.0, in the diaSource before)."""
    value = record.get("diaSourceId") or record["diaSource"].get("diaSourceId")
    return _id_string(value)


def _alert_points(
    record: Mapping[str, Any], source: str
) -> tuple[list[float], list[str], list[float], list[float], list[bool], int]:
    """(time, band, flux, flux_err, detected, skipped) of one alert, de-duplicated on
    (time, band) with detections first; points without flux or error are skipped."""
    groups = (
        ([record["diaSource"]], True),
        (record.get("prvDiaSources") or [], True),
        (record.get("prvDiaForcedSources") or [], False),
    )
    seen: set[tuple[float, str]] = set()
    time: list[float] = []
    band: list[str] = []
    flux: list[float] = []
    err: list[float] = []
    detected: list[bool] = []
    skipped = 0
    for points, is_detection in groups:
        if not points:
            continue
        kind = "diaSource" if is_detection else "diaForcedSource"
        first = points[0]
        t_key = _required_key(first, TIME_FIELDS, kind, source)
        b_key = _required_key(first, BAND_FIELDS, kind, source)
        f_key = _required_key(first, FLUX_FIELDS, kind, source)
        e_key = _required_key(first, FLUX_ERR_FIELDS, kind, source)
        for p in points:
            t, b, f, e = p[t_key], p[b_key], p[f_key], p[e_key]
            if None in (t, b, f, e) or t != t or f != f or e != e:  # null or NaN
                skipped += 1
                continue
            key = (float(t), b.lower())
            if key in seen:
                continue
            seen.add(key)
            time.append(key[0])
            band.append(b)
            flux.append(f)
            err.append(e)
            detected.append(is_detection)
    return time, band, flux, err, detected, skipped


def rubin_records_to_batch(records: list[dict], source: str) -> LightCurveBatch:
    """Convert decoded Rubin/LSST alert records (any schema version) into a batch.

    One object per alert, points sorted by time within each alert (see the module
    docstring for ids, de-duplication and metadata). Time is MJD (TAI); ``psfFlux`` and
    ``psfFluxErr`` are already nJy. Points with a null or NaN flux, error, time or band are
    skipped and counted in ``dropped``. ``source`` names the input in errors and log messages.
    """
    object_ids: list[str] = []
    alert_ids: list[str] = []
    counts: list[int] = []
    meta: dict[str, list[float]] = {name: [] for name in METADATA_NAMES}
    time: list[float] = []
    band: list[str] = []
    flux: list[float] = []
    err: list[float] = []
    detected: list[bool] = []
    skipped = 0
    for record in records:
        if not isinstance(record, Mapping) or not isinstance(record.get("diaSource"), Mapping):
            raise InputError(source, "record has no diaSource; expected a Rubin/LSST alert")
        object_ids.append(_object_id(record, source))
        alert_ids.append(_alert_id(record))
        dia_object = record.get("diaObject")
        position = dia_object or record["diaSource"]
        meta["ra"].append(_float_or_nan(position.get("ra")))
        dec_key = _first_key(position, DEC_FIELDS)
        meta["dec"].append(_float_or_nan(position.get(dec_key)) if dec_key else np.nan)
        for name, fields in HOST_FIELDS.items():
            meta[name].append(_host_value(dia_object, fields))
        meta[SOLAR_SYSTEM].append(float(bool(record["diaSource"].get("ssObjectId"))))
        t, b, f, e, d, s = _alert_points(record, source)
        time += t
        band += b
        flux += f
        err += e
        detected += d
        counts.append(len(t))
        skipped += s
    time_arr = np.asarray(time, dtype=np.float64)
    band_arr = band_indices(band, source)
    alert_index = np.repeat(np.arange(len(counts)), counts)
    order = np.lexsort((band_arr, time_arr, alert_index))  # by alert, then time, then band
    flux_njy, err_njy = rubin_flux_to_njy(np.asarray(flux), np.asarray(err))
    return LightCurveBatch(
        object_id=as_id_array(object_ids),
        offsets=np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]),
        time=time_arr[order],
        band=band_arr[order],
        flux=flux_njy[order],
        flux_err=err_njy[order],
        detected=np.asarray(detected, dtype=bool)[order],
        metadata={k: np.asarray(v, dtype=np.float64) for k, v in meta.items()},
        alert_id=np.asarray(alert_ids, dtype=str),
        dropped={DROP_NULL: skipped} if skipped else {},
    )


def _as_paths(paths: PathLike | Iterable[PathLike]) -> list[Path]:
    """One path or several -> a non-empty list of paths."""
    result = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    if not result:
        raise InputError("(no paths)", "no files given; expected at least one alert file")
    return result


# -- Avro container files ---------------------------------------------------------------
def decode_rubin_avro_bytes(
    data: bytes, source: str, fields: Projection = AVRO_FIELDS
) -> list[dict]:
    """Decode an Avro container of Rubin/LSST alerts (a file's or a Kafka message's bytes);
    the records hold ``fields`` (default: what the light curves use)."""
    expected = "expected an Avro object container file of Rubin/LSST alerts"
    writer_schema, records = decode_avro_container(data, source, expected, fields)
    if not is_rubin_avro_schema(writer_schema):
        raise InputError(
            source,
            f"writer schema {writer_schema.get('name')!r} has no diaSource field "
            f"(a ZTF alert?); {expected}",
        )
    return records


def _read_container(path: Path) -> list[dict]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot open file: {exc}") from exc
    return decode_rubin_avro_bytes(data, str(path))


def read_rubin_avro(paths: PathLike | Iterable[PathLike]) -> LightCurveBatch:
    """Read Rubin/LSST alerts from Avro container files (any schema version with its
    writer schema embedded: alert_packet v3-v11, Fink re-publications, ELAsTiCC).

    Times are MJD (TAI), fluxes nJy; one object per alert, in file order.
    """
    batches = [rubin_records_to_batch(_read_container(p), str(p)) for p in _as_paths(paths)]
    return LightCurveBatch.concat(batches)


# -- Confluent wire format --------------------------------------------------------------
class SchemaDirectory:
    """Rubin alert schemas by Confluent schema id (``major * 100 + minor``), parsed once.

    ``root`` is laid out like lsst/alert_packet's ``schema`` folder:
    ``<major>/<minor>/lsst.v<major>_<minor>.alert.avsc``, whose named types are loaded from
    the other ``.avsc`` files of the same folder.
    """

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(
                self.root,
                "not a directory; expected a schema folder laid out as "
                "<major>/<minor>/lsst.v<major>_<minor>.alert.avsc",
            )
        self.paths: dict[int, Path] = {}
        for path in self.root.glob("*/*/lsst.v*_*.alert.avsc"):
            match = _SCHEMA_FILE.fullmatch(path.name)
            if match and path.parent.parts[-2:] == match.groups():
                self.paths[int(match[1]) * 100 + int(match[2])] = path
        self._parsed: dict[int, Any] = {}

    def versions(self) -> list[str]:
        """Available schema versions as ``major.minor`` strings, in id order."""
        return [f"{i // 100}.{i % 100}" for i in sorted(self.paths)]

    def get(self, schema_id: int, source: str) -> Any:
        """The parsed schema with this id; unknown id -> :class:`InputError` on ``source``."""
        if schema_id not in self._parsed:
            path = self.paths.get(schema_id)
            if path is None:
                raise InputError(
                    source,
                    f"unknown schema id {schema_id}; expected one of {sorted(self.paths)} "
                    f"(Rubin alert schema versions {self.versions()} in {self.root}, "
                    "id = major * 100 + minor)",
                )
            try:
                self._parsed[schema_id] = load_schema(path)
            except Exception as exc:  # JSON errors, unknown named types, bad Avro
                raise InputError(
                    path, f"cannot load Avro schema ({type(exc).__name__}: {exc})"
                ) from exc
        return self._parsed[schema_id]


def decode_rubin_wire(
    data: bytes, schemas: SchemaDirectory, source: str, fields: Projection = AVRO_FIELDS
) -> dict:
    """Decode one Confluent wire-format message value into a Rubin alert record (dict) holding
    ``fields`` (default: what the light curves use).

    Any malformed message (empty, short, wrong magic byte, unknown schema id, truncated or
    corrupt body, bytes left over) raises :class:`InputError` naming ``source``. Avro has no
    checksum, so a bit flip that still decodes (inside a float, say) cannot be detected.
    """
    if len(data) <= WIRE_HEADER.size:
        raise InputError(source, f"message is {len(data)} bytes long; {WIRE_EXPECTED}")
    magic, schema_id = WIRE_HEADER.unpack_from(data)
    if magic != WIRE_MAGIC_BYTE:
        hint = " (it looks like JSON text)" if data[:1] in (b"{", b"[") else ""
        raise InputError(source, f"magic byte is {data[0]:#04x}{hint}; {WIRE_EXPECTED}")
    schema = schemas.get(schema_id, source)
    body = io.BytesIO(data)
    body.seek(WIRE_HEADER.size)
    try:
        reader = projected_reader_schema(schema, fields)  # only the fields used
        record = fastavro.schemaless_reader(body, schema, reader)
    except Exception as exc:  # fastavro raises many kinds on corrupt input
        raise InputError(
            source,
            f"cannot decode the Avro body with schema id {schema_id} "
            f"({type(exc).__name__}: {exc}); {WIRE_EXPECTED}",
        ) from exc
    left = len(data) - body.tell()
    if left:
        raise InputError(
            source,
            f"{left} byte(s) left after decoding the alert with schema id {schema_id}; "
            f"{WIRE_EXPECTED}",
        )
    return record


def read_rubin_wire(paths: PathLike | Iterable[PathLike], schema_dir: PathLike) -> LightCurveBatch:
    """Read files each holding one Confluent wire-format message value (a Kafka message
    as Rubin publishes it), decoding with the schemas of ``schema_dir``.

    Times are MJD (TAI), fluxes nJy; one object per message, in path order.
    """
    schemas = SchemaDirectory(schema_dir)
    batches = []
    for path in _as_paths(paths):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(path, f"cannot read file: {exc}") from exc
        record = decode_rubin_wire(data, schemas, str(path))
        batches.append(rubin_records_to_batch([record], str(path)))
    return LightCurveBatch.concat(batches)


# -- Parquet ----------------------------------------------------------------------------
def read_rubin_parquet(
    path: PathLike | pa.BufferReader, source: str | None = None
) -> LightCurveBatch:
    """Read Rubin alerts stored as Parquet rows (one alert per row, the alert's fields as
    nested columns, as Fink writes them) into a batch.

    ``path`` is a file or an in-memory buffer (a Kafka message's value; ``source`` then names
    it in errors). Only the alert, source and object columns are read (not the cutouts).
    Times are MJD (TAI), fluxes nJy; one object per row, in row order.
    """
    if not isinstance(path, pa.BufferReader):
        path = Path(path)
    source = source or str(path)
    try:
        parquet = pq.ParquetFile(path)
        columns = [c for c in PARQUET_COLUMNS if c in parquet.schema_arrow.names]
        if "diaSource" not in columns:
            raise InputError(
                source,
                f"no diaSource column (columns: {parquet.schema_arrow.names[:10]}...); "
                "expected Rubin/LSST alerts as Parquet rows",
            )
        table = parquet.read(columns=columns)
        records = table.cast(project_arrow_schema(table.schema, AVRO_FIELDS)).to_pylist()
    except InputError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise InputError(source, f"cannot read Parquet ({exc}); expected a Parquet file") from exc
    return rubin_records_to_batch(records, source)


# -- image stamps -----------------------------------------------------------------------
# Projection of the stamps: the ids, the labels and the cutouts; nothing of the light curves.
STAMP_SOURCE_FIELDS = ("diaSourceId", "diaObjectId", "ssObjectId")
STAMP_FIELDS = (
    "diaSourceId",
    ("diaSource", STAMP_SOURCE_FIELDS),
    ("diaObject", ("diaObjectId",)),
    *STAMPS,
)


def rubin_cutouts(
    records: Iterable[Mapping[str, Any]], source: str, size: int = STAMP_SIZE
) -> CutoutBatch:
    """Decoded Rubin alert records (any schema version, holding the cutouts) -> batch; ids
    by the same rule as the light curves'."""
    rows = []
    for record in records:
        if not isinstance(record, Mapping) or not isinstance(record.get("diaSource"), Mapping):
            raise InputError(source, "a record has no diaSource; expected Rubin alert records")
        ss_id = record["diaSource"].get("ssObjectId")
        labels = {"ss_object": 1.0 if ss_id else 0.0}  # Rubin writes 0 or null: none
        rows.append((_object_id(record, source), _alert_id(record), labels, record))
    return stamps_to_batch(rows, "rubin", source, size)


# One decode for the light curves and the stamps (the worker, for models with an image tower).
AVRO_STAMP_FIELDS = merge_projections(AVRO_FIELDS, STAMP_FIELDS)


def _avro_stamps(value: bytes, _schemas: Any, source: str, size: int) -> CutoutBatch:
    expected = "expected an Avro object container file of Rubin/LSST alerts"
    records = decode_avro_container(value, source, expected, STAMP_FIELDS)[1]
    return rubin_cutouts(records, source, size)


def _parquet_stamps(value: bytes, _schemas: Any, source: str, size: int) -> CutoutBatch:
    records = parquet_stamp_records(value, source, STAMP_FIELDS, "rubin-parquet")
    return rubin_cutouts(records, source, size)


def _wire_stamps(value: bytes, schemas: Any, source: str, size: int) -> CutoutBatch:
    if schemas is None:
        raise InputError(source, "rubin-wire needs the Rubin schema folder (schema_dir)")
    if len(value) <= WIRE_HEADER.size or value[0] != 0:
        raise InputError(source, f"not a wire-format message; {WIRE_EXPECTED}")
    schema_id = WIRE_HEADER.unpack_from(value)[1]
    schema = schemas.get(schema_id, source)
    try:
        body = io.BytesIO(value)
        body.seek(WIRE_HEADER.size)
        record = fastavro.schemaless_reader(
            body, schema, projected_reader_schema(schema, STAMP_FIELDS)
        )
    except Exception as exc:  # fastavro raises many kinds on corrupt input
        raise InputError(source, f"cannot decode the Avro body ({exc}); {WIRE_EXPECTED}") from exc
    return rubin_cutouts([record], source, size)


def nearest_schema_dir(path: Path, root: Path) -> Path | None:
    """The nearest ``schema`` folder (Rubin alert schemas) at or above ``path``'s folder,
    without leaving ``root``."""
    for folder in (path.parent, *path.parent.parents):
        candidate = folder / "schema"
        if candidate.is_dir() and any(candidate.glob("*/*/lsst.v*_*.alert.avsc")):
            return candidate
        if folder == root:
            return None
    return None


# -- the formats ------------------------------------------------------------------------
def _read_avro(paths: list[Path], _options: ReadOptions) -> LightCurveBatch:
    return read_rubin_avro(paths)


def _avro_records(value: bytes, _schemas: Any, source: str) -> list[Any]:
    return decode_rubin_avro_bytes(value, source)


def _avro_records_with_stamps(value: bytes, _schemas: Any, source: str) -> list[Any]:
    return decode_rubin_avro_bytes(value, source, AVRO_STAMP_FIELDS)


def _decode_avro(value: bytes, schemas: Any, source: str) -> LightCurveBatch:
    return rubin_records_to_batch(_avro_records(value, schemas, source), source)


def _read_parquet(paths: list[Path], _options: ReadOptions) -> LightCurveBatch:
    return LightCurveBatch.concat([read_rubin_parquet(path) for path in paths])


def _decode_parquet(value: bytes, _schemas: Any, source: str) -> LightCurveBatch:
    return read_rubin_parquet(pa.BufferReader(value), source=source)


def _read_wire(paths: list[Path], options: ReadOptions) -> LightCurveBatch:
    if options.schema_dir is None:
        raise InputError(
            paths[0],
            "Rubin wire-format input needs schema_dir, the folder of Rubin alert schemas "
            "(lsst/alert_packet schema/<major>/<minor>/) to decode the message bodies",
        )
    return read_rubin_wire(paths, options.schema_dir)


def _wire_records(
    value: bytes, schemas: Any, source: str, fields: Projection = AVRO_FIELDS
) -> list[Any]:
    if schemas is None:
        raise ValueError("rubin-wire needs a schema directory or a schema registry")
    return [decode_rubin_wire(value, schemas, source, fields)]


def _wire_records_with_stamps(value: bytes, schemas: Any, source: str) -> list[Any]:
    return _wire_records(value, schemas, source, AVRO_STAMP_FIELDS)


def _decode_wire(value: bytes, schemas: Any, source: str) -> LightCurveBatch:
    return rubin_records_to_batch(_wire_records(value, schemas, source), source)


RUBIN_AVRO = InputFormat(
    "rubin-avro",
    "Rubin alert Avro containers (alert_packet v3-v11, ELAsTiCC)",
    lambda probe: probe.is_avro_container and is_rubin_avro_schema(probe.avro_schema),
    _read_avro,
    _decode_avro,
    decode_records=_avro_records,
    records_to_batch=rubin_records_to_batch,
    message_per_file=True,
    stamps=_avro_stamps,
    decode_records_with_stamps=_avro_records_with_stamps,
    records_stamps=rubin_cutouts,
)
RUBIN_PARQUET = InputFormat(
    "rubin-parquet",
    "Rubin alerts as Parquet rows {diaSource, prvDiaSources, ...}",
    lambda probe: probe.is_parquet and set(PARQUET_TABLE_COLUMNS) <= set(probe.columns),
    _read_parquet,
    _decode_parquet,
    stamps=_parquet_stamps,
)
RUBIN_WIRE = InputFormat(
    "rubin-wire",
    "Rubin alerts in Confluent wire format (magic byte 0, schema id, Avro body)",
    lambda probe: len(probe.head) >= WIRE_HEADER.size and probe.head[0] == WIRE_MAGIC_BYTE,
    _read_wire,
    _decode_wire,
    decode_records=_wire_records,
    records_to_batch=rubin_records_to_batch,
    message_per_file=True,
    stamps=_wire_stamps,
    decode_records_with_stamps=_wire_records_with_stamps,
    records_stamps=rubin_cutouts,
)
