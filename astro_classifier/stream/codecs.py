"""Kafka message bytes <-> light curves and classifications.

Input: message values are decoded by the format registry
(:mod:`astro_classifier.formats.registry`: ``ztf-avro``, ``ztf-parquet``, ``rubin-avro``,
``rubin-parquet``, ``rubin-wire``, ``json``), a micro-batch at a time by
:func:`decode_micro_batch`, one message by :func:`decode_message`; here live the schema lookups ``rubin-wire``
needs (a local schema folder or a Confluent Schema Registry). A registry that cannot be
reached, or that answers 404 while it looks unhealthy (wiped, a wrong URL), is a transient
failure, never the message's fault: see :class:`SchemaRegistry`.

Output: one classification per alert, keyed by object id, as schemaless Avro with the schema
``schemas/classification.avsc`` shipped in this package (fields modelled on the ELAsTiCC
broker-classification schema) or as JSON with the same fields, mapped by
:func:`classification_records` from classify()'s :class:`Predictions`.
"""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import fastavro

from astro_classifier.core.errors import InputError, TransientError
from astro_classifier.core.taxonomy import BROAD_CLASSES
from astro_classifier.formats.registry import (  # noqa: F401  (the one dispatcher)
    decode_message,
    decode_messages,
    decode_micro_batch,
)
from astro_classifier.formats.rubin import SchemaDirectory
from astro_classifier.inference.predictions import Predictions

CLASSIFICATION_SCHEMA_NAME = "classification.avsc"
# The output fields of the broad probabilities, in BROAD_CLASSES order.
BROAD_FIELDS = tuple(f"prob{kind.capitalize()}" for kind in BROAD_CLASSES)


# -- input ----------------------------------------------------------------------------------
class _NotFound(Exception):
    """The registry answered HTTP 404."""


