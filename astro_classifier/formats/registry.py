"""The format registry: every input format declared once, used by every door.

Each format module of this package declares its formats once, as an :class:`InputFormat`:
how a file of that format is recognised, how files are read into a :class:`LightCurveBatch`,
(for formats that travel on Kafka) how one message value is decoded, and where the format
has them, how its alerts' image stamps and the spectra beside its light curves are read.
:data:`REGISTRY` lists them in detection order. Format detection, :func:`read_light_curves`
(``astroclf classify``, ``evaluate``, training), the worker's :func:`decode_micro_batch`,
``astroclf replay``, the stamps (:func:`decode_cutouts`, :func:`read_cutouts_of`) and the
spectra (:func:`read_spectra_of`) all go through it; there is no other dispatcher.

===============  =====================================================  ==========================
format           files                                                  one Kafka message value
===============  =====================================================  ==========================
plasticc         PLAsTiCC light curves, CSV or Parquet                  (not a message format)
long             astroclf's long format, Parquet or CSV                 (not a message format)
eros1            EROS-1 ``train.csv`` + arrays file beside it           (not a message format)
ztf-avro         ZTF alert Avro containers (ZTF's, brokers' Spark       an Avro container
                 re-publications; any Avro codec)
ztf-parquet      ZTF alerts as Parquet rows (Fink, ALeRCE data lakes)   a Parquet file of rows
rubin-avro       Rubin alert Avro containers (v3-v11, ELAsTiCC)         an Avro container
rubin-parquet    Rubin alerts as Parquet rows (Fink)                    a Parquet file of rows
rubin-wire       Confluent wire format files (magic 0, schema id)       one wire-format message
json             astroclf JSON alerts (one per line)                    one JSON alert
===============  =====================================================  ==========================

Detection reads content, never names: the Avro magic and the writer schema's fields, the
wire-format magic byte, the Parquet magic and its columns, CSV headers, JSON keys. A file
from a survey the project does not read (an ATLAS ``atlas.alert`` or DECam ``decat.object``
Avro container, say) is refused with one line naming the file, what it looks like and what
is supported.

Every batch read or decoded here passes through :func:`clean_points` once, so points no
survey could have measured are dropped and counted (``LightCurveBatch.dropped``) the same
way in every door, and floating-point warnings never reach the output.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from astro_classifier.core.counts import merge_counts
from astro_classifier.core.cutouts import STAMP_SIZE, CutoutBatch, align_cutouts
from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import LightCurveBatch
from astro_classifier.core.quality import clean_points
from astro_classifier.core.spectra import Spectra
from astro_classifier.formats import jsonalert, labelled, longformat, plasticc, rubin, ztf
from astro_classifier.formats.base import FileProbe, InputFormat, ReadOptions
from astro_classifier.formats.rubin import SchemaDirectory, nearest_schema_dir

# Avro namespaces of alert streams astroclf does not read, for a refusal that names them.
FOREIGN_SURVEYS = {
    "atlas": "ATLAS (filters o and c: no astroclf model has those bands)",
    "decat": "DECam/DESIRT (DECAT pipeline)",
    "antares": "ANTARES re-publication",
}


# -- the formats, in detection order (the first that recognises a file wins) -------------
REGISTRY: dict[str, InputFormat] = {
    fmt.name: fmt
    for fmt in (
        plasticc.PLASTICC,
        longformat.LONG,
        labelled.EROS1,
        ztf.ZTF_AVRO,
        ztf.ZTF_PARQUET,
        rubin.RUBIN_AVRO,
        rubin.RUBIN_PARQUET,
        rubin.RUBIN_WIRE,
        labelled.ZTF_BTS,
        labelled.MANYTDE,
        labelled.SLSNE,
        labelled.OSC,
        labelled.ALERCE_EXAMPLES,
        labelled.ANTARES_BTS,
        labelled.TDSS_QUASARS,
        jsonalert.JSON,
    )
}
FORMATS: tuple[str, ...] = tuple(REGISTRY)
# Formats whose light curves can take an object table (``metadata``).
OBJECT_TABLE_FORMATS = tuple(name for name, fmt in REGISTRY.items() if fmt.object_table)
MESSAGE_FORMATS = tuple(name for name, fmt in REGISTRY.items() if fmt.decode is not None)
# Formats whose alerts carry image stamps, and formats with spectra beside the light curves.
CUTOUT_FORMATS = tuple(name for name, fmt in REGISTRY.items() if fmt.stamps is not None)
SPECTRA_FORMATS = tuple(name for name, fmt in REGISTRY.items() if fmt.spectra is not None)


def get_format(name: str, source: str = "format") -> InputFormat:
    """The registry entry of ``name``; InputError listing the formats otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise InputError(
            source, f"unknown format {name!r}; expected one of {list(FORMATS)}"
        ) from None


