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
- **records are read by code compiled once per header** (:func:`compile_record_reader`):
  fastavro resolves the reader schema against the writer schema again for every record and
  every history entry; the compiled reader does it once, steps over runs of unused numeric
  fields with one regular-expression match, and reads the records in place (no copy of the
  block). It returns exactly what fastavro returns; schemas with logical types among the
  fields read go through fastavro.

Container blocks of the codecs ``null``, ``deflate``, ``snappy``, ``bzip2`` and ``xz`` are
decompressed here; other codecs (``zstandard``, ``lz4``) go through ``fastavro.reader``
with the same (cached, projected) reader schema.
"""

from __future__ import annotations

import bz2
import io
import json
import lzma
import re
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import fastavro

from astro_classifier.core.errors import InputError

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


def merge_projections(*projections: Projection) -> Projection:
    """One projection reading every field of ``projections``: names in order of first
    appearance; a field read whole in one is read whole, nested ones are merged."""
    order: list[str] = []
    nested: dict[str, list[Projection] | None] = {}  # None: the whole field
    for projection in projections:
        for item in projection:
            name, inner = (item, None) if isinstance(item, str) else item
            if name not in nested:
                order.append(name)
                nested[name] = None if inner is None else [inner]
            elif inner is None:
                nested[name] = None
            elif nested[name] is not None:
                nested[name].append(inner)  # type: ignore[union-attr]
    merged: list[str | tuple[str, Projection]] = []
    for name in order:
        inner_list = nested[name]
        merged.append(name if inner_list is None else (name, merge_projections(*inner_list)))
    return tuple(merged)


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
    # (data, pos) -> (record, pos): the compiled reader of the same records; None: fastavro
    record_reader: Callable[[bytes, int], tuple[Any, int]] | None = None


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
    compiled = compile_record_reader(writer, None if reader is None else projection)
    entry = ContainerSchema(writer, reader, meta.get("avro.codec", b"null").decode(), compiled)
    with _CACHE_LOCK:
        _CACHE_STATS["misses"] += 1
        _CACHE[key] = entry
        while len(_CACHE) > SCHEMA_CACHE_SIZE:
            _CACHE.popitem(last=False)
    return entry


# -- compiled record readers ----------------------------------------------------------------
class _Unsupported(Exception):
    """A schema the compiled readers do not handle (logical types read): use fastavro."""


_FLOAT = struct.Struct("<f").unpack_from
_DOUBLE = struct.Struct("<d").unpack_from
_MAX_READER_SOURCE = 2_000_000  # characters of generated code (a huge schema: use fastavro)


def _varint_tail(data: bytes, pos: int, first: int) -> tuple[int, int]:
    """The raw (zig-zag encoded) varint whose first byte ``first`` (>= 0x80) was just read."""
    n, shift = first & 0x7F, 7
    while True:
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return n, pos
        shift += 7
        if shift > 70:
            raise _Corrupt("varint too long")


class _ReaderCompiler:
    """Python source of a function ``(data, pos) -> (record, pos)`` that decodes one record of
    a parsed writer schema, keeping only a projection's fields (the others are stepped over
    without building Python values), exactly as ``fastavro.schemaless_reader`` with the
    projected reader schema would return them (same dict key order, same value types).

    fastavro resolves the reader schema against the writer schema again for every record
    (and every history entry): for ZTF alerts, ~1500 fields a message, most of them skipped.
    The compiled reader does that resolution once, when the container header is first seen.
    """

    def __init__(self, named: Mapping[str, Any]) -> None:
        self.named = named  # full name -> definition (fastavro's __named_schemas)
        self.functions: dict[tuple[str, str, Projection | None], str] = {}  # -> name
        self.sources: list[str] = []
        self.constants: dict[str, Any] = {}
        self.counter = 0

    def var(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}{self.counter}"

    # A varint into ``target`` (zig-zag decoded), or its raw unsigned form.
    def _varint(self, out: list[str], ind: str, target: str, raw: bool = False) -> None:
        out.append(f"{ind}{target} = d[p]")
        out.append(f"{ind}p += 1")
        out.append(f"{ind}if {target} & 128:")
        out.append(f"{ind}    {target}, p = _tail(d, p, {target})")
        if not raw:
            out.append(f"{ind}{target} = ({target} >> 1) ^ -({target} & 1)")

    def _length(self, out: list[str], ind: str, target: str) -> None:
        self._varint(out, ind, target)
        out.append(f"{ind}if {target} < 0:")
        out.append(f'{ind}    raise _Corrupt("negative length")')

    def read(self, t: Any, proj: Projection | None, out: list[str], ind: str, target: str) -> None:
        """Lines reading a value of type ``t`` into ``target``."""
        if isinstance(t, list):
            return self._union(t, proj, out, ind, target, read=True)
        if isinstance(t, Mapping):
            kind = t.get("type")
            if "logicalType" in t:
                raise _Unsupported("logical type")
            if kind == "record" or kind == "error":
                return self._call_record(t["name"], proj, out, ind, target)
            if kind == "array" or kind == "map":
                return self._repeated(t, proj, out, ind, target, read=True)
            if kind == "enum":
                symbols = self.var("_symbols")
                self.constants[symbols] = tuple(t["symbols"])
                self._varint(out, ind, target)
                out.append(f"{ind}if not 0 <= {target} < {len(t['symbols'])}:")
                out.append(f'{ind}    raise _Corrupt("enum index out of range")')
                out.append(f"{ind}{target} = {symbols}[{target}]")
                return None
            if kind == "fixed":
                size = int(t["size"])
                out.append(f"{ind}{target} = d[p : p + {size}]")
                out.append(f"{ind}p += {size}")
                return None
            if kind in _PRIMITIVES or isinstance(kind, (list, Mapping)):
                return self.read(kind, proj, out, ind, target)
            if isinstance(kind, str) and kind in self.named:
                return self.read(kind, proj, out, ind, target)
            raise _Unsupported(f"type {kind!r}")
        if t == "null":
            out.append(f"{ind}{target} = None")
        elif t == "boolean":
            out.append(f"{ind}{target} = d[p] != 0")
            out.append(f"{ind}p += 1")
        elif t in ("int", "long"):
            self._varint(out, ind, target)
        elif t == "float":
            out.append(f"{ind}{target} = _float(d, p)[0]")
            out.append(f"{ind}p += 4")
        elif t == "double":
            out.append(f"{ind}{target} = _double(d, p)[0]")
            out.append(f"{ind}p += 8")
        elif t in ("string", "bytes"):
            n = self.var("n")
            self._length(out, ind, n)
            decode = ".decode()" if t == "string" else ""
            out.append(f"{ind}{target} = d[p : p + {n}]{decode}")
            out.append(f"{ind}p += {n}")
        elif isinstance(t, str) and t in self.named:
            definition = self.named[t]
            if isinstance(definition, Mapping) and definition.get("type") in ("record", "error"):
                return self._call_record(t, proj, out, ind, target)
            return self.read(definition, proj, out, ind, target)
        else:
            raise _Unsupported(f"type {t!r}")
        return None

    def skip(self, t: Any, out: list[str], ind: str) -> None:
        """Lines stepping over a value of type ``t``."""
        if isinstance(t, list):
            return self._union(t, None, out, ind, "", read=False)
        if isinstance(t, Mapping):
            kind = t.get("type")
            if kind == "record" or kind == "error":
                return self._call_record(t["name"], None, out, ind, "", read=False)
            if kind == "array" or kind == "map":
                return self._repeated(t, None, out, ind, "", read=False)
            if kind == "enum":
                return self.skip("long", out, ind)
            if kind == "fixed":
                out.append(f"{ind}p += {int(t['size'])}")
                return None
            if kind in _PRIMITIVES or isinstance(kind, (list, Mapping)):
                return self.skip(kind, out, ind)
            if isinstance(kind, str) and kind in self.named:
                return self.skip(kind, out, ind)
            raise _Unsupported(f"type {kind!r}")
        if t == "null":
            return None
        if t == "boolean":
            out.append(f"{ind}p += 1")
        elif t in ("int", "long"):
            out.append(f"{ind}while d[p] & 128:")
            out.append(f"{ind}    p += 1")
            out.append(f"{ind}p += 1")
        elif t == "float":
            out.append(f"{ind}p += 4")
        elif t == "double":
            out.append(f"{ind}p += 8")
        elif t in ("string", "bytes"):
            n = self.var("n")
            self._length(out, ind, n)
            out.append(f"{ind}p += {n}")
        elif isinstance(t, str) and t in self.named:
            definition = self.named[t]
            if isinstance(definition, Mapping) and definition.get("type") in ("record", "error"):
                return self._call_record(t, None, out, ind, "", read=False)
            return self.skip(definition, out, ind)
        else:
            raise _Unsupported(f"type {t!r}")
        return None

    def _union(
        self,
        members: list,
        proj: Projection | None,
        out: list[str],
        ind: str,
        target: str,
        read: bool,
    ) -> None:
        index = self.var("u")
        self._varint(out, ind, index, raw=True)  # branch i is encoded 2 * i
        for i, member in enumerate(members):
            out.append(f"{ind}{'if' if i == 0 else 'elif'} {index} == {2 * i}:")
            body: list[str] = []
            if read:
                self.read(member, proj, body, ind + "    ", target)
            else:
                self.skip(member, body, ind + "    ")
            out.extend(body or [f"{ind}    pass"])
        out.append(f"{ind}else:")
        out.append(f'{ind}    raise _Corrupt("union index out of range")')

    def _repeated(
        self,
        t: Mapping,
        proj: Projection | None,
        out: list[str],
        ind: str,
        target: str,
        read: bool,
    ) -> None:
        is_map = t["type"] == "map"
        item_type = t["values"] if is_map else t["items"]
        count, size, items, item, key = (self.var(s) for s in ("c", "s", "a", "x", "k"))
        if read:
            out.append(f"{ind}{items} = {{}}" if is_map else f"{ind}{items} = []")
        out.append(f"{ind}while True:")
        inner = ind + "    "
        self._varint(out, inner, count)
        out.append(f"{inner}if {count} == 0:")
        out.append(f"{inner}    break")
        out.append(f"{inner}if {count} < 0:")
        out.append(f"{inner}    {count} = -{count}")
        self._varint(out, inner + "    ", size)
        if not read:  # a block with its byte size: jump over it
            out.append(f"{inner}    if {size} < 0:")
            out.append(f'{inner}        raise _Corrupt("negative block size")')
            out.append(f"{inner}    p += {size}")
            out.append(f"{inner}    continue")
        out.append(f"{inner}if {count} > len(d):")
        out.append(f'{inner}    raise _Corrupt("block count beyond the data")')
        out.append(f"{inner}for _ in range({count}):")
        body = inner + "    "
        if is_map:
            if read:
                self.read("string", None, out, body, key)
            else:
                self.skip("string", out, body)
        if read:
            self.read(item_type, proj, out, body, item)
            out.append(
                f"{body}{items}[{key}] = {item}" if is_map else f"{body}{items}.append({item})"
            )
        else:
            lines: list[str] = []
            self.skip(item_type, lines, body)
            out.extend(lines or [f"{body}pass"])
        if read:
            out.append(f"{ind}{target} = {items}")

    def _call_record(
        self,
        name: str,
        proj: Projection | None,
        out: list[str],
        ind: str,
        target: str,
        read: bool = True,
    ) -> None:
        function = self.record(name, proj if read else None, read)
        if read:
            out.append(f"{ind}{target}, p = {function}(d, p)")
        else:
            out.append(f"{ind}p = {function}(d, p)")

    def record(self, name: str, proj: Projection | None, read: bool = True) -> str:
        """The name of the generated function reading (or stepping over) record ``name``."""
        key = ("read" if read else "skip", name, proj)
        if key in self.functions:
            return self.functions[key]
        function = self.var("_read_" if read else "_skip_")
        self.functions[key] = function  # before the body: recursive types call it
        definition = self.named[name]
        spec = None if proj is None else _as_dict(proj)
        out = [f"def {function}(d, p):"]
        values = []
        run: list[Any] = []  # consecutive fields to step over
        for field in definition.get("fields", []):
            if read and (spec is None or field["name"] in spec):
                self._skip_run(run, out)
                value = self.var("v")
                self.read(
                    field["type"], None if spec is None else spec[field["name"]], out, "    ", value
                )
                values.append(f"{field['name']!r}: {value}")
            elif self._pattern(field["type"]) is not None:
                run.append(field["type"])
            else:
                self._skip_run(run, out)
                self.skip(field["type"], out, "    ")
        self._skip_run(run, out)
        if read:
            out.append(f"    return {{{', '.join(values)}}}, p")
        else:
            out.append("    return p")
        self.sources.append("\n".join(out))
        return function

    def _skip_run(self, run: list[Any], out: list[str]) -> None:
        """Lines stepping over the fields of ``run`` (types with a :meth:`_pattern`) with one
        regular expression match; where it does not match (a varint written with more bytes
        than needed, a corrupt record), field by field as :meth:`skip` does."""
        if len(run) >= _MIN_SKIP_RUN:
            match = self.var("_match")
            self.constants[match] = re.compile(
                b"".join(self._pattern(t) for t in run), re.DOTALL
            ).match
            m = self.var("m")
            out.append(f"    {m} = {match}(d, p)")
            out.append(f"    if {m} is not None:")
            out.append(f"        p = {m}.end()")
            out.append("    else:")
            out.append("        pass")
            for t in run:
                self.skip(t, out, "        ")
        else:
            for t in run:
                self.skip(t, out, "    ")
        run.clear()

    def _pattern(self, t: Any, depth: int = 0) -> bytes | None:
        """A regular expression matching exactly the encoding of a value of type ``t`` (bytes
        with no length prefix: numbers, booleans, enums, fixed, unions of those), else None."""
        if depth > 8:
            return None
        if isinstance(t, list):
            if len(t) > 63:  # branch indexes of one byte only
                return None
            members = [self._pattern(m, depth + 1) for m in t]
            if any(m is None for m in members):
                return None
            return (
                b"(?:"
                + b"|".join(re.escape(bytes([2 * i])) + m for i, m in enumerate(members))
                + b")"
            )
        if isinstance(t, Mapping):
            kind = t.get("type")
            if kind == "enum":
                return _VARINT_PATTERN
            if kind == "fixed":
                return b".{%d}" % int(t["size"]) if int(t["size"]) > 0 else b""
            if kind in _PRIMITIVES or isinstance(kind, (list, Mapping)):
                return self._pattern(kind, depth + 1)
            return None
        if isinstance(t, str) and t not in _PRIMITIVES:
            definition = self.named.get(t)
            if isinstance(definition, Mapping) and definition.get("type") in ("enum", "fixed"):
                return self._pattern(definition, depth + 1)
            return None
        return _FIXED_PATTERNS.get(t)


_VARINT_PATTERN = rb"[\x80-\xff]{0,9}[\x00-\x7f]"
_FIXED_PATTERNS = {
    "null": b"",
    "boolean": b".",
    "int": _VARINT_PATTERN,
    "long": _VARINT_PATTERN,
    "float": b".{4}",
    "double": b".{8}",
}
_MIN_SKIP_RUN = 2  # fields: one is stepped over faster without a match


def compile_record_reader(writer: Mapping[str, Any], projection: Projection | None) -> Any | None:
    """A function ``(data, pos) -> (record, pos)`` decoding one record of the parsed (fastavro)
    ``writer`` schema, cut down to ``projection`` (None: whole records), giving the values
    ``fastavro.schemaless_reader`` gives; None where the schema uses what it does not handle
    (logical types among the fields read), for fastavro to decode instead.

    ``projection`` must be one :func:`project_schema` accepted for ``writer``. Bytes past the
    end of the data raise IndexError or struct.error; a caller checks that ``pos`` did not
    run past the data it meant (string and bytes lengths move it without reading).
    """
    try:
        if not isinstance(writer, Mapping) or writer.get("type") != "record":
            return None
        named = dict(writer.get("__named_schemas") or {})
        named.setdefault(writer["name"], writer)
        compiler = _ReaderCompiler(named)
        entry = compiler.record(writer["name"], projection)
        source = "\n\n".join(compiler.sources)
        if len(source) > _MAX_READER_SOURCE:
            return None
        namespace: dict[str, Any] = {
            "_tail": _varint_tail,
            "_float": _FLOAT,
            "_double": _DOUBLE,
            "_Corrupt": _Corrupt,
            **compiler.constants,
        }
        exec(compile(source, f"<avro reader {writer['name']}>", "exec"), namespace)
        return namespace[entry]
    except (_Unsupported, KeyError, TypeError, ValueError, SyntaxError, RecursionError):
        return None


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
    reader, writer, compiled = entry.reader_schema, entry.writer_schema, entry.record_reader
    records: list[Any] = []
    while pos < len(data):
        count, pos = _read_long(data, pos)
        size, pos = _read_long(data, pos)
        if count < 0 or size < 0 or pos + size > len(data):
            raise _Corrupt("truncated block")
        end = pos + size
        if compiled is not None and entry.codec == "null":  # read in place: no copy
            block, at, stop = data, pos, end
        else:
            block = _decompress(entry.codec, data[pos:end])
            if block is None:
                return None
            at, stop = 0, len(block)
        pos = end
        if data[pos : pos + SYNC_SIZE] != sync:
            raise _Corrupt("the block's sync marker is missing or does not match the header's")
        pos += SYNC_SIZE
        if compiled is None:
            stream = io.BytesIO(block)
            for _ in range(count):
                records.append(fastavro.schemaless_reader(stream, writer, reader))
            continue
        for _ in range(count):
            record, at = compiled(block, at)
            if at > stop:  # a length ran past the block: fastavro would hit its end
                raise EOFError("a record runs past the end of its block")
            records.append(record)
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
    if not isinstance(data, bytes):  # bytearray, memoryview: the compiled readers slice bytes
        data = bytes(data)
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
