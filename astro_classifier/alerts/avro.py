"""Avro framing shared by every alert format: object container files (ZTF and Rubin alerts
alike, from a file's or a message's bytes) and the Confluent wire-format header.

Decoding is built for streams of small containers that share a few writer schemas (every
ZTF alert message is a whole container carrying its own ~10 kB schema):

- **each distinct writer schema is parsed once**: a container's header (its metadata map:
  schema and codec) is the cache key, so a message whose header was seen before costs no
  JSON or schema parsing (:data:`SCHEMA_CACHE_SIZE` headers are kept, least recently used
  dropped);
- **only the fields a reader uses are decoded**: a caller passes a :data:`Projection` (the
  field names it reads, nested for records), and the records are decoded with a *reader
  schema* that is the writer schema cut down to those fields. Avro schema resolution then
  skips everything else in the bytes (the image cutouts, tens of kB each, are never copied
  into Python objects; unused history fields are never turned into Python values). Fields
  the writer schema lacks are simply absent from the records, as before; values are the
  same as a full decode would give. Where a projection cannot be built safely (a named type
  needed with two different projections, or a schema fastavro would not parse after
  cutting), the whole record is decoded.

Container blocks of the codecs ``null``, ``deflate``, ``snappy``, ``bzip2`` and ``xz`` are
decompressed here; other codecs (``zstandard``, ``lz4``) go through ``fastavro.reader``
with the same (cached, projected) reader schema.
"""

from __future__ import annotations

import bz2
import io
import json
import lzma
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fastavro

from astro_classifier.errors import InputError

AVRO_CONTAINER_MAGIC = b"Obj\x01"  # first bytes of an Avro object container file
SYNC_SIZE = 16  # bytes of a container's sync marker
# Confluent wire format: magic byte 0, then the schema id as a 4-byte big-endian integer.
WIRE_MAGIC_BYTE = 0
WIRE_HEADER = struct.Struct(">bI")
SCHEMA_CACHE_SIZE = 256  # distinct (container header, projection) pairs kept parsed

# The fields a reader uses: names, and (name, Projection) pairs for a field whose records
# (through unions, arrays and maps) are themselves cut down to the nested names.
Projection = tuple[str | tuple[str, "Projection"], ...]

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


# -- projection -------------------------------------------------------------------------
class _CannotProject(Exception):
    """The writer schema cannot be cut down safely: decode whole records instead."""


