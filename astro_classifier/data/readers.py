"""One entry point for light-curve input files: detect each file's format, read, concatenate.

Formats (:data:`FORMATS`):

- ``plasticc``: PLAsTiCC light curves, CSV/Parquet (:mod:`astro_classifier.data.plasticc`)
- ``long``: the project's long format, Parquet/CSV (:mod:`astro_classifier.data.longformat`)
- ``ztf-avro``: ZTF alert Avro containers (:mod:`astro_classifier.alerts.ztf`)
- ``rubin-avro``: Rubin alert Avro containers, or Rubin alert rows in Parquet
  (:mod:`astro_classifier.alerts.rubin`)
- ``rubin-wire``: Rubin alerts in Confluent wire format (magic byte 0, 4-byte schema id,
  schemaless Avro), as Kafka message values saved to files
- ``eros1``: the EROS-1 static table (``train.csv``); its arrays file
  ``<stem>_varlength_features.csv.gz`` is read from beside it

Detection looks at content before names: an Avro container (``Obj\\x01``) is ZTF or Rubin by
the fields of its writer schema, a file starting with byte 0 is wire format (whatever its
suffix: the shared wire-format samples end in ``.avro``), Parquet (``PAR1``) and CSV files are
told apart by their column names.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import fastavro
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from astro_classifier.alerts.avro import AVRO_CONTAINER_MAGIC
from astro_classifier.alerts.ztf import ZTF_ALERT_FIELDS, read_ztf_avro
from astro_classifier.data.eros1 import read_eros1
from astro_classifier.data.lightcurve import LightCurveBatch
from astro_classifier.data.longformat import POINT_COLUMNS, read_long
from astro_classifier.data.plasticc import is_plasticc_light_curve_table, read_plasticc
from astro_classifier.data.tables import CSV_SUFFIXES
from astro_classifier.errors import InputError

FORMATS = ("plasticc", "long", "ztf-avro", "rubin-avro", "rubin-wire", "eros1")
# Formats whose light curves can take an object table (``metadata``).
OBJECT_TABLE_FORMATS = ("plasticc", "long")
PARQUET_MAGIC = b"PAR1"
WIRE_MAGIC_BYTE = 0
WIRE_HEADER_BYTES = 5  # magic byte + 4-byte schema id
RUBIN_TABLE_COLUMNS = ("diaSource",)  # Rubin alert rows (Fink Parquet)
EROS1_TABLE_COLUMNS = ("star_id_b", "star_id_r", "magnitude_b", "magnitude_r")
EROS1_ARRAYS_SUFFIX = "_varlength_features.csv.gz"


def detect_format(path: str | Path) -> str:
    """The format (one of :data:`FORMATS`) of the file at ``path``, from its content.

    Raises :class:`InputError` naming the file when it is missing, empty, unreadable or of
    none of the known formats.
    """
    path = Path(path)
    head = _head(path, WIRE_HEADER_BYTES)
    if head.startswith(AVRO_CONTAINER_MAGIC):
        return _avro_container_format(path)
    if len(head) == WIRE_HEADER_BYTES and head[0] == WIRE_MAGIC_BYTE:
        return "rubin-wire"
    if head.startswith(PARQUET_MAGIC):
        try:
            columns = pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(path, f"cannot read the Parquet schema: {exc}") from exc
    elif path.name.lower().endswith(CSV_SUFFIXES):
        try:
            columns = pacsv.open_csv(path).schema.names
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(path, f"cannot read the CSV header: {exc}") from exc
    else:
        raise _undetectable(path, "neither an Avro container, wire format, Parquet nor CSV")
    return _table_format([name.strip() for name in columns], path)


def read_light_curves(
    paths: Sequence[str | Path] | str | Path,
    format: str | None = None,
    metadata: str | Path | None = None,
    schema_dir: str | Path | None = None,
) -> LightCurveBatch:
    """Read light-curve files of any supported format into one batch.

    ``format`` (one of :data:`FORMATS`) applies to every path; when None each file's format
    is detected with :func:`detect_format`. Files are grouped by format (groups in order of
    first appearance, files in the given order within a group) and the batches concatenated.
    ``metadata`` is an object table for a single ``plasticc`` or ``long`` file.
    ``schema_dir`` holds the Rubin alert schemas used to decode ``rubin-wire`` files.
    Fluxes in nJy, time in MJD (EROS-1: EROS days). Raises :class:`InputError`.
    """
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not paths:
        raise InputError("input", "no input files given")
    if format is not None and format not in FORMATS:
        raise InputError("format", f"unknown format {format!r}; expected one of {list(FORMATS)}")
    groups: dict[str, list[Path]] = {}
    for path in paths:
        groups.setdefault(format or detect_format(path), []).append(path)
    if metadata is not None and (len(paths) > 1 or set(groups) - set(OBJECT_TABLE_FORMATS)):
        raise InputError(
            metadata,
            f"an object table goes with a single {' or '.join(OBJECT_TABLE_FORMATS)} light-curve "
            f"file; got {len(paths)} file(s) of format(s) {sorted(groups)}",
        )
    batches = [_read_group(name, group, metadata, schema_dir) for name, group in groups.items()]
    return LightCurveBatch.concat(batches)


def _read_group(
    format: str,
    paths: list[Path],
    metadata: str | Path | None,
    schema_dir: str | Path | None,
) -> LightCurveBatch:
    if format == "plasticc":
        return LightCurveBatch.concat([read_plasticc(path, metadata) for path in paths])
    if format == "long":
        return LightCurveBatch.concat([read_long(path, metadata) for path in paths])
    if format == "ztf-avro":
        return read_ztf_avro(paths)
    if format == "eros1":
        return LightCurveBatch.concat([read_eros1(path, _eros1_arrays(path)) for path in paths])
    # Imported here: the Rubin reader is only needed (and loaded) for Rubin inputs.
    from astro_classifier.alerts.rubin import (
        read_rubin_avro,
        read_rubin_parquet,
        read_rubin_wire,
    )

    if format == "rubin-wire":
        if schema_dir is None:
            raise InputError(
                paths[0],
                "Rubin wire-format input needs schema_dir, the folder of Rubin alert schemas "
                "(lsst/alert_packet schema/<major>/<minor>/) to decode the message bodies",
            )
        return read_rubin_wire(paths, schema_dir)
    tables = [path for path in paths if _head(path, len(PARQUET_MAGIC)) == PARQUET_MAGIC]
    containers = [path for path in paths if path not in tables]
    batches = [read_rubin_avro(containers)] if containers else []
    batches += [read_rubin_parquet(path) for path in tables]
    return LightCurveBatch.concat(batches)


def _head(path: Path, size: int) -> bytes:
    """The first ``size`` bytes of a file; InputError when missing or empty."""
    try:
        with path.open("rb") as stream:
            head = stream.read(size)
    except OSError as exc:
        raise InputError(path, f"cannot read file ({exc})") from exc
    if not head:
        raise InputError(path, "file is empty")
    return head


def _avro_container_format(path: Path) -> str:
    try:
        with path.open("rb") as stream:
            schema = fastavro.reader(stream).writer_schema
    except Exception as exc:  # fastavro raises many types on a corrupt header
        raise InputError(path, f"cannot read the Avro container header ({exc})") from exc
    fields = (
        {field["name"] for field in schema.get("fields", [])} if isinstance(schema, dict) else set()
    )
    if set(ZTF_ALERT_FIELDS) <= fields:
        return "ztf-avro"
    from astro_classifier.alerts.rubin import is_rubin_avro_schema

    if is_rubin_avro_schema(schema):
        return "rubin-avro"
    raise _undetectable(
        path, f"an Avro container with neither ZTF nor Rubin alert fields {sorted(fields)[:8]}"
    )


def _table_format(columns: list[str], path: Path) -> str:
    if is_plasticc_light_curve_table(columns):
        return "plasticc"
    if set(POINT_COLUMNS) <= set(columns):
        return "long"
    if set(RUBIN_TABLE_COLUMNS) <= set(columns):
        return "rubin-avro"
    if set(EROS1_TABLE_COLUMNS) <= set(columns):
        return "eros1"
    raise _undetectable(path, f"a table with columns {columns[:10]}")


def _undetectable(path: Path, what: str) -> InputError:
    return InputError(
        path,
        f"cannot tell the input format ({what}); expected one of {list(FORMATS)}: plasticc "
        f"{{object_id, mjd, passband, flux, flux_err}}, long {{{', '.join(POINT_COLUMNS)}}}, "
        "ZTF or Rubin alert Avro, Rubin wire format, EROS-1 train.csv",
    )


def _eros1_arrays(table_path: Path) -> Path:
    """``train.csv`` -> ``train_varlength_features.csv.gz`` beside it (must exist)."""
    stem = table_path.name
    for suffix in CSV_SUFFIXES:
        stem = stem.removesuffix(suffix)
    arrays = table_path.with_name(stem + EROS1_ARRAYS_SUFFIX)
    if not arrays.is_file():
        raise InputError(table_path, f"EROS-1 arrays file {arrays} not found beside it")
    return arrays
