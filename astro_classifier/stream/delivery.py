"""Delivery of one micro-batch: produce its outputs and dead letters, then commit its offsets.

Two objects with one interface (:meth:`deliver`, :meth:`on_revoke`, :meth:`finish`):

- :class:`AtLeastOnceDelivery`: produce everything, wait for every delivery report, then
  store and commit (synchronously) the offsets after the batch. Only messages whose delivery
  failed are produced again (never the batch's good outputs), so a failing message does not
  duplicate the rest of its batch.
- :class:`ExactlyOnceDelivery`: outputs, dead letters and the consumer offsets go into one
  transaction. Any failed produce (a local refusal included) aborts the transaction; the
  batch is produced again in a new one.

Each :meth:`~Delivery.deliver` is two halves: :meth:`~Delivery.deliver_outputs` uses only
the producer (the pipelined worker runs it on its deliver thread) and
:meth:`~Delivery.commit` only the consumer (on the consuming thread, once the outputs are
acknowledged; a no-op for exactly-once, whose transaction already carries the offsets).

Both apply the same policy to failed deliveries:

- *too large* (``message.max.bytes`` of the producer or the broker): an output is replaced by
  a dead letter of its input message, a dead letter has its value cut to fit (header
  ``astroclf.truncated`` = original size). Values are cut *before* producing when they
  cannot fit the producer's limit; key and headers too (the input's own headers left out,
  then the key cut, ``astroclf.key.truncated``) when they alone exceed it, so one message
  with a huge key never blocks its partition. A dead letter that cannot be delivered even
  empty raises :class:`Undeliverable`;
- *transient* (timeouts, broker down, leader moves): produced again after a backoff, the
  batch not committed meanwhile; after ``retry_for_s`` :class:`DeliveryFailed` is raised and
  the worker reads the batch again;
- *permanent* (authorisation, an invalid record): :class:`Undeliverable`; fatal librdkafka
  errors (a fenced producer): :class:`FatalKafkaError`.

No offset is ever stored or committed past a message that was not delivered. A stop request
whose deadline passes while a flush is stuck raises :class:`StopTimeout`, committing nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from astro_classifier.stream.batch import (
    MESSAGE_TOO_LARGE,
    BatchResult,
    DeadLetter,
    Output,
    message_ref,
)
from astro_classifier.stream.codecs import MessageRef
from astro_classifier.stream.logs import log_event

KAFKA_TIMEOUT_S = 30.0
MAX_TRANSACTION_ATTEMPTS = 3  # aborted by the transaction API itself (not a failed produce)
# Bytes kept free under message.max.bytes for the record and batch framing (~80 bytes)
# and librdkafka's own accounting.
FRAMING_BYTES = 512
SIZE_ERRORS = frozenset({"_MSG_SIZE_TOO_LARGE", "MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE"})
TRANSIENT_ERRORS = frozenset(
    {
        "_MSG_TIMED_OUT",
        "_TIMED_OUT",
        "_TIMED_OUT_QUEUE",
        "_TRANSPORT",
        "_ALL_BROKERS_DOWN",
        "_QUEUE_FULL",
        "_PURGE_QUEUE",
        "_PURGE_INFLIGHT",
        "_UNKNOWN_TOPIC",
        "_UNKNOWN_PARTITION",
        "_WAIT_COORD",
        "REQUEST_TIMED_OUT",
        "NETWORK_EXCEPTION",
        "LEADER_NOT_AVAILABLE",
        "NOT_LEADER_FOR_PARTITION",
        "NOT_ENOUGH_REPLICAS",
        "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
        "UNKNOWN_TOPIC_OR_PART",
        "COORDINATOR_NOT_AVAILABLE",
        "NOT_COORDINATOR",
    }
)


FLUSH_STALL_S = 5.0  # deliveries without progress this long: not ready


class FatalKafkaError(RuntimeError):
    """librdkafka reported an error the worker cannot recover from (e.g. producer fenced)."""


class DeliveryFailed(RuntimeError):
    """The batch could not be delivered for now (transient); nothing was committed."""


class Undeliverable(RuntimeError):
    """A message can never be delivered, not even cut to fit; nothing was committed."""


class StopTimeout(RuntimeError):
    """The stop deadline passed while waiting for deliveries; nothing more was committed."""


def error_kind(error: Any) -> str:
    """``size``, ``transient``, ``fatal`` or ``permanent`` for a KafkaError (or a string)."""
    if isinstance(error, str):
        return "permanent"
    name = error.name()
    if name in SIZE_ERRORS:
        return "size"
    if error.fatal():
        return "fatal"
    if name in TRANSIENT_ERRORS or error.retriable():
        return "transient"
    return "permanent"


def _describe(error: Any) -> str:
    return error if isinstance(error, str) else f"{error.name()}: {error.str()}"


@dataclasses.dataclass
class Item:
    """One message to produce: an output or a dead letter."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] | None
    output: Output | None = None
    dead: DeadLetter | None = None


