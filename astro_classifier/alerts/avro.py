"""Avro framing shared by every alert format: object container files (ZTF and Rubin alerts
alike, from a file's or a message's bytes) and the Confluent wire-format header."""

from __future__ import annotations

import io
import struct
from typing import Any

import fastavro

from astro_classifier.errors import InputError

AVRO_CONTAINER_MAGIC = b"Obj\x01"  # first bytes of an Avro object container file
# Confluent wire format: magic byte 0, then the schema id as a 4-byte big-endian integer.
WIRE_MAGIC_BYTE = 0
WIRE_HEADER = struct.Struct(">bI")


def decode_avro_container(data: bytes, source: str, expected: str) -> tuple[dict, list[Any]]:
    """(writer schema, records) of an Avro container; InputError naming ``source`` otherwise.

    ``expected`` ends every error message ("expected a ZTF alert Avro container ..."). The
    magic is checked here because fastavro does not; a container with no record is an error.
    """
    head = data[: len(AVRO_CONTAINER_MAGIC)]
    if head != AVRO_CONTAINER_MAGIC:
        hint = " (a Confluent wire-format message?)" if head[:1] == bytes([WIRE_MAGIC_BYTE]) else ""
        raise InputError(
            source,
            f"starts with {head!r}{hint}, not {AVRO_CONTAINER_MAGIC!r} (the Avro magic); {expected}",
        )
    try:
        reader = fastavro.reader(io.BytesIO(data))
        records = list(reader)
    except Exception as exc:  # fastavro raises many kinds on corrupt input
        raise InputError(
            source, f"cannot decode ({type(exc).__name__}: {exc}); {expected}"
        ) from exc
    if not records:
        raise InputError(source, f"the Avro container holds no record; {expected}")
    return reader.writer_schema, records