# -- detection ------------------------------------------------------------------------------
def detect_format(path: str | Path) -> str:
    """The format (one of :data:`FORMATS`) of the file at ``path``, from its content.

    Raises :class:`InputError` naming the file when it is missing, empty, unreadable or of
    none of the known formats (saying what it looks like).
    """
    probe = FileProbe(Path(path))
    for fmt in REGISTRY.values():
        if fmt.recognise(probe):
            return fmt.name
    raise InputError(
        probe.path, f"cannot tell the input format ({_looks_like(probe)}); {supported()}"
    )


def detect_schema_format(schema: pa.Schema, source: str = "arrow batches") -> str:
    """The format of Parquet rows with this Arrow ``schema`` (rows that arrive as record
    batches rather than files), as :func:`detect_format` would name the file; InputError
    naming ``source`` when none recognises it."""
    probe = FileProbe.of_parquet_schema(schema, source)
    for fmt in REGISTRY.values():
        try:
            if fmt.recognise(probe):
                return fmt.name
        except (InputError, AttributeError, OSError):
            continue  # a format that needs more than a schema to decide
    raise InputError(source, f"cannot tell the input format ({_looks_like(probe)}); {supported()}")


def supported() -> str:
    """One sentence listing the supported formats, for errors."""
    return "expected one of the supported formats: " + "; ".join(
        f"{fmt.name}: {fmt.description}" for fmt in REGISTRY.values()
    )


def _looks_like(probe: FileProbe) -> str:
    """What an unrecognised file looks like, in a phrase."""
    if probe.is_avro_container:
        schema = probe.avro_schema
        name = schema.get("name", "?") if isinstance(schema, dict) else str(schema)
        namespace = schema.get("namespace") if isinstance(schema, dict) else None
        full = name if "." in name or not namespace else f"{namespace}.{name}"
        fields = (
            [f.get("name") for f in schema.get("fields", [])] if isinstance(schema, dict) else []
        )
        survey = FOREIGN_SURVEYS.get(full.split(".")[0].lower())
        what = f"an Avro container with writer schema {full!r}, fields {fields[:8]}"
        if survey:
            what += f": alerts from {survey}, a survey astroclf does not read"
        return what
    if probe.is_parquet or probe.columns:
        kind = "a Parquet table" if probe.is_parquet else "a CSV table"
        return f"{kind} with columns {probe.columns[:10]}"
    if probe.json_keys:
        return f"a JSON object with keys {sorted(probe.json_keys)[:10]}"
    return "neither an Avro container, wire format, Parquet, CSV nor JSON"


# -- reading files and decoding messages ----------------------------------------------------
def read_light_curves(
    paths: Sequence[str | Path] | str | Path,
    format: str | None = None,
    metadata: str | Path | None = None,
    schema_dir: str | Path | None = None,
    label_column: str | None = None,
) -> LightCurveBatch:
    """Read light-curve files of any supported format into one batch.

    ``format`` (one of :data:`FORMATS`) applies to every path; when None each file's format
    is detected with :func:`detect_format`. Files are grouped by format (groups in order of
    first appearance, files in the given order within a group) and the batches concatenated.
    ``metadata`` is an object table for a single ``plasticc`` or ``long`` file, whose
    ``label_column`` (default: ``target`` for PLAsTiCC, ``label`` for long) holds labels.
    ``schema_dir`` holds the Rubin alert schemas used to decode ``rubin-wire`` files.
    Fluxes in nJy, time in MJD (EROS-1: EROS days); unusable points are dropped and counted
    in ``dropped``. Raises :class:`InputError`.
    """
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not paths:
        raise InputError("input", "no input files given")
    if format is not None:
        get_format(format)
    if format is not None and REGISTRY[format].message_per_file:
        paths = _expand_alert_folders(paths, format)
    groups: dict[str, list[Path]] = {}
    for path in paths:
        groups.setdefault(format or detect_format(path), []).append(path)
    if metadata is not None and (len(paths) > 1 or set(groups) - set(OBJECT_TABLE_FORMATS)):
        raise InputError(
            metadata,
            f"an object table goes with a single {' or '.join(OBJECT_TABLE_FORMATS)} light-curve "
            f"file; got {len(paths)} file(s) of format(s) {sorted(groups)}",
        )
    options = ReadOptions(
        metadata=None if metadata is None else Path(metadata),
        schema_dir=None if schema_dir is None else Path(schema_dir),
        label_column=label_column,
    )
    batches = []
    with np.errstate(all="ignore"):
        for name, group in groups.items():
            fmt = REGISTRY[name]
            batches.append(clean_points(fmt.read(group, options), fmt.absolute_time))
    return LightCurveBatch.concat(batches)


