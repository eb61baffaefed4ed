"""The format registry: every input format declared once, used by every door.

Each :class:`InputFormat` says how a file of that format is recognised, how files are read
into a :class:`LightCurveBatch`, and (for formats that travel on Kafka) how one message value
is decoded. Format detection, :func:`read_light_curves` (``astroclf classify``, ``evaluate``,
training), the worker's :func:`decode_message` and ``astroclf replay`` all go through
:data:`REGISTRY`; there is no other dispatcher.

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
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from astro_classifier.alerts.avro import AVRO_CONTAINER_MAGIC, WIRE_HEADER, WIRE_MAGIC_BYTE
from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import LightCurveBatch
from astro_classifier.core.quality import clean_points
from astro_classifier.core.tables import CSV_SUFFIXES
from astro_classifier.data.longformat import POINT_COLUMNS
from astro_classifier.data.plasticc import is_plasticc_light_curve_table

PARQUET_MAGIC = b"PAR1"
RUBIN_TABLE_COLUMNS = ("diaSource",)  # Rubin alert rows (Fink Parquet)
EROS1_TABLE_COLUMNS = ("star_id_b", "star_id_r", "magnitude_b", "magnitude_r")
EROS1_ARRAYS_SUFFIX = "_varlength_features.csv.gz"
JSON_ALERT_KEYS = ("object_id", "points")
# Avro namespaces of alert streams astroclf does not read, for a refusal that names them.
FOREIGN_SURVEYS = {
    "atlas": "ATLAS (filters o and c: no astroclf model has those bands)",
    "decat": "DECam/DESIRT (DECAT pipeline)",
    "antares": "ANTARES re-publication",
}


@dataclass(frozen=True)
class ReadOptions:
    """What some formats need beside the files."""

    metadata: Path | None = None  # object table (plasticc, long)
    schema_dir: Path | None = None  # Rubin schema folder (rubin-wire)
    label_column: str | None = None  # object-table column holding labels (plasticc, long)


@dataclass(frozen=True)
class InputFormat:
    """One input format: how to recognise, read and decode it."""

    name: str
    description: str  # a phrase for --help and errors
    recognise: Callable[[FileProbe], bool]
    read: Callable[[list[Path], ReadOptions], LightCurveBatch]
    decode: Callable[[bytes, Any, str], LightCurveBatch] | None = None  # (value, schemas, source)
    # ``decode`` in two stages, for formats that have them (alert records, then light curves):
    # records of many messages convert to light curves in one pass (see decode_messages)
    decode_records: Callable[[bytes, Any, str], list[Any]] | None = None
    records_to_batch: Callable[[list[Any], str], LightCurveBatch] | None = None
    absolute_time: bool = True  # times are MJD (EROS-1: days from an arbitrary zero)
    object_table: bool = False  # takes an object table (``--metadata``)
    message_per_file: bool = False  # replay sends a file's bytes as one message
    label_column: str | None = None  # where labels come from by default (object table column)


class FileProbe:
    """What detection may look at in one file, each part read at most once and only if asked."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.is_dir = path.is_dir()  # catalogue formats are folders of files
        if self.is_dir:
            self.head = b""
            return
        try:
            with path.open("rb") as stream:
                self.head = stream.read(64)
        except OSError as exc:
            raise InputError(path, f"cannot read file ({exc})") from exc
        if not self.head:
            raise InputError(path, "file is empty")

    @property
    def is_avro_container(self) -> bool:
        return self.head.startswith(AVRO_CONTAINER_MAGIC)

    @property
    def is_parquet(self) -> bool:
        return self.head.startswith(PARQUET_MAGIC)

    @cached_property
    def avro_schema(self) -> Any:
        """The writer schema of an Avro container (None for other files)."""
        if not self.is_avro_container:
            return None
        try:
            with self.path.open("rb") as stream:
                return fastavro.reader(stream).writer_schema
        except Exception as exc:  # fastavro raises many types on a corrupt header
            raise InputError(self.path, f"cannot read the Avro container header ({exc})") from exc

    @cached_property
    def parquet_schema(self) -> pa.Schema | None:
        if not self.is_parquet:
            return None
        try:
            return pq.read_schema(self.path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(self.path, f"cannot read the Parquet schema: {exc}") from exc

    @cached_property
    def columns(self) -> list[str]:
        """Column names of a Parquet or CSV table ([] for other files)."""
        if self.parquet_schema is not None:
            return [name.strip() for name in self.parquet_schema.names]
        if self.path.name.lower().endswith(CSV_SUFFIXES):
            try:
                return [name.strip() for name in pacsv.open_csv(self.path).schema.names]
            except (pa.ArrowInvalid, OSError) as exc:
                raise InputError(self.path, f"cannot read the CSV header: {exc}") from exc
        return []

    @cached_property
    def json_keys(self) -> set[str]:
        """Keys of the first JSON object of a JSON (lines) file; empty for other files."""
        if self.head.lstrip()[:1] != b"{":
            return set()
        try:
            with self.path.open("rb") as stream:
                doc = json.loads(stream.readline())
        except (ValueError, OSError):
            return set()
        return set(doc) if isinstance(doc, dict) else set()


# -- the formats ----------------------------------------------------------------------------
def _read_each(reader: Callable[[Path], LightCurveBatch]) -> Callable[..., LightCurveBatch]:
    return lambda paths, _options: LightCurveBatch.concat([reader(path) for path in paths])


def _read_plasticc(paths: list[Path], options: ReadOptions) -> LightCurveBatch:
    from astro_classifier.data.plasticc import read_plasticc

    return LightCurveBatch.concat(
        [read_plasticc(path, options.metadata, options.label_column) for path in paths]
    )


def _read_long(paths: list[Path], options: ReadOptions) -> LightCurveBatch:
    from astro_classifier.data.longformat import read_long

    return LightCurveBatch.concat(
        [read_long(path, options.metadata, options.label_column) for path in paths]
    )


def _read_eros1(path: Path) -> LightCurveBatch:
    from astro_classifier.data.eros1 import read_eros1

    return read_eros1(path, _eros1_arrays(path))


def _is_ztf_avro(probe: FileProbe) -> bool:
    from astro_classifier.alerts.ztf import is_ztf_alert_schema

    return probe.is_avro_container and is_ztf_alert_schema(probe.avro_schema)


def _is_rubin_avro(probe: FileProbe) -> bool:
    from astro_classifier.alerts.rubin import is_rubin_avro_schema

    return probe.is_avro_container and is_rubin_avro_schema(probe.avro_schema)


def _is_ztf_parquet(probe: FileProbe) -> bool:
    from astro_classifier.alerts.ztf import is_ztf_parquet_schema

    return probe.is_parquet and is_ztf_parquet_schema(probe.parquet_schema)


def _read_ztf_avro(paths: list[Path], _options: ReadOptions) -> LightCurveBatch:
    from astro_classifier.alerts.ztf import read_ztf_avro

    return read_ztf_avro(paths)


def _decode_ztf_avro(value: bytes, schemas: Any, source: str) -> LightCurveBatch:
    return _ztf_records_to_batch(_ztf_avro_records(value, schemas, source), source)


def _ztf_avro_records(value: bytes, _schemas: Any, source: str) -> list[Any]:
    from astro_classifier.alerts.ztf import decode_ztf_avro_bytes

    return decode_ztf_avro_bytes(value, source)


def _ztf_records_to_batch(records: list[Any], source: str) -> LightCurveBatch:
    from astro_classifier.alerts.ztf import ztf_records_to_batch

    return ztf_records_to_batch(records, source)


def _read_ztf_parquet(paths: list[Path], _options: ReadOptions) -> LightCurveBatch:
    from astro_classifier.alerts.ztf import read_ztf_parquet

    return read_ztf_parquet(paths)


def _decode_ztf_parquet(value: bytes, _schemas: Any, source: str) -> LightCurveBatch:
    from astro_classifier.alerts.ztf import decode_ztf_parquet_bytes, ztf_records_to_batch

    return ztf_records_to_batch(decode_ztf_parquet_bytes(value, source), source)


def _read_rubin_avro(paths: list[Path], _options: ReadOptions) -> LightCurveBatch:
    from astro_classifier.alerts.rubin import read_rubin_avro

    return read_rubin_avro(paths)


def _decode_rubin_avro(value: bytes, schemas: Any, source: str) -> LightCurveBatch:
    return _rubin_records_to_batch(_rubin_avro_records(value, schemas, source), source)


def _rubin_avro_records(value: bytes, _schemas: Any, source: str) -> list[Any]:
    from astro_classifier.alerts.rubin import decode_rubin_avro_bytes

    return decode_rubin_avro_bytes(value, source)


def _rubin_records_to_batch(records: list[Any], source: str) -> LightCurveBatch:
    from astro_classifier.alerts.rubin import rubin_records_to_batch

    return rubin_records_to_batch(records, source)


def _read_rubin_parquet(paths: list[Path], _options: ReadOptions) -> LightCurveBatch:
    from astro_classifier.alerts.rubin import read_rubin_parquet

    return LightCurveBatch.concat([read_rubin_parquet(path) for path in paths])


def _decode_rubin_parquet(value: bytes, _schemas: Any, source: str) -> LightCurveBatch:
    from astro_classifier.alerts.rubin import read_rubin_parquet

    return read_rubin_parquet(pa.BufferReader(value), source=source)


def _read_rubin_wire(paths: list[Path], options: ReadOptions) -> LightCurveBatch:
    from astro_classifier.alerts.rubin import read_rubin_wire

    if options.schema_dir is None:
        raise InputError(
            paths[0],
            "Rubin wire-format input needs schema_dir, the folder of Rubin alert schemas "
            "(lsst/alert_packet schema/<major>/<minor>/) to decode the message bodies",
        )
    return read_rubin_wire(paths, options.schema_dir)


def _decode_rubin_wire(value: bytes, schemas: Any, source: str) -> LightCurveBatch:
    from astro_classifier.alerts.rubin import decode_rubin_wire, rubin_records_to_batch

    if schemas is None:
        raise ValueError("rubin-wire needs a schema directory or a schema registry")
    return rubin_records_to_batch([decode_rubin_wire(value, schemas, source)], source)


def _read_json(paths: list[Path], _options: ReadOptions) -> LightCurveBatch:
    from astro_classifier.data.jsonalert import decode_json_alert

    batches = []
    for path in paths:
        try:
            lines = path.read_bytes().splitlines()
        except OSError as exc:
            raise InputError(path, f"cannot read file ({exc})") from exc
        batches += [
            decode_json_alert(line, f"{path}:{number}")
            for number, line in enumerate(lines, start=1)
            if line.strip()
        ]
    if not batches:
        raise InputError(paths[0], "no JSON alert in the file")
    return LightCurveBatch.concat(batches)


def _decode_json(value: bytes, _schemas: Any, source: str) -> LightCurveBatch:
    from astro_classifier.data.jsonalert import decode_json_alert

    return decode_json_alert(value, source)


def _is_rubin_parquet(probe: FileProbe) -> bool:
    return probe.is_parquet and set(RUBIN_TABLE_COLUMNS) <= set(probe.columns)


def _catalogue(module: str, name: str) -> tuple[Callable, Callable]:
    """(recognise, read) of a labelled real-sky catalogue reader ``data/<module>.py``, which
    takes a folder (or one of its files) and defines ``looks_like_<name>``/``read_<name>``."""

    def load(prefix: str) -> Callable:
        import importlib

        return getattr(importlib.import_module(f"astro_classifier.data.{module}"), prefix + name)

    def read(paths: list[Path], _options: ReadOptions) -> LightCurveBatch:
        return LightCurveBatch.concat([load("read_")(path) for path in paths])

    return (lambda probe: load("looks_like_")(probe.path)), read


REGISTRY: dict[str, InputFormat] = {
    fmt.name: fmt
    for fmt in (
        InputFormat(
            "plasticc",
            "PLAsTiCC light curves, CSV or Parquet {object_id, mjd, passband, flux, flux_err}",
            lambda probe: is_plasticc_light_curve_table(probe.columns),
            _read_plasticc,
            object_table=True,
            label_column="target",
        ),
        InputFormat(
            "long",
            f"astroclf long format {{{', '.join(POINT_COLUMNS)}}}",
            lambda probe: set(POINT_COLUMNS) <= set(probe.columns),
            _read_long,
            object_table=True,
            label_column="label",
        ),
        InputFormat(
            "eros1",
            "EROS-1 train.csv with its arrays file beside it",
            lambda probe: set(EROS1_TABLE_COLUMNS) <= set(probe.columns),
            _read_each(_read_eros1),
            absolute_time=False,
            label_column="type",
        ),
        InputFormat(
            "ztf-avro",
            "ZTF alert Avro containers (ZTF's or a broker's re-publication)",
            _is_ztf_avro,
            _read_ztf_avro,
            _decode_ztf_avro,
            decode_records=_ztf_avro_records,
            records_to_batch=_ztf_records_to_batch,
            message_per_file=True,
        ),
        InputFormat(
            "ztf-parquet",
            "ZTF alerts as Parquet rows {objectId, candidate, prv_candidates}",
            _is_ztf_parquet,
            _read_ztf_parquet,
            _decode_ztf_parquet,
        ),
        InputFormat(
            "rubin-avro",
            "Rubin alert Avro containers (alert_packet v3-v11, ELAsTiCC)",
            _is_rubin_avro,
            _read_rubin_avro,
            _decode_rubin_avro,
            decode_records=_rubin_avro_records,
            records_to_batch=_rubin_records_to_batch,
            message_per_file=True,
        ),
        InputFormat(
            "rubin-parquet",
            "Rubin alerts as Parquet rows {diaSource, prvDiaSources, ...}",
            _is_rubin_parquet,
            _read_rubin_parquet,
            _decode_rubin_parquet,
        ),
        InputFormat(
            "rubin-wire",
            "Rubin alerts in Confluent wire format (magic byte 0, schema id, Avro body)",
            lambda probe: len(probe.head) >= WIRE_HEADER.size and probe.head[0] == WIRE_MAGIC_BYTE,
            _read_rubin_wire,
            _decode_rubin_wire,
            message_per_file=True,
        ),
        InputFormat(
            "ztf-bts",
            "ZTF Bright Transient Survey light curves: a folder with bts.csv and light-curves/",
            *_catalogue("ztf_bts", "ztf_bts"),
        ),
        InputFormat(
            "manytde",
            "manyTDE source JSONs (a file or a folder of them)",
            *_catalogue("manytde", "manytde"),
        ),
        InputFormat(
            "slsne",
            "SLSN-I catalogue of the slsne package (sne_data.txt with supernovae/)",
            *_catalogue("slsne", "slsne"),
        ),
        InputFormat(
            "osc",
            "Open Supernova Catalog objects.parquet + photometry.parquet (a folder)",
            *_catalogue("osc", "osc"),
        ),
        InputFormat(
            "alerce-examples",
            "ALeRCE example detections, non-detections and labels (a folder)",
            *_catalogue("alerce_examples", "alerce_examples"),
        ),
        InputFormat(
            "ztf-bts-antares",
            "ZTF BTS transients as ANTARES alert light curves: labels.csv + "
            "antares_lightcurves.tar.gz (a folder)",
            *_catalogue("antares_bts", "antares_bts"),
        ),
        InputFormat(
            "tdss-quasars",
            "TDSS/SDSS quasar light curves: gband.tar.gz + rband.tar.gz (a folder)",
            *_catalogue("tdss", "tdss_quasars"),
        ),
        InputFormat(
            "json",
            'astroclf JSON alerts, one per line {"object_id", "points": [...]}',
            lambda probe: set(JSON_ALERT_KEYS) <= probe.json_keys,
            _read_json,
            _decode_json,
        ),
    )
}
FORMATS: tuple[str, ...] = tuple(REGISTRY)
# Formats whose light curves can take an object table (``metadata``).
OBJECT_TABLE_FORMATS = tuple(name for name, fmt in REGISTRY.items() if fmt.object_table)
MESSAGE_FORMATS = tuple(name for name, fmt in REGISTRY.items() if fmt.decode is not None)


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
    with np.errstate(all="ignore"):
        batch = clean_points(fmt.decode(value, schemas, source), fmt.absolute_time)
    if len(batch) == 0:
        raise InputError(source, "the message holds no alert")
    if cutout_size is not None:
        batch.cutouts = message_cutouts(batch, value, input_format, schemas, source, cutout_size)
    return batch


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


def decode_messages(
    items: Sequence[tuple[bytes | None, str]],
    input_format: str,
    schemas: Any,
    cutout_size: int | None = None,
) -> list[Decoded]:
    """:func:`decode_message` of each (value, source), in order: a batch, a
    :class:`PartialDecode`, or the :class:`InputError` that message raised (any other
    exception propagates).

    Formats with a records stage (ZTF and Rubin Avro alerts) decode each message to its
    alert records, then convert the records of all messages to light curves in one pass and
    split them back per message: the conversion's fixed cost (a few dozen array operations,
    ~4x the work of one alert's points) is paid once per call instead of once per message.
    If that pass refuses the input, the messages are converted one by one, so the error
    names its own message. The batches equal decode_message's, except that the dropped-point
    counts of the whole call are carried by the first batch.

    A container of several records that the conversion refuses is converted record by
    record: if some records convert and others do not, the message gives a
    :class:`PartialDecode` (the good records' batch and one :class:`RecordError` per bad
    record) instead of an InputError, so one bad record does not take the others with it.
    If every record is refused, or the container itself cannot be decoded, the message is
    one InputError as before.
    """
    fmt = _message_format(input_format)
    if fmt.records_to_batch is None or fmt.decode_records is None or cutout_size is not None:
        return [
            _decode_one(value, input_format, schemas, source, cutout_size)
            for value, source in items
        ]
    results: list[Decoded | None] = [None] * len(items)
    decoded: list[tuple[int, list[Any]]] = []  # (message index, its records)
    for i, (value, source) in enumerate(items):
        try:
            if not value:
                raise InputError(source, f"empty message; expected {fmt.description}")
            records = fmt.decode_records(value, schemas, source)
            if not records:
                raise InputError(source, "the message holds no alert")
        except InputError as exc:
            results[i] = exc
            continue
        decoded.append((i, records))
    if not decoded:
        return results  # type: ignore[return-value]

    first, last = items[decoded[0][0]][1], items[decoded[-1][0]][1]
    try:
        combined = _records_to_light_curves(
            fmt, [r for _, records in decoded for r in records], f"{first} .. {last}"
        )
    except InputError:  # convert message by message: the error names its message
        for i, records in decoded:
            value, source = items[i]
            try:
                results[i] = _records_to_light_curves(fmt, records, source)
            except InputError as exc:  # record by record, where the container has several
                results[i] = _split_container(fmt, value, records, source, exc)  # type: ignore[arg-type]
        return results  # type: ignore[return-value]
    start = 0
    for i, records in decoded:
        batch = combined.select(np.arange(start, start + len(records)))
        batch.dropped = combined.dropped if start == 0 else {}
        results[i] = batch
        start += len(records)
    return results  # type: ignore[return-value]


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
):
    """The stamps of a message's alerts, one row per object of ``batch``."""
    from astro_classifier.data.cutouts import (
        CUTOUT_FORMATS,
        CutoutBatch,
        align_cutouts,
        decode_cutouts,
    )

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


def _eros1_arrays(table_path: Path) -> Path:
    """``train.csv`` -> ``train_varlength_features.csv.gz`` beside it (must exist)."""
    stem = table_path.name
    for suffix in CSV_SUFFIXES:
        stem = stem.removesuffix(suffix)
    arrays = table_path.with_name(stem + EROS1_ARRAYS_SUFFIX)
    if not arrays.is_file():
        raise InputError(table_path, f"EROS-1 arrays file {arrays} not found beside it")
    return arrays
