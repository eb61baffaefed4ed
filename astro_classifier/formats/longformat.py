"""The project's own long format: one row per observation, plus an optional object table.

Points file (Parquet; CSV is read too):

============  ========  ================================================================
column        type      meaning
============  ========  ================================================================
object_id     string    object the point belongs to
mjd           float64   time, MJD (days)
band          string    one of ``u g r i z y`` (case-insensitive on reading)
flux          float     flux, nJy (difference flux for alerts; may be negative)
flux_err      float     1-sigma flux error, nJy
detected      bool      optional (default True): the survey's detection flag
============  ========  ================================================================

``mjd``, ``flux`` and ``flux_err`` must be finite: a file with NaN or infinite values is
rejected (with the count) rather than silently thinned.

Object table (Parquet or CSV): ``object_id`` plus any numeric metadata columns (read as
float64), an optional string column ``label`` (class label) and an optional string column
``alert_id``. With an object table, object order follows it, objects without points get empty
light curves, and points of objects missing from it are an error.

:func:`write_long` followed by :func:`read_long` gives back the same batch (points, object
order, metadata, labels, alert ids) when the object table is written too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import BANDS, LightCurveBatch, band_indices
from astro_classifier.core.tables import (
    CSV_SUFFIXES,
    PARQUET_SUFFIXES,
    read_table,
    require_columns,
    require_finite,
)
from astro_classifier.formats.base import InputFormat, ReadOptions

POINT_COLUMNS = ("object_id", "mjd", "band", "flux", "flux_err")
DETECTED_COLUMN = "detected"
OBJECT_ID_COLUMN = "object_id"
LABEL_COLUMN = "label"
ALERT_ID_COLUMN = "alert_id"
_OBJECT_STRING_COLUMNS = (OBJECT_ID_COLUMN, LABEL_COLUMN, ALERT_ID_COLUMN)


def read_long(
    path: str | Path, metadata: str | Path | None = None, label_column: str | None = None
) -> LightCurveBatch:
    """Read a long-format points file (and optionally its object table) into a batch.

    ``label_column`` names the object-table column holding labels (default ``label``).

    Times in MJD, fluxes in nJy (see the module docstring for the columns). Raises
    :class:`InputError` naming the file for a missing, empty or unreadable file, a missing
    column, an unknown band, null ids or bands, or non-finite ``mjd``/``flux``/``flux_err``.
    """
    table = read_table(path)
    require_columns(table, POINT_COLUMNS, path, "long-format light curves")
    object_id = _strings(table, OBJECT_ID_COLUMN, path)
    band = band_indices(_strings(table, "band", path), str(path))
    values = {name: _floats(table, name, path) for name in ("mjd", "flux", "flux_err")}
    require_finite(values, path)
    if DETECTED_COLUMN in table.column_names:
        detected_column = table[DETECTED_COLUMN]
        if detected_column.null_count:
            raise InputError(path, f"column 'detected' has {detected_column.null_count} null(s)")
        detected = _cast(detected_column, pa.bool_(), path, DETECTED_COLUMN).to_numpy(
            zero_copy_only=False
        )
    else:
        detected = np.ones(table.num_rows, bool)
    objects = meta = labels = alert_ids = None
    if metadata is not None:
        objects, meta, labels, alert_ids = read_object_table(metadata, label_column)
    try:
        return LightCurveBatch.from_points(
            object_id,
            values["mjd"],
            band,
            values["flux"],
            values["flux_err"],
            detected,
            objects=objects,
            metadata=meta,
            alert_id=alert_ids,
            label=labels,
        )
    except ValueError as exc:
        raise InputError(path, f"{exc} (object table: {metadata})") from exc


def read_object_table(
    path: str | Path, label_column: str | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None, np.ndarray | None]:
    """Read a long-format object table: (object ids, metadata (float64), labels, alert ids).

    Labels (from ``label_column``, default ``label``) and alert ids are None when their
    column is absent; a ``label_column`` given but absent is an :class:`InputError`. Any
    other column that is not numeric is an :class:`InputError`.
    """
    table = _read_object_table(path, label_column)
    require_columns(table, [OBJECT_ID_COLUMN], path, "a long-format object table")
    if label_column is not None:
        require_columns(table, [label_column], path, "the label column given")
    label_name = label_column or LABEL_COLUMN
    string_columns = (OBJECT_ID_COLUMN, label_name, ALERT_ID_COLUMN)
    object_id = _strings(table, OBJECT_ID_COLUMN, path)
    if len(np.unique(object_id)) != len(object_id):
        raise InputError(path, "object ids are not unique; expected one row per object")
    metadata: dict[str, np.ndarray] = {}
    for name in table.column_names:
        if name in string_columns:
            continue
        column_type = table[name].type
        if not (
            pa.types.is_floating(column_type)
            or pa.types.is_integer(column_type)
            or pa.types.is_boolean(column_type)
        ):
            raise InputError(
                path,
                f"column {name!r} is {column_type}; expected numeric metadata columns plus "
                f"optional string columns {list(string_columns[1:])}",
            )
        metadata[name] = _floats(table, name, path)
    labels = _strings(table, label_name, path) if label_name in table.column_names else None
    alert_ids = (
        _strings(table, ALERT_ID_COLUMN, path) if ALERT_ID_COLUMN in table.column_names else None
    )
    return object_id, metadata, labels, alert_ids


def write_long(
    batch: LightCurveBatch, path: str | Path, metadata_path: str | Path | None = None
) -> None:
    """Write ``batch`` as a long-format Parquet points file (and optionally its object table).

    ``metadata_path`` (``.parquet`` or ``.csv``) receives ``object_id``, every metadata column,
    ``label`` and ``alert_id`` where the batch has them; without it, metadata, labels, alert
    ids and objects without points are not written. Object ids must be unique (the format
    groups points by ``object_id``).
    """
    if len(np.unique(batch.object_id)) != len(batch.object_id):
        raise ValueError(
            "object ids are not unique (e.g. several alerts of one object); the long format "
            "groups points by object_id"
        )
    points = pa.table(
        {
            "object_id": pa.array(np.repeat(batch.object_id, batch.lengths), pa.string()),
            "mjd": pa.array(batch.time, pa.float64()),
            "band": pa.array(np.asarray(BANDS)[batch.band], pa.string()),
            "flux": pa.array(batch.flux, pa.float32()),
            "flux_err": pa.array(batch.flux_err, pa.float32()),
            "detected": pa.array(batch.detected, pa.bool_()),
        }
    )
    pq.write_table(points, path)
    if metadata_path is None:
        return
    columns: dict[str, pa.Array] = {OBJECT_ID_COLUMN: pa.array(batch.object_id, pa.string())}
    columns.update({name: pa.array(values) for name, values in batch.metadata.items()})
    if batch.label is not None:
        columns[LABEL_COLUMN] = pa.array(batch.label, pa.string())
    if batch.alert_id is not None:
        columns[ALERT_ID_COLUMN] = pa.array(batch.alert_id, pa.string())
    objects = pa.table(columns)
    name = Path(metadata_path).name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        pq.write_table(objects, metadata_path)
    elif name.endswith(".csv"):
        pacsv.write_csv(objects, metadata_path)
    else:
        raise ValueError(f"{metadata_path}: object table must end in .parquet or .csv")


def _read_object_table(path: str | Path, label_column: str | None = None) -> pa.Table:
    """Like :func:`read_table`, but CSV id/label columns stay strings (keeps "007" as "007")."""
    if not Path(path).name.lower().endswith(CSV_SUFFIXES) or not Path(path).is_file():
        return read_table(path)
    if Path(path).stat().st_size == 0:
        raise InputError(path, "file is empty")
    try:
        header = pacsv.open_csv(path).schema.names
        names = (*_OBJECT_STRING_COLUMNS, label_column or LABEL_COLUMN)
        string_columns = {name: pa.string() for name in names if name in header}
        table = pacsv.read_csv(
            path, convert_options=pacsv.ConvertOptions(column_types=string_columns)
        )
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(path, f"cannot read as a table: {exc}") from exc
    if table.num_rows == 0:
        raise InputError(path, "table has no rows")
    return table


def _strings(table: pa.Table, name: str, path: str | Path) -> np.ndarray:
    column = table[name]
    if column.null_count:
        raise InputError(path, f"column {name!r} has {column.null_count} null(s)")
    return _cast(column, pa.string(), path, name).to_numpy(zero_copy_only=False).astype(str)


def _floats(table: pa.Table, name: str, path: str | Path) -> np.ndarray:
    """A column as float64 (nulls -> NaN)."""
    column = _cast(table[name], pa.float64(), path, name)
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def _cast(column: pa.ChunkedArray, to: pa.DataType, path: str | Path, name: str) -> pa.ChunkedArray:
    try:
        return pc.cast(column, to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InputError(path, f"column {name!r} ({column.type}) cannot be read as {to}") from exc


def _read(paths: list[Path], options: ReadOptions) -> LightCurveBatch:
    return LightCurveBatch.concat(
        [read_long(path, options.metadata, options.label_column) for path in paths]
    )


LONG = InputFormat(
    "long",
    f"astroclf long format {{{', '.join(POINT_COLUMNS)}}}",
    lambda probe: set(POINT_COLUMNS) <= set(probe.columns),
    _read,
    object_table=True,
    label_column="label",
)
