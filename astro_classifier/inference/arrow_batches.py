"""Arrow record batches of alert rows -> record batches of classifications, with no engine in it.

Brokers keep their alerts as Parquet rows in a data lake (Fink's and ALeRCE's tables: one row
per alert, ``candidate``/``prv_candidates`` structs for ZTF, ``diaSource``/``prvDiaSources``
for Rubin). Every engine that reads such tables can hand a Python function an iterator of
Arrow record batches: Spark's ``mapInArrow``, Dask's and Ray's batch maps, a plain
``pyarrow.parquet.ParquetFile.iter_batches`` loop. :func:`classify_batches` is that function:
the same reader (the format registry's), the same preprocessing and the same
:func:`~astro_classifier.inference.classify.classify` as ``astroclf classify``, so each engine
adapter (:mod:`astro_classifier.spark`, the CLI's bounded-memory loop) is a few lines over it.

What it yields: for each input batch, one record batch of :func:`result_schema` with **one row
per input row, in input order**: the output contract of ``classify()``
(:func:`~astro_classifier.inference.predictions.output_schema`) plus one column ``error``.
``error`` is null on a classified row. A row that could not be classified keeps its ids
(``object_id``, ``alert_id``, as far as they could be read), nulls elsewhere, and an ``error``
struct saying why:

- ``stage`` ``decode``: the row is not a readable alert (the reader refused it);
- ``stage`` ``skipped``: it was read, but classify() skips it (no usable point in the model's
  bands: the reasons of :mod:`astro_classifier.inference.classify`);
- ``stage`` ``classify``: the model call failed on this row alone.

``reason`` is the sentence the reader or classify() gives, naming the row; ``row`` the input
row as JSON (only the fields the reader uses: no cutouts), enough to find, inspect and replay
it. One schema with an error side column suits engines whose map step yields one schema
(Spark's ``mapInArrow``); :func:`split_errors` turns it into the output contract and an error
table. A bad row therefore never takes the good rows of its batch with it; ``strict=True``
raises on the first row that cannot be read or classified instead.

The model is loaded once per process (:func:`cached_model`, keyed by file, provider, threads
and precision): an engine's Python worker classifies many batches with one session.
:func:`required_fields` and :func:`project_schema` say which nested fields the reader uses, so
an engine can read only those (no cutouts, none of the ~100 other candidate fields).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from astro_classifier.core.errors import InputError, ModelError
from astro_classifier.core.lightcurve import LightCurveBatch
from astro_classifier.core.quality import clean_points
from astro_classifier.formats import rubin, ztf
from astro_classifier.formats.avro import Projection
from astro_classifier.formats.base import project_arrow_schema
from astro_classifier.formats.registry import REGISTRY, detect_schema_format, supported
from astro_classifier.inference.classify import classify
from astro_classifier.inference.model import LoadedModel, resolve_model_path
from astro_classifier.inference.predictions import Predictions, output_schema

STAGE_DECODE = "decode"
STAGE_SKIPPED = "skipped"
STAGE_CLASSIFY = "classify"
ERROR_COLUMN = "error"
ERROR_TYPE = pa.struct([("stage", pa.string()), ("reason", pa.string()), ("row", pa.string())])
# Columns of the error table (split_errors): the ids, then the error struct's fields.
ERROR_SCHEMA = pa.schema(
    [
        ("object_id", pa.string()),
        ("alert_id", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("row", pa.string()),
    ]
)


# -- alert-row formats --------------------------------------------------------------------
@dataclass(frozen=True)
class RowFormat:
    """An alert format stored one alert per row: what the reader uses of a row and how a list
    of rows (as Python records) becomes light curves. The registry declares how such files
    are recognised; this adds what a row-by-row engine needs."""

    name: str  # the registry's name
    fields: Projection  # the nested fields the reader uses (the Avro projection: same fields)
    to_batch: Callable[[list[dict[str, Any]], str], LightCurveBatch]
    ids: Callable[[Mapping[str, Any]], tuple[str | None, str | None]]  # best effort, for errors


def _id(value: Any) -> str | None:
    """An id as the readers write it: integers without a decimal point (Fink stores some
    Rubin ids as float64), None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, float):
        return str(int(value)) if math.isfinite(value) and value.is_integer() else str(value)
    return str(value)


def _get(record: Any, *path: str) -> Any:
    for name in path:
        if not isinstance(record, Mapping):
            return None
        record = record.get(name)
    return record


def _ztf_ids(record: Mapping[str, Any]) -> tuple[str | None, str | None]:
    candid = _get(record, "candid")
    return _id(_get(record, "objectId")), _id(
        candid if candid is not None else _get(record, "candidate", "candid")
    )