def _expand_alert_folders(paths: list[Path], format: str) -> list[Path]:
    """Folders of alert files (one alert container per file) -> their files of ``format``,
    recursively in sorted order; other files in them (schemas, samples) are left out."""
    out: list[Path] = []
    for path in paths:
        if not path.is_dir():
            out.append(path)
            continue
        found = []
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            try:
                if detect_format(file) == format:
                    found.append(file)
            except InputError:
                continue
        if not found:
            raise InputError(
                path, f"no {format} files in this folder; expected {REGISTRY[format].description}"
            )
        out += found
    return out


def decode_message(
    value: bytes | None,
    input_format: str,
    schemas: Any,
    source: str,
    cutout_size: int | None = None,
) -> LightCurveBatch:
    """One Kafka message value -> the light curves of the alerts it carries.

    ``cutout_size`` (models with an image tower only): also decode the alerts' stamps into
    ``batch.cutouts`` at that size; a format without stamps, or stamps that cannot be
    decoded, give rows marked missing with the reason (the light curves still classify).

    Raises :class:`InputError` (naming ``source``, e.g. ``topic[partition]@offset``) for
    anything that is not a valid alert of ``input_format``; the worker dead-letters those.
    A Schema Registry that cannot be reached raises :class:`TransientError` instead.
    """
    fmt = _message_format(input_format)
    if not value:
        raise InputError(source, f"empty message; expected {fmt.description}")
    if cutout_size is not None and _stamps_in_records(fmt):
        records = fmt.decode_records_with_stamps(value, schemas, source)  # type: ignore[misc]
        if not records:
            raise InputError(source, "the message holds no alert")
        batch = _records_to_light_curves(fmt, records, source)
        batch.cutouts = _record_cutouts(fmt, records, source, cutout_size)
        return batch
    with np.errstate(all="ignore"):
        batch = clean_points(fmt.decode(value, schemas, source), fmt.absolute_time)
    if len(batch) == 0:
        raise InputError(source, "the message holds no alert")
    if cutout_size is not None:
        batch.cutouts = message_cutouts(batch, value, input_format, schemas, source, cutout_size)
    return batch


def _stamps_in_records(fmt: InputFormat) -> bool:
    """Whether the format's records stage can carry the stamps too (one decode for both)."""
    return (
        fmt.decode_records_with_stamps is not None
        and fmt.records_stamps is not None
        and fmt.records_to_batch is not None
    )


def _record_cutouts(fmt: InputFormat, records: list[Any], source: str, size: int) -> CutoutBatch:
    """The stamps of one message's records (decoded with them), one row per record in order;
    rows marked missing with the reason when they cannot be read."""
    try:
        return fmt.records_stamps(records, source, size)  # type: ignore[misc]
    except InputError as exc:
        missing = CutoutBatch.missing(len(records), size)
        missing.failure[:] = f"cutouts not decodable: {exc.reason}"
        return missing


def _message_format(input_format: str) -> InputFormat:
    fmt = REGISTRY.get(input_format)
    if fmt is None or fmt.decode is None:
        raise ValueError(
            f"{input_format!r} is not a message format; expected one of {list(MESSAGE_FORMATS)}"
        )
    return fmt


@dataclass(frozen=True)
class RecordError:
    """One alert record of a container message that cannot be converted to a light curve.

    ``index`` is its position in the container (0-based), ``reason`` why it was refused,
    ``container`` the record alone as a valid single-record Avro container (the message's
    writer schema, codec and user metadata), for an operator to inspect and replay.
    """

    index: int
    reason: str
    container: bytes


