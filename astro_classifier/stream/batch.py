"""One micro-batch of the Kafka worker, without any Kafka I/O: messages in, outputs and
dead letters out.

:class:`BatchProcessor` applies the worker's error policy to the input:

- the micro-batch is decoded once (:func:`decode_micro_batch`: every alert's light curve in
  one batch, with its message's index); a message it refuses (:class:`InputError`) becomes a
  dead letter;
- the alerts of all decoded messages go through one :func:`classify` call; objects it skips
  (no usable point, no point in the model's bands) dead-letter their message as
  ``Unclassifiable``; if classify() raises :class:`InputError` the messages are classified
  one by one and those that still raise it are dead-lettered;
- each classified alert is one output message, mapped from classify()'s
  :class:`Predictions` (:func:`classification_records`), in message order; a classification
  the output format cannot encode (e.g. an id that is not valid Unicode) dead-letters its
  message;
- :class:`TransientError` (the Schema Registry is down) and every other exception (a bug,
  :class:`ModelError`, an ONNX Runtime fault) propagate: the batch is not the messages'
  fault, so none of them may be dead-lettered. The worker retries the batch (transient) or
  stops after a bounded number of consecutive failures (anything else).

A :class:`DeadLetter` is the input message (key, value, its own headers except ``astroclf.*``
ones, which are replaced) plus the headers of :data:`DEAD_LETTER_HEADERS`. Input headers
that cannot be read (a key that is not UTF-8) are left out and ``astroclf.headers.dropped``
says why; a value cut to fit the producer's ``message.max.bytes`` carries
``astroclf.truncated`` = its original size in bytes. When the key and headers alone do not
fit, the input's own headers are left out first (``astroclf.headers.dropped`` says so), then
the key is cut (``astroclf.key.truncated`` = its original size): a dead letter always goes out.

An Avro container whose records convert only in part (:class:`PartialDecode`) is not
dead-lettered whole: its good records are classified as usual and each bad record is a dead
letter of its own, whose value is that record alone as a single-record Avro container (same
writer schema) and whose headers add :data:`RECORD_HEADERS`: ``astroclf.record.index`` (its
0-based index in the container) and ``astroclf.record.count`` (records in the container).
If every record is bad, or the container cannot be decoded, the message is dead-lettered
whole, without those headers. A later failure of its good records (``Unclassifiable``, an
output that cannot be encoded) dead-letters the message whole, as for any message, beside
its record dead letters.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import LightCurveBatch
from astro_classifier.formats.registry import DecodedMessages, PartialDecode, decode_micro_batch
from astro_classifier.inference.classify import classify
from astro_classifier.inference.model import LoadedModel
from astro_classifier.inference.predictions import Predictions
from astro_classifier.stream.codecs import (
    MessageRef,
    classification_records,
    encode_classification,
)
from astro_classifier.stream.decoding import DecodePool
from astro_classifier.stream.logs import log_event

UNCLASSIFIABLE = "Unclassifiable"
MESSAGE_TOO_LARGE = "MessageTooLarge"
HEADER_PREFIX = "astroclf."
H_ERROR_CLASS = "astroclf.error.class"
H_ERROR_MESSAGE = "astroclf.error.message"
H_SOURCE_TOPIC = "astroclf.source.topic"
H_SOURCE_PARTITION = "astroclf.source.partition"
H_SOURCE_OFFSET = "astroclf.source.offset"
H_ERROR_TIME = "astroclf.error.time"
H_TRUNCATED = "astroclf.truncated"  # original value size in bytes
H_HEADERS_DROPPED = "astroclf.headers.dropped"  # why the input's own headers are missing
H_KEY_TRUNCATED = "astroclf.key.truncated"  # original key size in bytes
H_RECORD_INDEX = "astroclf.record.index"  # a record dead letter: its index in the container
H_RECORD_COUNT = "astroclf.record.count"  # a record dead letter: records in the container
RECORD_HEADERS = (H_RECORD_INDEX, H_RECORD_COUNT)
DEAD_LETTER_HEADERS = (
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_SOURCE_TOPIC,
    H_SOURCE_PARTITION,
    H_SOURCE_OFFSET,
    H_ERROR_TIME,
)
MAX_ERROR_MESSAGE_CHARS = 2000


def message_ref(message: Any) -> MessageRef:
    kind, timestamp = message.timestamp()
    # Kafka's TIMESTAMP_NOT_AVAILABLE is type 0; -1 then says "unknown" in the output.
    return MessageRef(
        message.topic(), message.partition(), message.offset(), timestamp if kind else -1
    )


# confluent_kafka's Message.headers() raises on a key that is not UTF-8 and, called again on
# the same message, returns a broken list that crashes the interpreter: read each message's
# headers once and remember the answer (message kept alive, so its id is not reused). The
# memory holds the messages of the micro-batch in hand only: BatchProcessor.process() and the
# worker, once a batch is delivered, call release_headers(); _HEADERS_READ_MAX is a backstop.
_HEADERS_READ: OrderedDict[int, tuple[Any, list, str | None]] = OrderedDict()
_HEADERS_READ_MAX = 5_000
_HEADERS_LOCK = threading.Lock()


def release_headers(messages: Iterable[Any] | None = None) -> None:
    """Forget the headers read so far (and the messages kept alive for them): called once no
    dead letter of a micro-batch is produced any more.

    ``messages`` given: forget only theirs. The pipelined worker (stream/pipeline.py) has
    several micro-batches in flight and releases each one's when it is done: forgetting
    another batch's answer would make its delivery read a message's headers a second time.
    """
    with _HEADERS_LOCK:
        if messages is None:
            _HEADERS_READ.clear()
            return
        for message in messages:
            known = _HEADERS_READ.get(id(message))
            if known is not None and known[0] is message:
                del _HEADERS_READ[id(message)]


def _raise_pending_error() -> None:
    """Raise an exception a C extension left set without raising it (confluent_kafka does,
    after a header key that is not UTF-8): ctypes raises what is pending after a call."""
    _PYERR_OCCURRED()


_PYERR_OCCURRED = ctypes.pythonapi.PyErr_Occurred
_PYERR_OCCURRED.restype = ctypes.c_void_p
_PYERR_OCCURRED.argtypes = []


def _read_headers_once(message: Any) -> tuple[list, str | None]:
    with _HEADERS_LOCK:
        known = _HEADERS_READ.get(id(message))
        if known is not None and known[0] is message:
            return known[1], known[2]
        try:
            own, problem = list(message.headers() or []), None
            _raise_pending_error()
            for name, value in own:  # what produce() will accept again
                if not isinstance(name, str) or not isinstance(value, (bytes, type(None))):
                    raise TypeError(f"header {name!r}: not (str, bytes)")
        except Exception as exc:  # SystemError/UnicodeDecodeError on a non-UTF-8 key
            own = []
            problem = f"the input's headers could not be read ({type(exc).__name__}: {exc})"
        _HEADERS_READ[id(message)] = (message, own, problem)
        while len(_HEADERS_READ) > _HEADERS_READ_MAX:
            _HEADERS_READ.popitem(last=False)
        return own, problem


def input_headers(message: Any) -> tuple[list[tuple[str, bytes | None]], str | None]:
    """The message's own headers without ``astroclf.*`` ones, and why they were dropped.

    confluent_kafka's ``Message.headers()`` raises on a key that is not UTF-8: then no input
    header is kept and the second item says so.
    """
    own, problem = _read_headers_once(message)
    kept = [(k, v) for k, v in own if not str(k).startswith(HEADER_PREFIX)]
    return kept, problem


@dataclasses.dataclass
class Output:
    """One classification message for the output topic."""

    key: bytes
    value: bytes
    source: MessageRef
    message: Any = None  # the input message it classifies (dead-lettered if undeliverable)


@dataclasses.dataclass
class DeadLetter:
    """An input message that goes to the dead-letter topic, and why.

    A record dead letter (one bad record of a container, see the module docstring) carries
    that record alone in ``value_override``, used instead of the message's value everywhere
    (:meth:`full_value`), and its ``record_index`` and ``record_count``.
    """

    message: Any  # confluent_kafka.Message (or anything with its accessors)
    error_class: str
    error_message: str
    max_value_bytes: int | None = None  # cut the value to this many bytes (see H_TRUNCATED)
    max_key_bytes: int | None = None  # cut the key to this many bytes (see H_KEY_TRUNCATED)
    own_headers_dropped: str | None = None  # the input's headers left out, and why
    value_override: bytes | None = None  # a record dead letter's value (its record alone)
    record_index: int | None = None  # a record dead letter: its index in the container
    record_count: int | None = None  # a record dead letter: records in the container

    @property
    def source(self) -> MessageRef:
        return message_ref(self.message)

    def key(self) -> bytes | None:
        key = self.message.key()
        if key is not None and self.max_key_bytes is not None:
            return key[: self.max_key_bytes]
        return key

    @property
    def key_truncated(self) -> bool:
        key = self.message.key()
        return key is not None and self.max_key_bytes is not None and len(key) > self.max_key_bytes

    def own_headers(self) -> list[tuple[str, bytes | None]]:
        """The input's own headers that travel with the dead letter (``astroclf.*`` ones
        left out)."""
        return [] if self.own_headers_dropped else input_headers(self.message)[0]

    def full_value(self) -> bytes | None:
        """The value before any cut: the message's, or a record dead letter's record."""
        return self.value_override if self.value_override is not None else self.message.value()

    def value(self) -> bytes | None:
        value = self.full_value()
        if value is not None and self.max_value_bytes is not None:
            return value[: self.max_value_bytes]
        return value

    @property
    def truncated(self) -> bool:
        value = self.full_value()
        return (
            value is not None
            and self.max_value_bytes is not None
            and len(value) > self.max_value_bytes
        )

    def headers(self, now: datetime | None = None) -> list[tuple[str, bytes | None]]:
        """The input's own headers (``astroclf.*`` ones replaced) followed by astroclf's."""
        now = now or datetime.now(timezone.utc)
        own, dropped = input_headers(self.message)
        if self.own_headers_dropped:
            own, dropped = [], self.own_headers_dropped
        ours: list[tuple[str, bytes | None]] = [
            (H_ERROR_CLASS, self.error_class.encode()),
            (
                H_ERROR_MESSAGE,
                self.error_message[:MAX_ERROR_MESSAGE_CHARS].encode("utf-8", "backslashreplace"),
            ),
            (H_SOURCE_TOPIC, self.message.topic().encode()),
            (H_SOURCE_PARTITION, str(self.message.partition()).encode()),
            (H_SOURCE_OFFSET, str(self.message.offset()).encode()),
            (H_ERROR_TIME, now.isoformat(timespec="milliseconds").encode()),
        ]
        if self.record_index is not None:
            ours.append((H_RECORD_INDEX, str(self.record_index).encode()))
            ours.append((H_RECORD_COUNT, str(self.record_count).encode()))
        if dropped is not None:
            ours.append((H_HEADERS_DROPPED, dropped.encode("utf-8", "backslashreplace")))
        if self.truncated:
            ours.append((H_TRUNCATED, str(len(self.full_value() or b"")).encode()))
        if self.key_truncated:
            ours.append((H_KEY_TRUNCATED, str(len(self.message.key())).encode()))
        return [*own, *ours]


def record_dead_letters(message: Any, partial: PartialDecode) -> list[DeadLetter]:
    """One dead letter per bad record of a container ``message`` decoded in part."""
    source = message_ref(message)
    return [
        DeadLetter(
            message,
            InputError.__name__,
            f"{source}: record {error.index} of the {partial.records} in the container: "
            f"{error.reason}",
            value_override=error.container,
            record_index=error.index,
            record_count=partial.records,
        )
        for error in partial.record_errors
    ]


@dataclasses.dataclass
class DecodedBatch:
    """:meth:`BatchProcessor.decode`'s answer: the decoded messages and the seconds it took."""

    decoded: DecodedMessages
    seconds: float


