"""What every input format declares about itself: :class:`InputFormat`.

A format module of this package (``ztf``, ``rubin``, ``plasticc``, ...) declares each of its
formats once, as an :class:`InputFormat`: how a file is recognised (from a
:class:`FileProbe`, content only, never names), how files are read into a
:class:`LightCurveBatch`, how one Kafka message value is decoded, and where the format has
them, how its alerts' image stamps and the spectra beside its light curves are read.
:mod:`astro_classifier.formats.registry` lists the declarations in detection order and is the
one dispatcher.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import fastavro
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from astro_classifier.core.cutouts import CutoutBatch
from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import LightCurveBatch
from astro_classifier.core.spectra import Spectra
from astro_classifier.core.tables import CSV_SUFFIXES
from astro_classifier.formats.avro import AVRO_CONTAINER_MAGIC, Projection

PARQUET_MAGIC = b"PAR1"


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
    # the alerts' image stamps of a file's or message's bytes: (value, schemas, source, size)
    stamps: Callable[[bytes, Any, str, int], CutoutBatch] | None = None
    # One decode for light curves and stamps (formats with a records stage and stamps): the
    # records decoded with their stamps too, which ``records_to_batch`` reads like the others,
    # and the stamps of such records, one row per record in order: (records, source, size)
    decode_records_with_stamps: Callable[[bytes, Any, str], list[Any]] | None = None
    records_stamps: Callable[[list[Any], str, int], CutoutBatch] | None = None
    spectra: Callable[[Path], Spectra] | None = None  # the spectra beside the light curves


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

    @classmethod
    def of_parquet_schema(cls, schema: pa.Schema, name: str = "<arrow batches>") -> FileProbe:
        """The probe a Parquet file with this schema would give, without a file: rows that
        arrive as Arrow batches (Spark, a dataset scan) are recognised like files, and a
        Parquet file's schema is all detection reads of it."""
        probe = cls.__new__(cls)
        probe.path = Path(name)
        probe.is_dir = False
        probe.head = PARQUET_MAGIC
        probe.__dict__["parquet_schema"] = schema  # fills the cached property
        return probe

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


# -- the fields a reader uses, for rows that arrive as Arrow data ------------------------------
def project_arrow_schema(schema: pa.Schema, projection: Projection) -> pa.Schema:
    """``schema`` cut to the columns and nested fields in ``projection`` (those present; types
    unchanged). Casting a table or batch to it drops the rest before any conversion to Python,
    the Arrow counterpart of decoding Avro with a projection (formats/avro.py)."""
    return pa.schema(_project_fields(list(schema), projection))


def _project_fields(present: list[pa.Field], projection: Projection) -> list[pa.Field]:
    """The fields of ``present`` that ``projection`` names, each cut to its own sub-fields."""
    wanted = {item if isinstance(item, str) else item[0]: item for item in projection}
    out = []
    for field_ in present:
        item = wanted.get(field_.name)
        if item is None:
            continue
        kind = field_.type if isinstance(item, str) else _project_type(field_.type, item[1])
        out.append(pa.field(field_.name, kind, field_.nullable))
    return out


def _project_type(kind: pa.DataType, projection: Projection) -> pa.DataType:
    """``kind`` (a struct, or a list of structs) cut to ``projection``, in the schema's order."""
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return pa.list_(_project_type(kind.value_type, projection))
    if not pa.types.is_struct(kind):
        return kind  # the reader refuses it with a clear error; nothing to cut
    return pa.struct(_project_fields(list(kind), projection))