@dataclass
class PartialDecode:
    """A container message whose records convert only in part: ``batch`` holds the light
    curves of the good records (classified as usual), ``record_errors`` one
    :class:`RecordError` per refused record (in container order), ``records`` the number of
    records in the container. Plain data, so it crosses the decode pool's process boundary.
    """

    batch: LightCurveBatch
    record_errors: list[RecordError]
    records: int


# What decode_messages gives per message.
Decoded = LightCurveBatch | PartialDecode | InputError


@dataclass
class DecodedMessages:
    """The messages of a micro-batch, decoded: every alert's light curve in one batch.

    ``batch`` holds the light curves of every alert decoded, in message order (None when no
    message decoded); ``message`` the index (in the messages given) of each of its objects'
    message. ``errors`` holds the :class:`InputError` of each message refused whole and
    ``partial`` the :class:`PartialDecode` of each container that converted only in part (its
    good records' objects are in ``batch`` too). ``batch.dropped`` counts the points dropped
    in every message. Plain data, so it crosses the decode pool's process boundary.
    """

    count: int  # messages given
    batch: LightCurveBatch | None
    message: np.ndarray  # (N,) int64, one per object of ``batch``
    errors: dict[int, InputError]
    partial: dict[int, PartialDecode]

    @classmethod
    def from_parts(
        cls,
        count: int,
        parts: Sequence[tuple[int, LightCurveBatch]],
        errors: dict[int, InputError],
        partial: dict[int, PartialDecode],
    ) -> DecodedMessages:
        """From (message index, its light curves) pairs in message order."""
        if not parts:
            return cls(count, None, np.zeros(0, np.int64), errors, partial)
        return cls(
            count,
            LightCurveBatch.concat([batch for _, batch in parts]),
            np.concatenate([np.full(len(batch), i, np.int64) for i, batch in parts]),
            errors,
            partial,
        )

    @classmethod
    def concat(cls, runs: Sequence[DecodedMessages]) -> DecodedMessages:
        """Consecutive runs of messages (a decode pool's chunks) as one."""
        parts, errors, partial = [], {}, {}
        start = 0
        for run in runs:
            if run.batch is not None:
                parts.append((run.batch, run.message + start))
            errors.update({start + i: e for i, e in run.errors.items()})
            partial.update({start + i: p for i, p in run.partial.items()})
            start += run.count
        if not parts:
            return cls(start, None, np.zeros(0, np.int64), errors, partial)
        return cls(
            start,
            LightCurveBatch.concat([batch for batch, _ in parts]),
            np.concatenate([message for _, message in parts]),
            errors,
            partial,
        )

    def per_message(self) -> list[Decoded]:
        """One result per message, in order: its batch, :class:`PartialDecode` or
        :class:`InputError`. The dropped-point counts are carried by the first batch."""
        results: list[Decoded] = []
        first = True
        for i in range(self.count):
            if i in self.errors:
                results.append(self.errors[i])
                continue
            if i in self.partial:
                results.append(self.partial[i])
                continue
            assert self.batch is not None
            batch = self.batch.select(np.flatnonzero(self.message == i))
            batch.dropped = dict(self.batch.dropped) if first else {}
            first = False
            results.append(batch)
        return results


def decode_messages(
    items: Sequence[tuple[bytes | None, str]],
    input_format: str,
    schemas: Any,
    cutout_size: int | None = None,
) -> list[Decoded]:
    """:func:`decode_message` of each (value, source), in order: a batch, a
    :class:`PartialDecode`, or the :class:`InputError` that message raised (any other
    exception propagates). The batches equal decode_message's, except that the dropped-point
    counts of the whole call are carried by the first batch. See :func:`decode_micro_batch`,
    which this splits per message."""
    return decode_micro_batch(items, input_format, schemas, cutout_size).per_message()