@dataclasses.dataclass
class BatchResult:
    outputs: list[Output]
    dead_letters: list[DeadLetter]
    decode_seconds: float
    inference_seconds: float  # classify(): features and model
    features_seconds: float  # the light-curve feature part of inference_seconds
    dropped_points: dict[str, int] = dataclasses.field(default_factory=dict)  # reason -> n


class BatchProcessor:
    """Messages of one micro-batch -> output messages and dead letters (no Kafka I/O)."""

    def __init__(
        self,
        model: LoadedModel,
        input_format: str,
        output_format: str,
        schemas: Any = None,
        decode_workers: int = 0,
    ) -> None:
        self.model = model
        self.input_format = input_format
        self.output_format = output_format
        self.schemas = schemas
        self._features_seconds = 0.0
        # Stamps are decoded only for a model with an image tower (the costliest part of a
        # ZTF alert); the light-curve decoders never touch them.
        self.cutout_size = int(model.metadata.image_size or 63) if model.needs_images else None
        # decode_workers > 0: a pool of processes decodes (stream/decoding.py), same results.
        self._pool = (
            DecodePool(decode_workers, input_format, schemas, self.cutout_size)
            if decode_workers > 0
            else None
        )

    def start(self) -> BatchProcessor:
        """Start the decode pool, if any (before subscribing: it takes a few seconds)."""
        if self._pool is not None:
            self._pool.start()
        return self

    @property
    def decode_pids(self) -> list[int]:
        """Process ids of the decode pool (empty without one)."""
        return list(self._pool.pids) if self._pool is not None else []

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def _decode(self, messages: Sequence[Any]) -> DecodedMessages:
        """Every message's alerts in one batch, and the messages refused (InputError, by
        message index); TransientError and any other failure propagate."""
        items = [(m.value(), str(message_ref(m))) for m in messages]
        if self._pool is not None:
            return self._pool.decode(items)
        # an InputError is the message's fault; anything else is not, and propagates
        return decode_micro_batch(items, self.input_format, self.schemas, self.cutout_size)

    def decode(self, messages: Sequence[Any]) -> DecodedBatch:
        """The first half of :meth:`process`: decode every message (no classification).

        Raises :class:`TransientError` or any non-input failure (see the module docstring).
        """
        started = time.perf_counter()
        decoded = self._decode(messages)
        return DecodedBatch(decoded, time.perf_counter() - started)

    def classify(self, messages: Sequence[Any], decoded: DecodedBatch) -> BatchResult:
        """The second half of :meth:`process`: classify what :meth:`decode` gave for
        ``messages`` and map it to outputs and dead letters.

        The pipelined worker calls :meth:`decode` and this method in different threads, for
        different micro-batches at the same time: it keeps no state between calls but
        ``_features_seconds``, which only the one classifying thread touches.
        """
        decode_seconds = decoded.seconds
        decoded_messages = decoded.decoded
        dead = {
            i: DeadLetter(messages[i], type(error).__name__, str(error))
            for i, error in decoded_messages.errors.items()
        }
        # bad records of split containers (their good records are in decoded.batch)
        record_dead = {
            i: record_dead_letters(messages[i], partial)
            for i, partial in decoded_messages.partial.items()
        }
        batch = decoded_messages.batch
        dropped = dict(batch.dropped) if batch is not None else {}

        started = time.perf_counter()
        self._features_seconds = 0.0
        # (predictions, the message index of each of their objects)
        classified: list[tuple[Predictions, np.ndarray]] = []
        if batch is not None:
            self._classify(batch, decoded_messages.message, messages, classified, dead)
        inference_seconds = time.perf_counter() - started

        timings = {
            "classifiedTimestampMs": int(time.time() * 1000),
            "decodeMs": decode_seconds * 1000,
            "inferenceMs": inference_seconds * 1000,
            "batchSize": len(messages),
        }
        return BatchResult(
            outputs=self._outputs(messages, classified, timings, dead),
            dead_letters=[
                letter
                for i in sorted(dead.keys() | record_dead.keys())
                for letter in [*record_dead.get(i, []), *([dead[i]] if i in dead else [])]
            ],
            decode_seconds=decode_seconds,
            inference_seconds=inference_seconds,
            features_seconds=self._features_seconds,
            dropped_points=dropped,
        )

    def process(self, messages: Sequence[Any]) -> BatchResult:
        """Decode and classify one micro-batch (:meth:`decode`, then :meth:`classify`), for a
        caller with one batch in hand at a time: the headers read for earlier batches are
        forgotten first.

        Raises :class:`TransientError` or any non-input failure: see the module docstring.
        """
        release_headers()  # the previous batch is delivered: drop its messages
        return self.classify(messages, self.decode(messages))

    def _outputs(
        self,
        messages: Sequence[Any],
        classified: list[tuple[Predictions, np.ndarray]],
        timings: dict[str, Any],
        dead: dict[int, DeadLetter],
    ) -> list[Output]:
        """One output per classified object, in message order (objects of one message in
        their order in it). A message one of whose classifications the output format cannot
        encode (e.g. an id that is not valid Unicode) gives no output and is dead-lettered."""
        refs = {i: message_ref(messages[i]) for _, owner in classified for i in set(owner.tolist())}
        per_message: dict[int, list[Output]] = defaultdict(list)
        failed: set[int] = set()
        for predictions, owner in classified:
            owners = owner.tolist()
            records = classification_records(predictions, [refs[i] for i in owners], timings)
            for i, record in zip(owners, records, strict=True):
                if i in failed:
                    continue
                try:
                    per_message[i].append(
                        Output(
                            key=record["objectId"].encode(),
                            value=encode_classification(record, self.output_format),
                            source=refs[i],
                            message=messages[i],
                        )
                    )
                except (ValueError, TypeError) as exc:
                    dead[i] = DeadLetter(messages[i], type(exc).__name__, str(exc))
                    failed.add(i)
                    del per_message[i]
        return [output for i in sorted(per_message) for output in per_message[i]]

    def _classify(
        self,
        batch: LightCurveBatch,
        owner: np.ndarray,
        messages: Sequence[Any],
        classified: list[tuple[Predictions, np.ndarray]],
        dead: dict[int, DeadLetter],
    ) -> None:
        """One classify() call for ``batch`` (``owner``: the message index of each object);
        one per message if it refuses the input (InputError). Any other exception
        propagates."""
        try:
            classified.append(self._classify_together(batch, owner, messages, dead))
        except InputError as exc:
            indices = np.unique(owner).tolist()
            if len(indices) == 1:
                dead[indices[0]] = DeadLetter(messages[indices[0]], type(exc).__name__, str(exc))
                return
            log_event(
                logging.WARNING,
                "classify_batch_refused",
                messages=len(indices),
                error=str(exc),
                retry="one message at a time",
            )
            for i in indices:
                mine = np.flatnonzero(owner == i)
                self._classify(batch.select(mine), owner[mine], messages, classified, dead)

    def _classify_together(
        self,
        batch: LightCurveBatch,
        owner: np.ndarray,
        messages: Sequence[Any],
        dead: dict[int, DeadLetter],
    ) -> tuple[Predictions, np.ndarray]:
        """(predictions, message index of each classified object); objects classify()
        skips dead-letter their message as Unclassifiable."""
        result = classify(batch, self.model)
        self._features_seconds += result.timings.features

        skipped: dict[int, list[str]] = defaultdict(list)
        for reason, positions in result.skipped_rows.items():
            for k in positions:
                skipped[int(owner[k])].append(f"object {batch.object_id[k]}: {reason}")
        for i, reasons in skipped.items():
            dead[i] = DeadLetter(messages[i], UNCLASSIFIABLE, "; ".join(reasons))
        return result, owner[result.rows]