class SchemaRegistry:
    """Rubin alert schemas from a Confluent Schema Registry (``GET /schemas/ids/<id>``), cached.

    Has the same ``get(schema_id, source)`` as :class:`SchemaDirectory`, so
    :func:`decode_rubin_wire` takes either. Schemas fetched are cached for good (a schema id
    never changes meaning). Whose fault a failure is:

    - a registry that cannot be reached, times out or answers 5xx (or anything but a schema)
      is a :class:`TransientError`: the worker retries the batch with backoff, ``/ready``
      answers 503, nothing is dead-lettered or committed past it;
    - an unknown schema id (HTTP 404) is the message's fault (:class:`InputError`, a dead
      letter) **only if the registry is healthy**. A registry that answers 404 for every id
      (wiped, a proxy or a URL that now points elsewhere) would otherwise drain the stream
      into the dead-letter topic. So a 404 is checked against the registry's health:

      - if this registry has served a schema before, that id (the last one served) is
        fetched again, bypassing the cache (a canary): a 404 there too means "the registry at
        URL no longer knows schema id X it served before", a :class:`TransientError`, as is a
        canary that fails (5xx, unreachable, not a schema);
      - if it never has, ``GET /subjects`` is asked (a Confluent registry answers a JSON list
        of subject names): a 404, anything but a list, or an empty list means the URL "does
        not look like a Schema Registry holding schemas", a :class:`TransientError`; a
        non-empty list means the 404 is genuine: :class:`InputError`.

      The health verdict, either way, is kept ``health_ttl_s`` (10 s), so a flood of
      unknown ids costs one check per ``health_ttl_s``; hence a registry wiped right after a
      healthy verdict is noticed within ``health_ttl_s``.
    - 404s judged genuine are cached per schema id for ``unknown_ttl_s`` (60 s): messages with
      an id the registry does not know cost one request per id and ``unknown_ttl_s``, and a
      schema registered later is picked up after at most ``unknown_ttl_s``. A 404 from an
      unhealthy registry is never cached: the id is asked again on the next try (one request
      per retry of the batch), so it is found as soon as the registry is back.

    ``clock`` (seconds, monotonic) is injectable for tests; it is pickled with the registry
    when a decode pool starts its processes (each process then keeps its own caches), so it
    must be a module-level function such as the default :func:`time.monotonic`.
    """

    DEPENDENCY = "Schema Registry"
    MAX_UNKNOWN = 10_000  # cached 404s kept at most (junk messages can carry any id)

    def __init__(
        self,
        url: str,
        timeout_s: float = 10.0,
        unknown_ttl_s: float = 60.0,
        health_ttl_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.unknown_ttl_s = unknown_ttl_s
        self.health_ttl_s = health_ttl_s
        self.clock = clock
        self._parsed: dict[int, Any] = {}
        self._served: int | None = None  # the last schema id served: the canary
        self._unknown: dict[int, float] = {}  # schema id -> until when its 404 holds
        # (until when, None: healthy, else why not) of the last health check
        self._health: tuple[float, str | None] | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # for decode pool processes: no lock
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def get(self, schema_id: int, source: str) -> Any:
        with self._lock:
            if schema_id in self._parsed:
                return self._parsed[schema_id]
            now = self.clock()
            if self._unknown.get(schema_id, now) > now:  # a genuine 404, not expired
                self._require_healthy(schema_id, now)
                raise InputError(source, self._unknown_reason(schema_id))
            self._unknown.pop(schema_id, None)
            address = f"{self.url}/schemas/ids/{schema_id}"
            try:
                schema = self._parse(address, self._get_json(address))
            except _NotFound:
                now = self.clock()  # the request may have taken a while
                self._require_healthy(schema_id, now)
                self._remember_unknown(schema_id, now)
                raise InputError(source, self._unknown_reason(schema_id)) from None
            self._parsed[schema_id] = schema
            self._served = schema_id
            return schema

    # -- whose fault is a 404 ------------------------------------------------------------
    def _require_healthy(self, schema_id: int, now: float) -> None:
        """Raise :class:`TransientError` unless the registry looks healthy (see above)."""
        if self._health is None or self._health[0] <= now:
            self._health = (now + self.health_ttl_s, self._check_health())
        problem = self._health[1]
        if problem is not None:
            self._unknown.clear()  # 404s seen lately may have come from this broken state
            raise TransientError(
                self.DEPENDENCY,
                f"{problem} (HTTP 404 for schema id {schema_id}: not the message's fault)",
            )

    def _check_health(self) -> str | None:
        """None if the registry looks healthy, else why it does not."""
        if self._served is not None:
            address = f"{self.url}/schemas/ids/{self._served}"
            try:
                self._parse(address, self._get_json(address))
            except _NotFound:
                return (
                    f"the registry at {self.url} no longer knows schema id {self._served} it "
                    "served before: wiped, or the URL now points elsewhere"
                )
            except TransientError as exc:
                served = self._served
                return f"schema id {served}, served before, cannot be fetched again: {exc.reason}"
            return None
        address = f"{self.url}/subjects"
        try:
            subjects = self._get_json(address)
        except _NotFound:
            answer = "HTTP 404"
        except TransientError as exc:
            return f"the subjects of {self.url} cannot be listed: {exc.reason}"
        else:
            if isinstance(subjects, list) and subjects:
                return None
            answer = "an empty list" if subjects == [] else f"{type(subjects).__name__}, not a list"
        return (
            f"{self.url} does not look like a Schema Registry holding schemas "
            f"(GET {address}: {answer}): a wrong URL, a proxy, or a wiped registry"
        )

    def _remember_unknown(self, schema_id: int, now: float) -> None:
        if len(self._unknown) >= self.MAX_UNKNOWN:
            self._unknown = {k: t for k, t in self._unknown.items() if t > now}
            while len(self._unknown) >= self.MAX_UNKNOWN:  # the oldest first
                del self._unknown[next(iter(self._unknown))]
        self._unknown[schema_id] = now + self.unknown_ttl_s

    def _unknown_reason(self, schema_id: int) -> str:
        return f"schema id {schema_id} is unknown to {self.url}"

    # -- HTTP ------------------------------------------------------------------------------
    def _get_json(self, address: str) -> Any:
        """The JSON answer to ``GET address``; :class:`_NotFound` for a 404, else
        :class:`TransientError` for any failure."""
        try:
            with urllib.request.urlopen(address, timeout=self.timeout_s) as reply:
                return json.load(reply)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 404:
                raise _NotFound(address) from exc
            raise TransientError(
                self.DEPENDENCY, f"GET {address}: HTTP {exc.code} {exc.reason}"
            ) from exc
        except (OSError, ValueError) as exc:  # refused, timed out, reset, not JSON
            raise TransientError(
                self.DEPENDENCY, f"GET {address}: {type(exc).__name__}: {exc}"
            ) from exc

    def _parse(self, address: str, body: Any) -> Any:
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
    predictions: Predictions, sources: Sequence[MessageRef], timings: dict[str, Any]
) -> list[dict[str, Any]]:
    """classify()'s predictions -> output records (the Avro schema's fields), one per object.

    ``sources[i]`` is the message that object ``i`` came from; ``timings`` holds the
    batch-wide fields ``classifiedTimestampMs``, ``decodeMs``, ``inferenceMs`` and
    ``batchSize``. ``classifications`` lists every label of the model in its order.
    """
    n = len(predictions)
    if len(sources) != n:
        raise ValueError(f"{len(sources)} sources for {n} predictions")
    labels = list(predictions.labels)
    object_ids = predictions.object_id.tolist()
    alert_ids = predictions.alert_id.tolist() if predictions.alert_id is not None else [None] * n
    class_ids = predictions.classes.tolist()
    top = predictions.probability.tolist()
    probabilities = predictions.probabilities.tolist()
    broad_classes = predictions.broad_class.tolist()
    broad = predictions.broad_probabilities
    broad_rows = broad.tolist() if broad is not None else [[None] * len(BROAD_FIELDS)] * n
    ood = predictions.ood_score.tolist()
    abstain = predictions.abstain.tolist()
    records = []
    for k, ref in enumerate(sources):
        records.append(
            {
                "objectId": object_ids[k],
                "alertId": alert_ids[k],
                "classifierName": predictions.model,
                "classifierVersion": predictions.model_version,
                "classId": class_ids[k],
                "probability": top[k],
                "classifications": [
                    {"classId": label, "probability": p}
                    for label, p in zip(labels, probabilities[k], strict=True)
                ],
                "broadClass": broad_classes[k],
                **dict(zip(BROAD_FIELDS, broad_rows[k], strict=True)),
                "oodScore": ood[k],
                "abstain": abstain[k],
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