def _rubin_ids(record: Mapping[str, Any]) -> tuple[str | None, str | None]:
    object_id = next(
        (
            v
            for v in (
                _get(record, "diaSource", "diaObjectId"),
                _get(record, "diaObject", "diaObjectId"),
                _get(record, "diaSource", "ssObjectId"),
            )
            if v
        ),
        None,
    )
    alert = _get(record, "diaSourceId") or _get(record, "diaSource", "diaSourceId")
    return _id(object_id), _id(alert)


ROW_FORMATS: dict[str, RowFormat] = {
    fmt.name: fmt
    for fmt in (
        RowFormat("ztf-parquet", ztf.AVRO_FIELDS, ztf.ztf_records_to_batch, _ztf_ids),
        RowFormat("rubin-parquet", rubin.AVRO_FIELDS, rubin.rubin_records_to_batch, _rubin_ids),
    )
}


def detect_row_format(schema: pa.Schema, source: str = "arrow batches") -> str:
    """The alert-row format (``ztf-parquet`` or ``rubin-parquet``) of rows with this schema,
    recognised by the format registry; InputError naming ``source`` otherwise."""
    try:
        name = detect_schema_format(schema, source)
    except InputError:
        name = None
    if name in ROW_FORMATS:
        return name
    if name is not None:
        raise InputError(
            source,
            f"rows of format {name} ({REGISTRY[name].description}); the batch classifier reads "
            f"alert rows, one alert per row: {', '.join(ROW_FORMATS)}",
        )
    raise InputError(
        source,
        f"columns {schema.names[:10]} are not alert rows of {' or '.join(ROW_FORMATS)} "
        f"(ZTF: objectId and a candidate struct with fid and magpsf; Rubin: a diaSource "
        f"struct); {supported()}",
    )


def required_fields(format: str) -> Projection:
    """The nested fields the reader of ``format`` uses (top-level names, or (name, fields))."""
    try:
        return ROW_FORMATS[format].fields
    except KeyError:
        raise InputError(
            "format", f"{format!r} is not an alert-row format; expected one of {list(ROW_FORMATS)}"
        ) from None


def project_schema(schema: pa.Schema, format: str) -> pa.Schema:
    """``schema`` cut to the columns and nested fields the reader of ``format`` uses (those
    present; types unchanged). Casting a batch to it (``batch.cast``) drops the rest, and an
    engine that reads with it never reads cutouts or unused candidate fields."""
    return project_arrow_schema(schema, required_fields(format))


# -- the model, once per process --------------------------------------------------------------
@lru_cache(maxsize=8)
def _load(path: str, provider: str, threads: int | None, precision: str) -> LoadedModel:
    return LoadedModel.load(path, provider=provider, threads=threads, precision=precision)  # type: ignore[arg-type]


def cached_model(
    model: str | Path, provider: str = "cpu", threads: int | None = 1, precision: str = "auto"
) -> LoadedModel:
    """The model loaded once per process, keyed by (file, provider, threads, precision).

    An engine's Python worker runs many tasks; loading the session once per task costs more
    than classifying a small partition. ``threads=1`` by default: an engine runs one task per
    core, and ONNX Runtime's own thread pool per task only competes with the other tasks
    (measured 24-29 % slower on 2 cores)."""
    return _load(str(resolve_model_path(model).resolve()), provider, threads, precision)


# -- classifying batches ----------------------------------------------------------------------
def result_schema(labels: list[str] | tuple[str, ...]) -> pa.Schema:
    """The schema of :func:`classify_batches`'s batches: the output contract plus ``error``."""
    return output_schema(labels).append(pa.field(ERROR_COLUMN, ERROR_TYPE))


@dataclass
class BatchCounts:
    """What :func:`classify_batches` did, summed over the batches it has yielded."""

    rows: int = 0  # input rows
    classified: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # stage -> rows
    batches: int = 0

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