@dataclasses.dataclass
class Delivered:
    """What a batch's delivery put in the topics (after any replacement)."""

    outputs: int
    dead_letters: list[DeadLetter]
    attempts: int = 1


def serialized_size(key: bytes | None, value: bytes | None, headers: Sequence | None) -> int:
    """Bytes librdkafka counts against ``message.max.bytes`` (key, value, headers)."""
    size = len(key or b"") + len(value or b"")
    for name, data in headers or []:
        size += len(name.encode()) + len(data or b"") + 10
    return size


@dataclasses.dataclass
class Backoff:
    """Exponential backoff: ``first_s``, doubling, at most ``max_s``."""

    first_s: float = 0.5
    max_s: float = 30.0

    def delay(self, attempt: int) -> float:
        return min(self.max_s, self.first_s * 2 ** max(attempt - 1, 0))


class Delivery:
    """What both delivery modes share; see the module docstring."""

    exactly_once = False

    def __init__(
        self,
        producer: Any,
        consumer: Any,
        *,
        output_topic: str,
        dead_letter_topic: str,
        max_message_bytes: int = 1_000_000,
        stop_deadline: Callable[[], float | None] = lambda: None,
        on_acked: Callable[[MessageRef], None] = lambda _ref: None,
        on_retry: Callable[[str, int], None] = lambda _why, _attempt: None,
        beat: Callable[[], None] = lambda: None,
        backoff: Backoff | None = None,
        retry_for_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.producer = producer
        self.consumer = consumer
        self.output_topic = output_topic
        self.dead_letter_topic = dead_letter_topic
        self.max_message_bytes = max_message_bytes
        self.stop_deadline = stop_deadline
        self.on_acked = on_acked
        self.on_retry = on_retry
        self.beat = beat
        self.backoff = backoff or Backoff()
        self.retry_for_s = retry_for_s
        self.clock = clock
        self.sleep = sleep

    # -- the interface ----------------------------------------------------------------------
    def deliver(self, messages: Sequence[Any], result: BatchResult) -> Delivered:
        """Produce the batch's outputs and dead letters, then commit its offsets."""
        delivered = self.deliver_outputs(messages, result)
        self.commit(messages)
        return delivered

    def deliver_outputs(
        self, messages: Sequence[Any], result: BatchResult, group_metadata: Any = None
    ) -> Delivered:
        """The producer's half of :meth:`deliver`: produce everything and wait until it is
        acknowledged (exactly-once: in a transaction with the offsets, committed).

        Touches only the producer, so the pipelined worker runs it on its deliver thread:
        confluent_kafka lets one thread at a time into a Consumer (a second one waits, and
        can starve while the consuming thread polls). ``group_metadata`` is the consumer's
        ``consumer_group_metadata()``, taken on the consuming thread (exactly-once only).
        """
        raise NotImplementedError

    def commit(self, messages: Sequence[Any]) -> None:
        """The consumer's half of :meth:`deliver`, on the consuming thread, after
        :meth:`deliver_outputs` returned: commit the offsets after ``messages``."""

    def on_revoke(self) -> None:
        """Partitions are being revoked (between batches): make finished work durable."""

    def finish(self) -> None:
        """After the last batch: nothing produced may stay unreported."""
        self._flush()

    # -- planning: make every message fit -----------------------------------------------------
    def plan(self, result: BatchResult) -> list[Item]:
        """The batch's messages, each within ``max_message_bytes`` (see module docstring)."""
        now = datetime.now(timezone.utc)
        items: list[Item] = []
        dead_sources = {d.source for d in result.dead_letters if d.value_override is None}
        limit = self.max_message_bytes - FRAMING_BYTES
        for out in result.outputs:
            if serialized_size(out.key, out.value, None) <= limit:
                items.append(Item(self.output_topic, out.key, out.value, None, output=out))
            elif out.source not in dead_sources:
                dead_sources.add(out.source)
                items.append(self._dead_item(self._too_large(out), now))
        items += [self._dead_item(dead, now) for dead in result.dead_letters]
        return items

    def _too_large(self, out: Output) -> DeadLetter:
        if out.message is None:
            raise Undeliverable(f"the classification of {out.source} is too large to deliver")
        return DeadLetter(
            out.message,
            MESSAGE_TOO_LARGE,
            f"{out.source}: its classification ({len(out.value)} bytes with a "
            f"{len(out.key)}-byte key) does not fit message.max.bytes {self.max_message_bytes}",
        )

    def _dead_item(self, dead: DeadLetter, now: datetime, shrink: bool = False) -> Item:
        """A dead letter as a message, cut to fit ``max_message_bytes``: its value first; when
        the key and headers alone do not fit, the input's own headers are left out and the
        key is cut. With ``shrink`` (the broker refused the last try), what was last tried is
        halved: the value, then (value empty) the input's headers, then the key."""
        full = len(dead.full_value() or b"")
        if shrink:
            self._shrink(dead, full)
        else:
            room = self._value_room(dead, now)
            if room < 0:
                self._fit_key_and_headers(dead, now, full)
                room = self._value_room(dead, now)
            if full > room:
                dead.max_value_bytes = max(room, 0)
        return Item(self.dead_letter_topic, dead.key(), dead.value(), dead.headers(now), dead=dead)

    def _value_room(self, dead: DeadLetter, now: datetime) -> int:
        """Bytes left for the dead letter's value under ``max_message_bytes``."""
        return (
            self.max_message_bytes
            - FRAMING_BYTES
            - serialized_size(dead.key(), None, dead.headers(now))
            - 40  # the astroclf.truncated header
        )

    def _fit_key_and_headers(self, dead: DeadLetter, now: datetime, value_size: int) -> None:
        """The key and headers alone exceed ``max_message_bytes``: leave out the input's own
        headers; if that is not enough, cut the key (the value keeps what the key leaves, and
        the key at least 1 KiB when there is that much room)."""
        own = dead.own_headers()
        if own:
            dead.own_headers_dropped = (
                f"the input's headers ({serialized_size(None, None, own)} bytes) do not fit "
                f"message.max.bytes {self.max_message_bytes}"
            )
            if self._value_room(dead, now) >= 0:
                return
        key_size = len(dead.message.key() or b"")
        dead.max_key_bytes = 0  # counts the astroclf.key.truncated header
        room = self._value_room(dead, now)
        if room < 0:
            raise Undeliverable(
                f"the dead letter of {dead.source}: astroclf's own headers alone exceed "
                f"message.max.bytes {self.max_message_bytes}"
            )
        dead.max_key_bytes = min(key_size, max(room - value_size, min(room, 1024)))

    def _shrink(self, dead: DeadLetter, full: int) -> None:
        tried = full if dead.max_value_bytes is None else min(full, dead.max_value_bytes)
        if tried > 0:
            dead.max_value_bytes = tried // 2
        elif not dead.own_headers_dropped and dead.own_headers():
            dead.own_headers_dropped = "the input's headers were refused by the broker"
        elif dead.key():
            dead.max_key_bytes = len(dead.key()) // 2
        else:
            raise Undeliverable(
                f"the dead letter of {dead.source} cannot be delivered even without its "
                "value, key and headers"
            )

    # -- producing ----------------------------------------------------------------------------
    def send(self, items: Sequence[Item]) -> list[tuple[Item, Any]]:
        """Produce ``items`` and wait for every report: the (item, error) of each failure."""
        failures: list[tuple[Item, Any]] = []
        for item in items:
            self._produce(item, failures)
        self._flush()
        return failures

    def _produce(self, item: Item, failures: list[tuple[Item, Any]]) -> None:
        from confluent_kafka import KafkaException

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append((item, err))
            elif item.output is not None:
                self.on_acked(item.output.source)

        while True:
            try:
                self.producer.produce(
                    item.topic,
                    value=item.value,
                    key=item.key,
                    headers=item.headers or None,
                    on_delivery=on_delivery,
                )
                return
            except BufferError:  # local queue full: let deliveries drain
                self._check_stop()
                self.producer.poll(0.1)
            except KafkaException as exc:  # refused locally (e.g. too large): a failed delivery
                failures.append((item, exc.args[0]))
                return

    def _flush(self) -> None:
        """Wait for every delivery report, for at most ``retry_for_s``.

        A passed stop deadline raises :class:`StopTimeout`. Deliveries that make no progress
        for FLUSH_STALL_S report a retry ("delivery stalled"), so readiness drops even when
        librdkafka reports no broker error. Reports still missing after ``retry_for_s``
        (librdkafka would wait up to ``message.timeout.ms``) raise :class:`DeliveryFailed`:
        the messages still queued are purged and, nothing having been committed, the worker
        reads the batch again."""
        started = self.clock()
        pending, since, reported = len(self.producer), started, False
        while len(self.producer):
            self._check_stop()
            self.beat()
            if self.clock() - started > self.retry_for_s:
                left = len(self.producer)
                self._purge_queued()
                raise DeliveryFailed(
                    f"{left} message(s) without a delivery report after {self.retry_for_s} s "
                    "(delivery_retry_s)"
                )
            self.producer.flush(0.2)
            if len(self.producer) < pending:
                pending, since = len(self.producer), self.clock()
            elif not reported and self.clock() - since > FLUSH_STALL_S:
                self.on_retry("delivery stalled", 0)
                reported = True

    def _purge_queued(self) -> None:
        """Drop the messages librdkafka has not sent yet (their reports say _PURGE_QUEUE);
        messages in flight are left to ``message.timeout.ms``."""
        try:
            self.producer.purge(in_queue=True, in_flight=False, blocking=False)
            self.producer.poll(0)
        except Exception as exc:  # KafkaException: e.g. a transactional producer's state
            log_event(logging.WARNING, "producer_purge_failed", error=str(exc))

    def _check_stop(self) -> None:
        deadline = self.stop_deadline()
        if deadline is not None and self.clock() >= deadline:
            raise StopTimeout(f"{len(self.producer)} message(s) still not delivered")

    def triage(
        self, items: list[Item], failures: list[tuple[Item, Any]]
    ) -> tuple[list[Item], bool]:
        """``items`` with failed ones replaced: (new items, whether to back off first).

        Raises :class:`Undeliverable` or :class:`FatalKafkaError` (see module docstring).
        """
        now = datetime.now(timezone.utc)
        failed = {id(item): error for item, error in failures}
        transient = False
        replaced: list[Item] = []
        seen_dead: set[MessageRef] = set()
        for item in items:
            error = failed.get(id(item))
            if error is None:
                replaced.append(item)
                continue
            kind = error_kind(error)
            log_event(
                logging.WARNING if kind in ("size", "transient") else logging.ERROR,
                "delivery_failed",
                topic=item.topic,
                source=str(item.output.source if item.output else item.dead.source),  # type: ignore[union-attr]
                error=_describe(error),
                kind=kind,
            )
            if kind == "fatal":
                raise FatalKafkaError(_describe(error))
            if kind == "permanent":
                raise Undeliverable(f"{item.topic}: {_describe(error)}")
            if kind == "transient":
                transient = True
                replaced.append(item)
            elif item.output is not None:  # too large for the broker: dead-letter its input
                dead = self._too_large(item.output)
                if dead.source not in seen_dead:
                    seen_dead.add(dead.source)
                    replaced.append(self._dead_item(dead, now))
            else:
                assert item.dead is not None
                replaced.append(self._dead_item(item.dead, now, shrink=True))
        return replaced, transient

    def wait(self, seconds: float) -> None:
        """Sleep for a backoff, in short steps (a stop deadline ends it early)."""
        end = self.clock() + seconds
        while self.clock() < end:
            self._check_stop()
            self.beat()
            self.sleep(min(0.2, max(end - self.clock(), 0.0)))

    @staticmethod
    def delivered(items: Sequence[Item], attempts: int) -> Delivered:
        return Delivered(
            outputs=sum(1 for i in items if i.output is not None),
            dead_letters=[i.dead for i in items if i.dead is not None],
            attempts=attempts,
        )


def next_offsets(messages: Sequence[Any]) -> dict[tuple[str, int], int]:
    """Per (topic, partition): the offset after the last of ``messages``."""
    ends: dict[tuple[str, int], int] = {}
    for m in messages:
        key = (m.topic(), m.partition())
        ends[key] = max(ends.get(key, -1), m.offset() + 1)
    return ends


class AtLeastOnceDelivery(Delivery):
    """Produce, wait for every report, then store and commit the offsets after the batch."""

    def deliver_outputs(
        self, messages: Sequence[Any], result: BatchResult, group_metadata: Any = None
    ) -> Delivered:
        items = self.plan(result)
        pending = items
        started = self.clock()
        attempt = 1
        while True:
            failures = self.send(pending)
            if not failures:
                break
            failed = {id(item) for item, _ in failures}
            new_items, transient = self.triage(pending, failures)
            # Only the failed ones (and their replacements) go again: never the good outputs.
            kept = {id(i) for i in pending if id(i) not in failed}
            items = [i for i in items if id(i) not in failed] + [
                i for i in new_items if id(i) not in kept
            ]
            pending = [i for i in new_items if id(i) not in kept]
            attempt += 1
            if transient:
                if self.clock() - started > self.retry_for_s:
                    raise DeliveryFailed(
                        f"{len(pending)} message(s) still undelivered after {self.retry_for_s} s"
                    )
                self.on_retry("delivery", attempt)
                self.wait(self.backoff.delay(attempt - 1))
        return self.delivered(items, attempt)

    def commit(self, messages: Sequence[Any]) -> None:
        from confluent_kafka import KafkaError, KafkaException, TopicPartition

        ends = next_offsets(messages)
        try:
            self.consumer.store_offsets(
                offsets=[TopicPartition(t, p, o) for (t, p), o in ends.items()]
            )
        except KafkaException as exc:  # partitions revoked meanwhile: their new owner redoes them
            log_event(logging.WARNING, "store_offsets_failed", error=str(exc))
        # Asynchronous: a synchronous commit has no timeout and, when the brokers die during
        # it, blocks the worker (no readiness change, no stop within stop_timeout_s). At
        # least once allows it: a commit that fails (logged by the consumer's on_commit) is
        # retried with the next batch's, and meanwhile a restart re-reads at most that much.
        # Revocation and shutdown still commit synchronously (commit_stored).
        try:
            self.consumer.commit(asynchronous=True)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log_event(logging.WARNING, "commit_failed", error=str(exc))

    def commit_stored(self) -> None:
        from confluent_kafka import KafkaError, KafkaException

        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError._NO_OFFSET:
                return  # nothing new to commit
            # The outputs are delivered; an uncommitted batch is classified again later
            # (at-least-once), and stored offsets go out with the next successful commit.
            log_event(logging.WARNING, "commit_failed", error=str(exc))

    def on_revoke(self) -> None:
        # Between batches everything processed is delivered and stored: commit it.
        self._flush()
        self.commit_stored()

    def finish(self) -> None:
        self._flush()
        self.commit_stored()


class ExactlyOnceDelivery(Delivery):
    """Outputs, dead letters and offsets of a batch in one transaction: :meth:`commit` has
    nothing left to do, the transaction's commit in :meth:`deliver_outputs` is the commit."""

    exactly_once = True

    def deliver_outputs(
        self, messages: Sequence[Any], result: BatchResult, group_metadata: Any = None
    ) -> Delivered:
        from confluent_kafka import KafkaException, TopicPartition

        if group_metadata is None:
            group_metadata = self.consumer.consumer_group_metadata()
        items = self.plan(result)
        ends = next_offsets(messages)
        offsets = [TopicPartition(t, p, o) for (t, p), o in ends.items()]
        started = self.clock()
        attempt = 0
        while True:
            attempt += 1
            backoff = False
            try:
                self.producer.begin_transaction()
                try:
                    failures = self.send(items)
                except StopTimeout:
                    self._abort(timeout_s=1.0)
                    raise
                except DeliveryFailed:  # a flush past its deadline: abort, read it again
                    self._abort()
                    raise
                if failures:
                    self._abort()
                    items, backoff = self.triage(items, failures)
                else:
                    self._retry(
                        lambda: self.producer.send_offsets_to_transaction(
                            offsets, group_metadata, KAFKA_TIMEOUT_S
                        )
                    )
                    self._retry(lambda: self.producer.commit_transaction(KAFKA_TIMEOUT_S))
                    return self.delivered(items, attempt)
            except KafkaException as exc:
                error = exc.args[0]
                if error.fatal() or not error.txn_requires_abort():
                    raise FatalKafkaError(
                        f"transaction failed: {error.name()}: {error.str()}"
                    ) from exc
                log_event(
                    logging.ERROR,
                    "transaction_aborted",
                    error=error.str(),
                    action="aborting; the batch goes again in a new transaction",
                )
                self._abort()
                if attempt >= MAX_TRANSACTION_ATTEMPTS:
                    # e.g. a rebalance fenced this generation: read the batch again
                    raise DeliveryFailed(
                        f"transaction aborted {attempt} times: {error.str()}"
                    ) from exc
                backoff = True
            if backoff:
                if self.clock() - started > self.retry_for_s:
                    raise DeliveryFailed(f"no transaction committed in {self.retry_for_s} s")
                self.on_retry("transaction", attempt)
                self.wait(self.backoff.delay(attempt))

    def _abort(self, timeout_s: float = KAFKA_TIMEOUT_S) -> None:
        self._retry(lambda: self.producer.abort_transaction(timeout_s))

    def _retry(self, call: Callable[[], Any]) -> Any:
        """Call a transactional API, again while librdkafka says the error is retriable."""
        from confluent_kafka import KafkaException

        for attempt in range(10):
            try:
                return call()
            except KafkaException as exc:
                error = exc.args[0]
                if not error.retriable() or attempt == 9:
                    raise
                log_event(logging.WARNING, "kafka_retry", error=error.str(), attempt=attempt + 1)
                self._check_stop()
                self.sleep(0.2 * (attempt + 1))
        return None


__all__ = [
    "AtLeastOnceDelivery",
    "Backoff",
    "Delivered",
    "Delivery",
    "DeliveryFailed",
    "ExactlyOnceDelivery",
    "FatalKafkaError",
    "Item",
    "StopTimeout",
    "Undeliverable",
    "error_kind",
    "message_ref",
    "next_offsets",
]
