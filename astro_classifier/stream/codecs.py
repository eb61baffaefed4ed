"""Kafka message bytes <-> light curves and classifications.

Input: a message value is decoded by :func:`decode_message`, the format registry's
(:mod:`astro_classifier.data.readers`: ``ztf-avro``, ``ztf-parquet``, ``rubin-avro``,
``rubin-parquet``, ``rubin-wire``, ``json``); here live the schema lookups ``rubin-wire``
needs (a local schema folder or a Confluent Schema Registry).

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
import pyarrow as pa

from astro_classifier.alerts.rubin import SchemaDirectory
from astro_classifier.data.readers import (  # noqa: F401  (the one dispatcher)
    decode_message,
    decode_messages,
)
from astro_classifier.errors import InputError, TransientError
from astro_classifier.taxonomy import BROAD_CLASSES

CLASSIFICATION_SCHEMA_NAME = "classification.avsc"


# -- input ----------------------------------------------------------------------------------
class SchemaRegistry:
    """Rubin alert schemas from a Confluent Schema Registry (``GET /schemas/ids/<id>``), cached.

    Has the same ``get(schema_id, source)`` as :class:`SchemaDirectory`, so
    :func:`decode_rubin_wire` takes either. An unknown schema id (HTTP 404) is the message's
    fault (:class:`InputError`); a registry that cannot be reached, times out or answers
    5xx (or anything but a schema) is a :class:`TransientError`: the worker retries.
    """

    DEPENDENCY = "Schema Registry"

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._parsed: dict[int, Any] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # for decode pool processes: no lock
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
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
            raise TransientError(
                self.DEPENDENCY, f"GET {address}: HTTP {exc.code} {exc.reason}"
            ) from exc
        except (OSError, ValueError) as exc:  # refused, timed out, reset, not JSON
            raise TransientError(
                self.DEPENDENCY, f"GET {address}: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            return fastavro.parse_schema(json.loads(body["schema"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise TransientError(
                self.DEPENDENCY, f"GET {address}: not a schema ({type(exc).__name__}: {exc})"
            ) from exc


def schema_source(schema_dir: Path | None, registry_url: str | None) -> Any:
    """The schema lookup for rubin-wire: a local folder, else a registry."""
    if schema_dir is not None:
        return SchemaDirectory(schema_dir)
    if registry_url is not None:
        return SchemaRegistry(registry_url)
    raise ValueError("rubin-wire needs a schema directory or a schema registry URL")


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
    broad = {f"prob_{kind}" for kind in BROAD_CLASSES}
    labels = [
        name[len("prob_") :]
        for name in table.column_names
        if name.startswith("prob_") and name not in broad
    ]
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
                "broadClass": row.get("broad_class"),
                "probTransient": _optional_float(row.get("prob_transient")),
                "probStochastic": _optional_float(row.get("prob_stochastic")),
                "probPeriodic": _optional_float(row.get("prob_periodic")),
                "oodScore": _optional_float(row.get("ood_score")),
                "abstain": row.get("abstain"),
                "alertTimestampMs": ref.timestamp_ms,
                "sourceTopic": ref.topic,
                "sourcePartition": ref.partition,
                "sourceOffset": ref.offset,
                **timings,
            }
        )
    return records


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


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