def classify_batches(
    batches: Iterable[pa.RecordBatch],
    model: LoadedModel | str | Path,
    *,
    format: str | None = None,
    strict: bool = False,
    batch_size: int = 512,
    n_jobs: int = 1,
    source: str = "arrow batches",
    counts: BatchCounts | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Classify alert rows batch by batch; yield, per non-empty input batch, one batch of
    :func:`result_schema` with one row per input row, in order (see the module docstring).

    ``model``: a loaded model, or a shipped model's name or an ``.onnx`` path (then loaded
    once per process with one ONNX Runtime thread: :func:`cached_model`). ``format``: the
    alert-row format; detected from the first batch's schema when None (all batches of one
    call share it). ``batch_size``: objects per ONNX Runtime call; ``n_jobs``: threads for
    the light-curve features (1: an engine runs one task per core). ``source`` names the
    batches in error reasons (a file, a Spark partition). ``counts`` is updated as batches
    are yielded; ``progress`` is called with the number of input rows of each batch done.

    ``strict``: raise :class:`InputError` on the first row that cannot be read or classified
    instead of reporting it in ``error`` (rows classify() skips are still reported).
    """
    loaded = model if isinstance(model, LoadedModel) else cached_model(model)
    if loaded.needs_images:
        raise ModelError(
            f"{loaded.path}: a model with an image tower needs the alerts' stamps, which the "
            "batch classifier does not decode yet; use `astroclf classify` on the files"
        )
    labels = list(loaded.metadata.labels)
    schema = result_schema(labels)
    for k, batch in enumerate(batches):
        if batch.num_rows == 0:
            continue
        if format is None:
            format = detect_row_format(batch.schema, source)
        out = _classify_one(
            batch,
            loaded,
            ROW_FORMATS[format],
            schema,
            strict,
            batch_size,
            n_jobs,
            f"{source} batch {k}",
        )
        if counts is not None:
            counts.batches += 1
            counts.rows += batch.num_rows
            stages = out.column(ERROR_COLUMN).field("stage").to_pylist()
            counts.errors.update(s for s in stages if s is not None)
            counts.classified += stages.count(None)
        if progress is not None:
            progress(batch.num_rows)
        yield out


def _records(batch: pa.RecordBatch, fmt: RowFormat, source: str) -> list[dict[str, Any]]:
    """The rows as Python records, cut to the fields the reader uses first (no cutouts)."""
    try:
        target = project_schema(batch.schema, fmt.name)
        projected = batch.select(target.names).cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise InputError(
            source, f"cannot cut the rows to the fields the {fmt.name} reader uses ({exc})"
        ) from exc
    return projected.to_pylist()


def _read(fmt: RowFormat, records: list[dict[str, Any]], source: str) -> LightCurveBatch:
    with np.errstate(all="ignore"):
        return clean_points(fmt.to_batch(records, source), REGISTRY[fmt.name].absolute_time)


# What a malformed row can raise in a reader: InputError for what it checks, the others for
# values of the wrong type that it does not (a string where a number belongs, say).
ROW_ERRORS = (InputError, ValueError, TypeError, KeyError, AttributeError, IndexError)


def _decode(
    records: list[dict[str, Any]], fmt: RowFormat, source: str, strict: bool
) -> tuple[LightCurveBatch | None, np.ndarray, dict[int, str]]:
    """(light curves of the good rows, their row positions, row -> why it was refused).

    All rows are read in one pass; if the reader refuses the batch, row by row, so that one
    bad row does not take the others with it and its reason names it."""
    everything = np.arange(len(records))
    try:
        return _read(fmt, records, source), everything, {}
    except ROW_ERRORS:
        pass  # find the rows that cause it
    refused: dict[int, str] = {}
    for i, record in enumerate(records):
        try:
            _read(fmt, [record], f"{source} row {i}")
        except ROW_ERRORS as exc:
            if strict:
                raise InputError(f"{source} row {i}", _reason(exc)) from exc
            refused[i] = _reason(exc)
    good = np.asarray([i for i in range(len(records)) if i not in refused], np.int64)
    if not len(good):
        return None, good, refused
    return _read(fmt, [records[i] for i in good], source), good, refused


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"


def _classify(
    lc: LightCurveBatch, model: LoadedModel, batch_size: int, n_jobs: int, source: str, strict: bool
) -> tuple[list[tuple[np.ndarray, Predictions]], dict[int, str]]:
    """classify() of the batch: [(light-curve positions of its objects, predictions)] and
    the objects whose model call failed, position -> reason.

    A failure of the whole batch is retried object by object, so that it is pinned on the
    objects that cause it; if every object of a batch of several fails alone, it is the
    model, not the data, and the error is raised. ModelError always propagates."""
    everything = np.arange(len(lc))
    try:
        return [(everything, classify(lc, model, batch_size=batch_size, n_jobs=n_jobs))], {}
    except ModelError:
        raise
    except Exception as exc:
        if strict:
            raise InputError(source, f"classification failed ({_reason(exc)})") from exc
        first = exc
    parts: list[tuple[np.ndarray, Predictions]] = []
    failed: dict[int, str] = {}
    for i in range(len(lc)):
        one = lc.select(np.asarray([i]))
        try:
            parts.append((np.asarray([i]), classify(one, model, batch_size=1, n_jobs=1)))
        except ModelError:
            raise
        except Exception as exc:
            failed[i] = f"classification failed ({_reason(exc)})"
    if len(lc) > 1 and len(failed) == len(lc):
        raise first
    return parts, failed


def _classify_one(
    batch: pa.RecordBatch,
    model: LoadedModel,
    fmt: RowFormat,
    schema: pa.Schema,
    strict: bool,
    batch_size: int,
    n_jobs: int,
    source: str,
) -> pa.RecordBatch:
    records = _records(batch, fmt, source)
    lc, good, refused = _decode(records, fmt, source, strict)
    errors: dict[int, tuple[str, str]] = {i: (STAGE_DECODE, r) for i, r in refused.items()}
    tables: list[pa.Table] = []
    positions: list[np.ndarray] = []
    if lc is not None:
        parts, failed = _classify(lc, model, batch_size, n_jobs, source, strict)
        for lc_rows, predictions in parts:
            if len(predictions):
                table = predictions.to_arrow()
                tables.append(
                    table.append_column(
                        pa.field(ERROR_COLUMN, ERROR_TYPE), pa.nulls(len(table), ERROR_TYPE)
                    )
                )
                positions.append(good[lc_rows[predictions.rows]])
            for reason, where in predictions.skipped_rows.items():
                for i in good[lc_rows[where]]:
                    errors[int(i)] = (STAGE_SKIPPED, f"{source} row {int(i)}: {reason}")
        for i, reason in failed.items():
            errors[int(good[i])] = (STAGE_CLASSIFY, f"{source} row {int(good[i])}: {reason}")
    if errors:
        tables.append(_error_rows(errors, records, fmt, schema))
        positions.append(np.asarray(sorted(errors), np.int64))
    placed = np.concatenate(positions) if positions else np.zeros(0, np.int64)
    if len(placed) != batch.num_rows or len(np.unique(placed)) != batch.num_rows:
        raise RuntimeError(  # a bug here, never the input's fault
            f"{source}: {batch.num_rows} rows in, {len(placed)} placed in the output"
        )
    table = pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()
    order = np.argsort(placed, kind="stable")
    table = table.take(pa.array(order, pa.int64()))
    return (
        table.combine_chunks().to_batches()[0]
        if table.num_rows
        else pa.RecordBatch.from_pylist([], schema)
    )


def _error_rows(
    errors: dict[int, tuple[str, str]],
    records: list[dict[str, Any]],
    fmt: RowFormat,
    schema: pa.Schema,
) -> pa.Table:
    """Rows of ``schema`` for the refused rows (in row order): ids, nulls, the error."""
    rows = sorted(errors)
    ids = [fmt.ids(records[i]) for i in rows]
    columns = {
        "object_id": pa.array([i[0] for i in ids], pa.string()),
        "alert_id": pa.array([i[1] for i in ids], pa.string()),
        ERROR_COLUMN: pa.StructArray.from_arrays(
            [
                pa.array([errors[i][0] for i in rows], pa.string()),
                pa.array([errors[i][1] for i in rows], pa.string()),
                pa.array([_row_json(records[i]) for i in rows], pa.string()),
            ],
            fields=list(ERROR_TYPE),
        ),
    }
    return pa.table(
        [columns.get(f.name, pa.nulls(len(rows), f.type)) for f in schema], schema=schema
    )


def _row_json(record: dict[str, Any]) -> str:
    """The row (the fields the reader uses) as JSON; bytes and other odd values as text."""
    return json.dumps(record, default=str)


# -- splitting the two outputs ----------------------------------------------------------------
def split_errors(table: pa.Table | pa.RecordBatch) -> tuple[pa.Table, pa.Table]:
    """(the output contract: classified rows without ``error``, the error table of
    :data:`ERROR_SCHEMA`) of classify_batches' output."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    failed = table.column(ERROR_COLUMN).is_valid()
    good = table.filter(pc.invert(failed)).drop_columns([ERROR_COLUMN])
    bad = table.filter(failed)
    error = bad.column(ERROR_COLUMN).combine_chunks() if bad.num_rows else None
    errors = pa.table(
        [
            bad.column("object_id"),
            bad.column("alert_id"),
            *(
                error.field(name) if error is not None else pa.array([], pa.string())
                for name in ("stage", "reason", "row")
            ),
        ],
        schema=ERROR_SCHEMA,
    )
    return good, errors