def _full_name(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _as_dict(projection: Projection) -> dict[str, Projection | None]:
    spec: dict[str, Projection | None] = {}
    for item in projection:
        if isinstance(item, str):
            spec[item] = None
        else:
            spec[item[0]] = item[1]
    return spec


class _Projector:
    """Cut an Avro schema (JSON form, parsed or not) down to a projection."""

    def __init__(self) -> None:
        self.named: dict[str, Projection | None] = {}  # full name -> projection it got

    def type(self, avro_type: Any, projection: Projection | None, namespace: str | None) -> Any:
        if projection is None:
            self._note_names(avro_type, namespace)
            return avro_type
        if isinstance(avro_type, list):
            return [self.type(member, projection, namespace) for member in avro_type]
        if isinstance(avro_type, str):
            if avro_type in _PRIMITIVES:
                return avro_type
            full = _full_name(avro_type, namespace)
            if self.named.get(full, ()) != projection:  # unknown, or cut differently
                raise _CannotProject(full)
            return avro_type
        if not isinstance(avro_type, Mapping):
            return avro_type
        kind = avro_type.get("type")
        if kind == "array":
            return {**avro_type, "items": self.type(avro_type["items"], projection, namespace)}
        if kind == "map":
            return {**avro_type, "values": self.type(avro_type["values"], projection, namespace)}
        if kind == "record":
            return self.record(avro_type, projection, namespace)
        if kind in ("enum", "fixed") or kind in _PRIMITIVES:
            self._note_names(avro_type, namespace)
            return avro_type
        # {"type": <a union, a type, or a named type's name>}
        return {**avro_type, "type": self.type(kind, projection, namespace)}

    def record(
        self, record: Mapping[str, Any], projection: Projection, namespace: str | None
    ) -> dict:
        full = _full_name(record["name"], record.get("namespace", namespace))
        if full in self.named:
            raise _CannotProject(f"{full} defined twice")
        self.named[full] = projection
        inner = full.rpartition(".")[0] or None
        spec = _as_dict(projection)
        fields = [
            {**f, "type": self.type(f["type"], spec[f["name"]], inner)}
            for f in record.get("fields", [])
            if isinstance(f, Mapping) and f.get("name") in spec
        ]
        if not fields:
            raise _CannotProject(f"{full}: none of the fields {sorted(spec)}")
        return {**record, "fields": fields}

    def _note_names(self, avro_type: Any, namespace: str | None) -> None:
        """Record the named types defined inside a type kept whole (no projection)."""
        if isinstance(avro_type, list):
            for member in avro_type:
                self._note_names(member, namespace)
        elif isinstance(avro_type, Mapping):
            kind = avro_type.get("type")
            if kind in ("record", "enum", "fixed", "error") and "name" in avro_type:
                full = _full_name(avro_type["name"], avro_type.get("namespace", namespace))
                if full in self.named and self.named[full] is not None:
                    raise _CannotProject(f"{full} needed whole and cut")
                self.named[full] = None
                namespace = full.rpartition(".")[0] or None
                for f in avro_type.get("fields", []) if kind != "enum" else []:
                    if isinstance(f, Mapping):
                        self._note_names(f.get("type"), namespace)
            elif kind == "array":
                self._note_names(avro_type.get("items"), namespace)
            elif kind == "map":
                self._note_names(avro_type.get("values"), namespace)
            elif isinstance(kind, (list, Mapping)):
                self._note_names(kind, namespace)


def project_schema(schema: Any, projection: Projection) -> Any | None:
    """The reader schema that decodes only ``projection``'s fields of ``schema`` records
    (parsed with fastavro), or None when no safe projection exists (decode everything)."""
    try:
        if not isinstance(schema, Mapping) or schema.get("type") != "record":
            return None
        clean = {k: v for k, v in schema.items() if not str(k).startswith("__")}
        reader = _Projector().record(clean, projection, None)
        return fastavro.parse_schema(reader)
    except Exception:  # _CannotProject, or a schema fastavro refuses once cut
        return None


# -- container files --------------------------------------------------------------------
@dataclass(frozen=True)
class ContainerSchema:
    """What a container header says, parsed once."""

    writer_schema: dict  # parsed (fastavro)
    reader_schema: dict | None  # the projection of writer_schema; None: whole records
    codec: str


_CACHE: OrderedDict[tuple[bytes, Projection | None], ContainerSchema] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_STATS = {"hits": 0, "misses": 0}


def schema_cache_info() -> dict[str, int]:
    """Hits, misses and size of the writer-schema cache (for benchmarks and tests)."""
    with _CACHE_LOCK:
        return {**_CACHE_STATS, "size": len(_CACHE)}


def clear_schema_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()
        _CACHE_STATS.update(hits=0, misses=0)


class _Corrupt(Exception):
    pass


def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint at ``pos``: (value, position after it)."""
    try:
        byte = data[pos]
        n, shift, pos = byte & 0x7F, 7, pos + 1
        while byte & 0x80:
            byte = data[pos]
            n |= (byte & 0x7F) << shift
            shift += 7
            pos += 1
            if shift > 70:
                raise _Corrupt("varint too long")
    except IndexError:
        raise _Corrupt("truncated") from None
    return (n >> 1) ^ -(n & 1), pos


def _read_header(data: bytes) -> tuple[dict[str, bytes], int]:
    """The metadata map of a container (after the magic): (map, position after it)."""
    meta: dict[str, bytes] = {}
    pos = len(AVRO_CONTAINER_MAGIC)
    while True:
        count, pos = _read_long(data, pos)
        if count == 0:
            return meta, pos
        if count < 0:  # a block with its byte size
            count = -count
            _, pos = _read_long(data, pos)
        for _ in range(count):
            size, pos = _read_long(data, pos)
            if size < 0 or pos + size > len(data):
                raise _Corrupt("truncated header")
            key = data[pos : pos + size].decode()
            pos += size
            size, pos = _read_long(data, pos)
            if size < 0 or pos + size > len(data):
                raise _Corrupt("truncated header")
            meta[key] = data[pos : pos + size]
            pos += size


def _container_schema(
    meta: dict[str, bytes], key: tuple[bytes, Projection | None], projection: Projection | None
) -> ContainerSchema:
    with _CACHE_LOCK:
        entry = _CACHE.get(key)
        if entry is not None:
            _CACHE.move_to_end(key)
            _CACHE_STATS["hits"] += 1
            return entry
    if "avro.schema" not in meta:
        raise _Corrupt("no avro.schema in the header")
    writer = fastavro.parse_schema(json.loads(meta["avro.schema"]))
    reader = None if projection is None else project_schema(writer, projection)
    entry = ContainerSchema(writer, reader, meta.get("avro.codec", b"null").decode())
    with _CACHE_LOCK:
        _CACHE_STATS["misses"] += 1
        _CACHE[key] = entry
        while len(_CACHE) > SCHEMA_CACHE_SIZE:
            _CACHE.popitem(last=False)
    return entry


def _decompress(codec: str, block: bytes) -> bytes | None:
    """A block's bytes, decompressed; None for a codec left to fastavro."""
    if codec == "null":
        return block
    if codec == "deflate":
        return zlib.decompress(block, -15)
    if codec == "snappy":
        from cramjam import snappy

        return bytes(snappy.decompress_raw(block[:-4]))  # 4-byte CRC32 after the data
    if codec == "bzip2":
        return bz2.decompress(block)
    if codec == "xz":
        return lzma.decompress(block)
    return None


def _read_blocks(data: bytes, pos: int, entry: ContainerSchema) -> list[Any] | None:
    """The records of the blocks from ``pos``; None when the codec is left to fastavro."""
    sync = data[pos : pos + SYNC_SIZE]
    if len(sync) != SYNC_SIZE:
        raise _Corrupt("truncated header (no sync marker)")
    pos += SYNC_SIZE
    reader, writer = entry.reader_schema, entry.writer_schema
    records: list[Any] = []
    while pos < len(data):
        count, pos = _read_long(data, pos)
        size, pos = _read_long(data, pos)
        if count < 0 or size < 0 or pos + size > len(data):
            raise _Corrupt("truncated block")
        block = _decompress(entry.codec, data[pos : pos + size])
        if block is None:
            return None
        pos += size
        if data[pos : pos + SYNC_SIZE] != sync:
            raise _Corrupt("the block's sync marker is missing or does not match the header's")
        pos += SYNC_SIZE
        stream = io.BytesIO(block)
        for _ in range(count):
            records.append(fastavro.schemaless_reader(stream, writer, reader))
    return records


def decode_avro_container(
    data: bytes, source: str, expected: str, fields: Projection | None = None
) -> tuple[dict, list[Any]]:
    """(writer schema, records) of an Avro container; InputError naming ``source`` otherwise.

    ``fields`` (a :data:`Projection`) limits the records to the fields a reader uses; None
    decodes whole records. ``expected`` ends every error message ("expected a ZTF alert Avro
    container ..."). The magic is checked here because fastavro does not; a container with
    no record is an error.
    """
    head = data[: len(AVRO_CONTAINER_MAGIC)]
    if head != AVRO_CONTAINER_MAGIC:
        hint = " (a Confluent wire-format message?)" if head[:1] == bytes([WIRE_MAGIC_BYTE]) else ""
        raise InputError(
            source,
            f"starts with {head!r}{hint}, not {AVRO_CONTAINER_MAGIC!r} (the Avro magic); {expected}",
        )
    try:
        meta, end = _read_header(data)
        entry = _container_schema(meta, (data[4:end], fields), fields)
        records = _read_blocks(data, end, entry)
        if records is None:  # zstandard, lz4, ...: fastavro's own block readers
            records = list(fastavro.reader(io.BytesIO(data), reader_schema=entry.reader_schema))
    except Exception as exc:  # fastavro and the codecs raise many kinds on corrupt input
        raise InputError(
            source, f"cannot decode ({type(exc).__name__}: {exc}); {expected}"
        ) from exc
    if not records:
        raise InputError(source, f"the Avro container holds no record; {expected}")
    return entry.writer_schema, records


# -- schemaless bodies (Confluent wire format) -------------------------------------------
_PROJECTED: dict[
    tuple[int, Projection], tuple[Any, Any]
] = {}  # (id(schema), p) -> (schema, reader)


def projected_reader_schema(schema: Any, fields: Projection) -> Any | None:
    """The projected reader schema of a parsed writer schema that lives on (a schema
    directory's or registry's), computed once per schema object."""
    key = (id(schema), fields)
    with _CACHE_LOCK:
        known = _PROJECTED.get(key)
        if known is not None and known[0] is schema:
            return known[1]
    reader = project_schema(schema, fields)
    with _CACHE_LOCK:
        if len(_PROJECTED) >= SCHEMA_CACHE_SIZE:
            _PROJECTED.clear()
        _PROJECTED[key] = (schema, reader)
    return reader