def decode_micro_batch(
    items: Sequence[tuple[bytes | None, str]],
    input_format: str,
    schemas: Any,
    cutout_size: int | None = None,
) -> DecodedMessages:
    """The (value, source) messages of a micro-batch -> their alerts' light curves in one
    batch, and the messages refused (see :class:`DecodedMessages`); exceptions other than
    :class:`InputError` propagate.

    Formats with a records stage (ZTF and Rubin Avro alerts) decode each message to its
    alert records, then convert the records of all messages to light curves in one pass:
    the conversion's fixed cost (a few dozen array operations, ~4x the work of one alert's
    points) is paid once per call instead of once per message. If that pass refuses the
    input, the messages are converted one by one, so the error names its own message.

    A container of several records that the conversion refuses is converted record by
    record: if some records convert and others do not, the message gives a
    :class:`PartialDecode` (the good records' batch and one :class:`RecordError` per bad
    record) instead of an InputError, so one bad record does not take the others with it.
    If every record is refused, or the container itself cannot be decoded, the message is
    one InputError.

    ``cutout_size``: as for :func:`decode_message`, ``batch.cutouts`` holds the alerts' stamps.
    Formats whose records stage carries them (ZTF and Rubin Avro containers, Rubin wire
    format) decode each message once, light curves and stamps together; Parquet rows read
    the stamp columns apart from the light-curve columns.
    """
    fmt = _message_format(input_format)
    errors: dict[int, InputError] = {}
    partial: dict[int, PartialDecode] = {}
    parts: list[tuple[int, LightCurveBatch]] = []
    with_stamps = cutout_size is not None
    if (
        fmt.records_to_batch is None
        or fmt.decode_records is None
        or (with_stamps and not _stamps_in_records(fmt))
    ):
        for i, (value, source) in enumerate(items):
            result = _decode_one(value, input_format, schemas, source, cutout_size)
            if isinstance(result, InputError):
                errors[i] = result
            elif isinstance(result, PartialDecode):
                partial[i] = result
                parts.append((i, result.batch))
            else:
                parts.append((i, result))
        return DecodedMessages.from_parts(len(items), parts, errors, partial)

    read_records = fmt.decode_records_with_stamps if with_stamps else fmt.decode_records
    decoded: list[tuple[int, list[Any]]] = []  # (message index, its records)
    for i, (value, source) in enumerate(items):
        try:
            if not value:
                raise InputError(source, f"empty message; expected {fmt.description}")
            records = read_records(value, schemas, source)
            if not records:
                raise InputError(source, "the message holds no alert")
        except InputError as exc:
            errors[i] = exc
            continue
        decoded.append((i, records))
    if not decoded:
        return DecodedMessages.from_parts(len(items), [], errors, partial)

    first, last = items[decoded[0][0]][1], items[decoded[-1][0]][1]
    try:
        combined = _records_to_light_curves(
            fmt, [r for _, records in decoded for r in records], f"{first} .. {last}"
        )
    except InputError:  # convert message by message: the error names its message
        for i, records in decoded:
            value, source = items[i]
            try:
                batch = _records_to_light_curves(fmt, records, source)
                if with_stamps:
                    batch.cutouts = _record_cutouts(fmt, records, source, cutout_size)  # type: ignore[arg-type]
                parts.append((i, batch))
            except InputError as exc:  # record by record, where the container has several
                split = _split_container(fmt, value, records, source, exc)  # type: ignore[arg-type]
                if isinstance(split, PartialDecode):
                    if with_stamps:
                        refused = {e.index for e in split.record_errors}
                        good = [k for k in range(len(records)) if k not in refused]
                        stamps = _record_cutouts(fmt, records, source, cutout_size)  # type: ignore[arg-type]
                        split.batch.cutouts = stamps.take(np.asarray(good, np.int64))
                    partial[i] = split
                    parts.append((i, split.batch))
                else:
                    errors[i] = split
        return DecodedMessages.from_parts(len(items), parts, errors, partial)
    if with_stamps:
        combined.cutouts = CutoutBatch.concat(
            [
                _record_cutouts(fmt, records, items[i][1], cutout_size)  # type: ignore[arg-type]
                for i, records in decoded
            ]
        )
    message = np.repeat(
        np.array([i for i, _ in decoded], np.int64), [len(records) for _, records in decoded]
    )
    return DecodedMessages(len(items), combined, message, errors, partial)


def _decode_one(
    value: bytes | None,
    input_format: str,
    schemas: Any,
    source: str,
    cutout_size: int | None = None,
) -> Decoded:
    try:
        return decode_message(value, input_format, schemas, source, cutout_size)
    except InputError as exc:
        fmt = _message_format(input_format)
        if not value or fmt.decode_records is None or fmt.records_to_batch is None:
            return exc
        try:
            records = fmt.decode_records(value, schemas, source)
        except InputError:  # the container itself is broken: the message's error stands
            return exc
        split = _split_container(fmt, value, records, source, exc)
        if isinstance(split, PartialDecode) and cutout_size is not None:
            split.batch.cutouts = message_cutouts(
                split.batch, value, input_format, schemas, source, cutout_size
            )
        return split


