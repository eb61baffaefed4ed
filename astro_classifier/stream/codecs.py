"""Kafka message bytes <-> light curves and classifications.

Input formats (one message value each):

- ``ztf-avro``: an Avro container file holding ZTF alert records (as ZTF publishes them);
- ``rubin-avro``: an Avro container file holding Rubin alert records (as Fink re-publishes them);
- ``rubin-wire``: Confluent wire format (magic byte 0, 4-byte schema id, schemaless Avro),
  schemas from a local schema folder or a Confluent Schema Registry;
- ``json``: one object as UTF-8 JSON, astroclf's own format::

      {"object_id": "ZTF21abc", "alert_id": "123",
       "points": [{"mjd": 60000.1, "band": "g", "flux": 1234.5, "flux_err": 12.3,
                   "detected": true}, ...],
       "metadata": {"hostgal_photoz": 0.12}}

  with fluxes in nJy and bands among ``u g r i z y``.

Output: one classification per alert, keyed by object id, as schemaless Avro with the schema
``schemas/classification.avsc`` shipped in this package (fields modelled on the ELAsTiCC
broker-classification schema) or as JSON with the same fields.
"""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pyarrow as pa

from astro_classifier.alerts.rubin import (
    SchemaDirectory,
    decode_rubin_avro_bytes,
    decode_rubin_wire,
    rubin_records_to_batch,
)
from astro_classifier.alerts.ztf import decode_ztf_avro_bytes, ztf_records_to_batch
from astro_classifier.data.lightcurve import LightCurveBatch, band_indices
from astro_classifier.errors import InputError

CLASSIFICATION_SCHEMA_NAME = "classification.avsc"


# -- input ----------------------------------------------------------------------------------
class SchemaRegistry:
    """Rubin alert schemas from a Confluent Schema Registry (``GET /schemas/ids/<id>``), cached.

    Has the same ``get(schema_id, source)`` as :class:`SchemaDirectory`, so
    :func:`decode_rubin_wire` takes either.
    """

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._parsed: dict[int, Any] = {}
        self._lock = threading.Lock()

    def get(self, schema_id: int, source: str) -> Any:
        with self._lock:
            if schema_id not in self._parsed:
                self._parsed[schema_id] = self._fetch(schema_id, source)
            return self._parsed[schema_id]

    def _fetch(self, schema_id: int, source: str) -> Any:
        address = f"{self.url}/schemas/ids/{schema_id}"
        try:
            with urllib.request.urlopen(address, timeout=self.timeout_s) as reply:
                body = json.load(reply)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise InputError(source, f"schema id {schema_id} is unknown to {self.url}") from exc
            raise
        return fastavro.parse_schema(json.loads(body["schema"]))


def schema_source(schema_dir: Path | None, registry_url: str | None) -> Any:
    """The schema lookup for rubin-wire: a local folder, else a registry."""
    if schema_dir is not None:
        return SchemaDirectory(schema_dir)
    if registry_url is not None:
        return SchemaRegistry(registry_url)
    raise ValueError("rubin-wire needs a schema directory or a schema registry URL")


def decode_json_alert(data: bytes, source: str) -> LightCurveBatch:
    """astroclf's JSON alert format (module docstring) -> a one-object batch."""
    try:
        doc = json.loads(data)
        object_id = str(doc["object_id"])
        points = doc["points"]
        if not points:
            raise InputError(source, "no points; expected at least one observation")
        columns = {
            name: np.array([float(p[name]) for p in points]) for name in ("mjd", "flux", "flux_err")
        }
        bands = [str(p["band"]) for p in points]
        detected = np.array([bool(p.get("detected", True)) for p in points])
        metadata = {k: np.array([float(v)]) for k, v in (doc.get("metadata") or {}).items()}
        alert_id = doc.get("alert_id")
    except InputError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(
            source,
            f"not an astroclf JSON alert ({type(exc).__name__}: {exc}); expected "
            '{"object_id", "points": [{"mjd", "band", "flux", "flux_err"}]}',
        ) from exc
    return LightCurveBatch.from_points(
        np.full(len(points), object_id),
        columns["mjd"],
        band_indices(bands, source),
        columns["flux"],
        columns["flux_err"],
        detected,
        objects=[object_id],
        metadata=metadata,
        alert_id=None if alert_id is None else [str(alert_id)],
    )


def decode_message(
    value: bytes | None, input_format: str, schemas: Any, source: str
) -> LightCurveBatch:
    """One Kafka message value -> the light curves of the alerts it carries.

    Raises :class:`InputError` (naming ``source``, e.g. ``topic[partition]@offset``) for
    anything that is not a valid alert of ``input_format``; the worker dead-letters those.
    """
    if not value:
        raise InputError(source, f"empty message; expected a {input_format} alert")
    if input_format == "ztf-avro":
        batch = ztf_records_to_batch(decode_ztf_avro_bytes(value, source), source)
    elif input_format == "rubin-avro":
        batch = rubin_records_to_batch(decode_rubin_avro_bytes(value, source), source)
    elif input_format == "rubin-wire":
        batch = rubin_records_to_batch([decode_rubin_wire(value, schemas, source)], source)
    elif input_format == "json":
        batch = decode_json_alert(value, source)
    else:
        raise ValueError(f"unknown input format {input_format!r}")
    if len(batch) == 0:
        raise InputError(source, "the message holds no alert")
    return batch


# -- output ---------------------------------------------------------------------------------
@cache
def classification_schema() -> dict:
    """The parsed Avro schema of output messages (shipped in the package)."""
    text = (
        files("astro_classifier.stream").joinpath("schemas", CLASSIFICATION_SCHEMA_NAME).read_text()
    )
    return fastavro.parse_schema(json.loads(text))


@dataclass(frozen=True)
class MessageRef:
    """Where an alert came from: its Kafka message."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int  # the message's Kafka timestamp

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


def classification_records(
    table: pa.Table, sources: list[MessageRef], timings: dict[str, Any]
) -> list[dict[str, Any]]:
    """Rows of classify()'s table -> output records (the Avro schema's fields).

    ``sources[i]`` is the message that row ``i`` came from; ``timings`` holds the batch-wide
    fields ``classifiedTimestampMs``, ``decodeMs``, ``inferenceMs`` and ``batchSize``.
    """
    labels = [name[len("prob_") :] for name in table.column_names if name.startswith("prob_")]
    records = []
    for row, ref in zip(table.to_pylist(), sources, strict=True):
        records.append(
            {
                "objectId": row["object_id"],
                "alertId": row["alert_id"],
                "classifierName": row["model"],
                "classifierVersion": row["model_version"],
                "classId": row["class"],
                "probability": float(row["probability"]),
                "classifications": [
                    {"classId": label, "probability": float(row[f"prob_{label}"])}
                    for label in labels
                ],
                "alertTimestampMs": ref.timestamp_ms,
                "sourceTopic": ref.topic,
                "sourcePartition": ref.partition,
                "sourceOffset": ref.offset,
                **timings,
            }
        )
    return records


def encode_classification(record: dict[str, Any], output_format: str) -> bytes:
    """One output record -> message bytes (schemaless Avro or UTF-8 JSON)."""
    if output_format == "json":
        return json.dumps(record, separators=(",", ":")).encode()
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, classification_schema(), record)
    return buffer.getvalue()


def decode_classification(data: bytes, output_format: str) -> dict[str, Any]:
    """Output message bytes -> record (for consumers of the output topic, and tests)."""
    if output_format == "json":
        return json.loads(data)
    return fastavro.schemaless_reader(io.BytesIO(data), classification_schema(), None)