def _records_to_light_curves(fmt: InputFormat, records: list[Any], source: str) -> LightCurveBatch:
    with np.errstate(all="ignore"):
        return clean_points(fmt.records_to_batch(records, source), fmt.absolute_time)  # type: ignore[misc]


def _split_container(
    fmt: InputFormat, value: bytes, records: list[Any], source: str, error: InputError
) -> PartialDecode | InputError:
    """The records of a container the conversion refused (``error``), converted one by one:
    a :class:`PartialDecode` when some convert and others do not, otherwise ``error`` (one
    record, every record refused, or none refused alone)."""
    if len(records) < 2:
        return error
    refused: dict[int, str] = {}
    for index, record in enumerate(records):
        try:
            _records_to_light_curves(fmt, [record], source)
        except InputError as exc:
            refused[index] = exc.reason
    if not refused or len(refused) == len(records):
        return error
    try:
        batch = _records_to_light_curves(
            fmt, [r for k, r in enumerate(records) if k not in refused], source
        )
        alone = single_record_containers(value, refused)
    except Exception:  # not splittable after all: the whole message is dead-lettered
        return error
    if len(batch) == 0 or set(alone) != set(refused):
        return error
    return PartialDecode(
        batch,
        [RecordError(k, reason, alone[k]) for k, reason in sorted(refused.items())],
        len(records),
    )


def single_record_containers(value: bytes, indices: Any) -> dict[int, bytes]:
    """Records ``indices`` (0-based) of the Avro container ``value``, each re-encoded alone as
    a valid Avro container with the same writer schema, codec and user metadata."""
    wanted = set(indices)
    reader = fastavro.reader(io.BytesIO(value))
    schema = fastavro.parse_schema(reader.writer_schema)
    codec = reader.codec
    metadata = {k: v for k, v in reader.metadata.items() if not k.startswith("avro.")}
    out: dict[int, bytes] = {}
    for index, record in enumerate(reader):
        if index in wanted:
            sink = io.BytesIO()
            fastavro.writer(sink, schema, [record], codec=codec, metadata=metadata)
            out[index] = sink.getvalue()
    return out


def message_cutouts(
    batch: LightCurveBatch, value: bytes, input_format: str, schemas: Any, source: str, size: int
) -> CutoutBatch:
    """The stamps of a message's alerts, one row per object of ``batch``."""
    if input_format not in CUTOUT_FORMATS:
        missing = CutoutBatch.missing(len(batch), size)
        missing.failure[:] = f"format {input_format} carries no cutouts"
        return missing
    try:
        return align_cutouts(batch, decode_cutouts(value, input_format, source, schemas, size))
    except InputError as exc:
        missing = CutoutBatch.missing(len(batch), size)
        missing.failure[:] = f"cutouts not decodable: {exc.reason}"
        return missing


def file_messages(path: Path, format: str | None = None) -> list[tuple[str | None, bytes]] | None:
    """The Kafka messages (key, value) a file is replayed as, when its format is a message
    format: the file's bytes for containers and wire format, one single-row Parquet file per
    row for Parquet alert rows, one message per line for JSON alerts. None for the other
    formats (the caller sends their light curves as JSON alerts)."""
    fmt = REGISTRY[format or detect_format(path)]
    if fmt.message_per_file:
        return [(None, path.read_bytes())]
    if fmt.name == "json":
        return [(None, line) for line in path.read_bytes().splitlines() if line.strip()]
    if fmt.decode is not None:  # Parquet rows: one row per message
        table = pq.read_table(path)
        messages = []
        for row in range(table.num_rows):
            sink = io.BytesIO()
            pq.write_table(table.slice(row, 1), sink)
            messages.append((None, sink.getvalue()))
        return messages
    return None


# -- image stamps and spectra ---------------------------------------------------------------------
def decode_cutouts(
    data: bytes, format: str, source: str, schemas: Any = None, size: int = STAMP_SIZE
) -> CutoutBatch:
    """The cutouts of one file's or Kafka message's bytes in ``format`` (one of
    :data:`CUTOUT_FORMATS`; ``schemas`` is the Rubin schema source of ``rubin-wire``)."""
    fmt = REGISTRY.get(format)
    if fmt is None or fmt.stamps is None:
        raise InputError(
            source, f"format {format!r} carries no cutouts; expected one of {CUTOUT_FORMATS}"
        )
    return fmt.stamps(data, schemas, source, size)


def read_cutouts(
    folder: str | Path, size: int = STAMP_SIZE, schema_dir: str | Path | None = None
) -> CutoutBatch:
    """Every alert with cutouts under ``folder`` (recursively, files in sorted path order).

    Each file's format is detected from its content. Files that are
    not alerts of a format carrying cutouts (schemas, JSON samples, light-curve tables) are
    counted in ``skipped_files`` by reason, and so are files that fail to decode as a whole;
    alerts whose stamps fail keep their row with ``ok = False`` (see the module docstring).
    Rubin wire-format files are decoded with ``schema_dir``, else with the nearest
    ``schema`` folder at or above them inside ``folder``.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(root, "not a directory; expected a folder of alert files")
    batches: list[CutoutBatch] = []
    skipped: dict[str, int] = {}
    schema_cache: dict[Path, SchemaDirectory] = {}

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            fmt = detect_format(path)
        except InputError:
            skip("not an alert file")
            continue
        if fmt not in CUTOUT_FORMATS:
            skip(f"format {fmt} carries no cutouts")
            continue
        schemas = None
        if fmt == "rubin-wire":
            where = Path(schema_dir) if schema_dir is not None else nearest_schema_dir(path, root)
            if where is None:
                skip("rubin-wire file without a schema folder")
                continue
            schemas = schema_cache.setdefault(where, SchemaDirectory(where))
        try:
            batches.append(decode_cutouts(path.read_bytes(), fmt, str(path), schemas, size))
        except InputError:
            skip("alert file that cannot be decoded")
    batch = CutoutBatch.concat(batches) if batches else CutoutBatch.empty(size)
    batch.skipped_files = skipped
    return batch


# -- cutouts of light-curve batches ---------------------------------------------------------
def read_cutouts_of(
    paths: Sequence[str | Path],
    format: str | None = None,
    schema_dir: str | Path | None = None,
    size: int = STAMP_SIZE,
) -> CutoutBatch:
    """The cutouts of alert files and folders (the inputs of `astroclf classify`): each file
    decoded with ``format`` (detected when None); files of formats without cutouts
    contribute nothing (their objects get missing rows when aligned)."""
    batches: list[CutoutBatch] = []
    skipped: dict[str, int] = {}
    schemas = SchemaDirectory(schema_dir) if schema_dir is not None else None
    for path in map(Path, paths):
        if path.is_dir():
            part = read_cutouts(path, size, schema_dir)
            batches.append(part)
            continue
        fmt = format or detect_format(path)
        if fmt not in CUTOUT_FORMATS:
            skipped[f"format {fmt} carries no cutouts"] = (
                skipped.get(f"format {fmt} carries no cutouts", 0) + 1
            )
            continue
        batches.append(decode_cutouts(path.read_bytes(), fmt, str(path), schemas, size))
    out = CutoutBatch.concat(batches) if batches else CutoutBatch.empty(size)
    out.skipped_files = merge_counts([out.skipped_files, skipped])
    return out


def attach_cutouts(
    batch: Any,
    paths: Sequence[str | Path],
    format: str | None = None,
    schema_dir: str | Path | None = None,
    size: int = STAMP_SIZE,
) -> None:
    """Set ``batch.cutouts``: the stamps of the files ``batch`` was read from, one row per
    object (what `astroclf classify` and `astroclf embed` do for a model with an image tower)."""
    batch.cutouts = align_cutouts(batch, read_cutouts_of(paths, format, schema_dir, size))


def read_spectra_of(paths: Sequence[str | Path], format: str | None = None) -> Spectra:
    """The spectra beside light-curve inputs (the inputs of `astroclf embed`): those of the
    :data:`SPECTRA_FORMATS` (an ``osc`` folder's ``spectra.parquet``, an ``slsne`` folder's
    spectrum files). Inputs of other formats hold none."""
    parts = []
    for path in map(Path, paths):
        fmt = REGISTRY[format or detect_format(path)]
        if fmt.spectra is not None:
            parts.append(fmt.spectra(path))
    return Spectra.concat(parts) if parts else Spectra.empty()
