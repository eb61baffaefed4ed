"""The Kafka worker behind `astroclf stream`: consume -> decode -> classify -> produce -> commit.

Order at start: structured logging, model load and warm-up (every length bucket), metrics
server, then the subscription, so that no partition is held by a worker that cannot
classify yet. Then micro-batches: up to ``batch_size`` messages or ``max_wait_ms``.

Per micro-batch (:class:`BatchProcessor`, no Kafka I/O, unit-testable):

- each message is decoded with :func:`decode_message`; one that raises (``InputError`` or
  anything else) is dead-lettered;
- the decoded alerts of all messages go through one :func:`classify` call; objects it skips
  (no point in the model's bands, non-finite values) dead-letter their message with the error
  class ``Unclassifiable``; if classify() itself raises, the messages are classified one by
  one and those that still raise are dead-lettered with the exception's class;
- each classified alert becomes one output message, keyed by object id.

Dead letters are the input message unchanged (key, value and its own headers) plus the
``astroclf.*`` headers of :data:`DEAD_LETTER_HEADERS`.

Delivery (DESIGN.md "Stream semantics"):

- at-least-once: offsets are stored and committed (synchronously) only after every output
  and dead letter of the batch was acknowledged; if any delivery fails, nothing is committed
  and the consumer seeks back to the start of the batch, which is then retried;
- exactly-once: outputs, dead letters and the consumer offsets go into one transaction per
  batch; on an abortable error the transaction is aborted and the consumer rewound to its
  last committed offsets.

A rebalance commits finished work in ``on_revoke`` (at-least-once); messages fetched in the
same ``consume()`` call as a revocation are not processed but re-read from their offsets.
SIGTERM/SIGINT finish the batch in hand, flush, commit, close the consumer and return 0.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from astro_classifier.data.lightcurve import LightCurveBatch
from astro_classifier.errors import InputError, ModelError
from astro_classifier.inference.classify import classify
from astro_classifier.inference.model import LoadedModel
from astro_classifier.stream.codecs import (
    MessageRef,
    classification_records,
    decode_message,
    encode_classification,
    schema_source,
)
from astro_classifier.stream.config import StreamSettings
from astro_classifier.stream.metrics import LoopHealth, MetricsServer, StreamMetrics

log = logging.getLogger("astro_classifier.stream")

UNCLASSIFIABLE = "Unclassifiable"
H_ERROR_CLASS = "astroclf.error.class"
H_ERROR_MESSAGE = "astroclf.error.message"
H_SOURCE_TOPIC = "astroclf.source.topic"
H_SOURCE_PARTITION = "astroclf.source.partition"
H_SOURCE_OFFSET = "astroclf.source.offset"
H_ERROR_TIME = "astroclf.error.time"
DEAD_LETTER_HEADERS = (
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_SOURCE_TOPIC,
    H_SOURCE_PARTITION,
    H_SOURCE_OFFSET,
    H_ERROR_TIME,
)
MAX_ERROR_MESSAGE_CHARS = 2000
PROGRESS_LOG_INTERVAL_S = 30.0
RETRY_BACKOFF_S = 1.0
KAFKA_TIMEOUT_S = 30.0


# -- structured logging ---------------------------------------------------------------------
class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``event`` and the event's fields.

    Records from :func:`log_event` carry their fields; any other record (a library warning)
    becomes ``event: "log"`` with ``logger`` and ``message``.
    """

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
        }
        fields = getattr(record, "fields", None)
        if fields is not None:
            doc["event"] = record.msg
            doc.update(fields)
        else:
            doc["event"] = "log"
            doc["logger"] = record.name
            doc["message"] = record.getMessage()
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


_HANDLER_MARK = "_astroclf_json_handler"


def configure_logging(level: str) -> None:
    """Send every log record to stderr as JSON lines (replacing an earlier call's handler)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level)


def log_event(level: int, event: str, **fields: Any) -> None:
    log.log(level, event, extra={"fields": fields})


# -- one micro-batch, without Kafka I/O -----------------------------------------------------
@dataclasses.dataclass
class Output:
    """One classification message for the output topic."""

    key: bytes
    value: bytes
    source: MessageRef


@dataclasses.dataclass
class DeadLetter:
    """An input message that goes to the dead-letter topic, and why."""

    message: Any  # confluent_kafka.Message (or anything with its accessors)
    error_class: str
    error_message: str

    @property
    def source(self) -> MessageRef:
        return message_ref(self.message)

    def headers(self, now: datetime | None = None) -> list[tuple[str, bytes]]:
        """The input's own headers followed by astroclf's (see :data:`DEAD_LETTER_HEADERS`)."""
        now = now or datetime.now(timezone.utc)
        own = list(self.message.headers() or [])
        return [
            *own,
            (H_ERROR_CLASS, self.error_class.encode()),
            (H_ERROR_MESSAGE, self.error_message[:MAX_ERROR_MESSAGE_CHARS].encode()),
            (H_SOURCE_TOPIC, self.message.topic().encode()),
            (H_SOURCE_PARTITION, str(self.message.partition()).encode()),
            (H_SOURCE_OFFSET, str(self.message.offset()).encode()),
            (H_ERROR_TIME, now.isoformat(timespec="milliseconds").encode()),
        ]


@dataclasses.dataclass
class BatchResult:
    outputs: list[Output]
    dead_letters: list[DeadLetter]
    decode_seconds: float
    inference_seconds: float  # classify(): features and model
    features_seconds: float  # the light-curve feature part of inference_seconds


def message_ref(message: Any) -> MessageRef:
    kind, timestamp = message.timestamp()
    # Kafka's TIMESTAMP_NOT_AVAILABLE is type 0; -1 then says "unknown" in the output.
    return MessageRef(
        message.topic(), message.partition(), message.offset(), timestamp if kind else -1
    )


class BatchProcessor:
    """Messages of one micro-batch -> output messages and dead letters (no Kafka I/O)."""

    def __init__(
        self, model: LoadedModel, input_format: str, output_format: str, schemas: Any = None
    ) -> None:
        self.model = model
        self.input_format = input_format
        self.output_format = output_format
        self.schemas = schemas
        self._features_seconds = 0.0

    def process(self, messages: Sequence[Any]) -> BatchResult:
        dead: dict[int, DeadLetter] = {}
        decoded: list[tuple[int, LightCurveBatch]] = []
        started = time.perf_counter()
        for i, message in enumerate(messages):
            source = str(message_ref(message))
            try:
                decoded.append(
                    (i, decode_message(message.value(), self.input_format, self.schemas, source))
                )
            except Exception as exc:  # any failure to decode is the message's fault
                dead[i] = DeadLetter(message, type(exc).__name__, str(exc))
        decode_seconds = time.perf_counter() - started

        started = time.perf_counter()
        self._features_seconds = 0.0
        rows: list[tuple[int, pa.Table]] = []  # (message index, its classified alerts)
        if decoded:
            self._classify(decoded, messages, rows, dead)
        inference_seconds = time.perf_counter() - started

        timings = {
            "classifiedTimestampMs": int(time.time() * 1000),
            "decodeMs": decode_seconds * 1000,
            "inferenceMs": inference_seconds * 1000,
            "batchSize": len(messages),
        }
        outputs: list[Output] = []
        for i, table in sorted(rows, key=lambda item: item[0]):
            ref = message_ref(messages[i])
            try:
                outputs += [
                    Output(
                        key=record["objectId"].encode(),
                        value=encode_classification(record, self.output_format),
                        source=ref,
                    )
                    for record in classification_records(table, [ref] * table.num_rows, timings)
                ]
            except Exception as exc:  # a record the output schema refuses: never stop
                dead[i] = DeadLetter(messages[i], type(exc).__name__, str(exc))
        return BatchResult(
            outputs=outputs,
            dead_letters=[dead[i] for i in sorted(dead)],
            decode_seconds=decode_seconds,
            inference_seconds=inference_seconds,
            features_seconds=self._features_seconds,
        )

    def _classify(
        self,
        decoded: list[tuple[int, LightCurveBatch]],
        messages: Sequence[Any],
        rows: list[tuple[int, pa.Table]],
        dead: dict[int, DeadLetter],
    ) -> None:
        """One classify() call for all ``decoded`` messages; one per message if it fails."""
        try:
            per_message = self._classify_together(decoded, dead, messages)
        except Exception as exc:
            if len(decoded) == 1:
                i = decoded[0][0]
                log_event(
                    logging.ERROR,
                    "classify_failed",
                    source=str(message_ref(messages[i])),
                    error_class=type(exc).__name__,
                    error=str(exc),
                )
                dead[i] = DeadLetter(messages[i], type(exc).__name__, str(exc))
                return
            log_event(
                logging.WARNING,
                "classify_batch_failed",
                messages=len(decoded),
                error_class=type(exc).__name__,
                error=str(exc),
                retry="one message at a time",
            )
            for item in decoded:
                self._classify([item], messages, rows, dead)
            return
        rows.extend(per_message)

    def _classify_together(
        self,
        decoded: list[tuple[int, LightCurveBatch]],
        dead: dict[int, DeadLetter],
        messages: Sequence[Any],
    ) -> list[tuple[int, pa.Table]]:
        combined = LightCurveBatch.concat([batch for _, batch in decoded])
        owner = np.concatenate(
            [np.full(len(batch), i, dtype=np.int64) for i, batch in decoded]
        )  # (N,) message index of each object
        result = classify(combined, self.model)
        self._features_seconds += result.timings.features

        skipped: dict[int, list[str]] = defaultdict(list)
        for reason, positions in result.skipped_rows.items():
            for k in positions:
                skipped[int(owner[k])].append(f"object {combined.object_id[k]}: {reason}")
        per_message: list[tuple[int, pa.Table]] = []
        row_owner = owner[result.rows]
        for i in np.unique(row_owner):
            per_message.append((int(i), result.table.filter(pa.array(row_owner == i))))
        for i, reasons in skipped.items():
            dead[i] = DeadLetter(messages[i], UNCLASSIFIABLE, "; ".join(reasons))
        return per_message


# -- the worker -----------------------------------------------------------------------------
class FatalKafkaError(RuntimeError):
    """librdkafka reported an error the worker cannot recover from (e.g. producer fenced)."""


class StreamWorker:
    """`astroclf stream`: see the module docstring. ``run()`` returns the exit code."""

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings
        self.metrics = StreamMetrics()
        self.health = LoopHealth(stall_after_s=max(60.0, 10 * settings.max_wait_ms / 1000))
        self.metrics_server: MetricsServer | None = None
        self.exactly_once = settings.delivery == "exactly-once"
        self._ready = False
        self._stop_signal: int | None = None
        self._fatal: str | None = None
        self._revoked_during_consume = False
        self._consumer: Any = None
        self._producer: Any = None
        self._processor: BatchProcessor | None = None
        self._last_progress_log = time.monotonic()
        self._totals: dict[str, int] = defaultdict(int)

    # -- public ---------------------------------------------------------------------------
    @property
    def metrics_port(self) -> int | None:
        return self.metrics_server.port if self.metrics_server is not None else None

    @property
    def ready(self) -> bool:
        return self._ready

    def request_stop(self, signum: int | None = None) -> None:
        """Finish the batch in hand, then stop (what SIGTERM and SIGINT do)."""
        self._stop_signal = signum if signum is not None else 0

    def run(self) -> int:
        settings = self.settings
        configure_logging(settings.log_level)
        from astro_classifier import __version__

        log_event(
            logging.INFO,
            "worker_starting",
            version=__version__,
            host=socket.gethostname(),
            settings=settings.redacted(),
        )
        restore_signals = self._install_signal_handlers()
        try:
            return self._run()
        except FatalKafkaError as exc:
            log_event(logging.ERROR, "worker_failed", error=str(exc))
            return 1
        except Exception as exc:  # a bug: say so in the log, exit non-zero
            log.error("worker_crashed", exc_info=exc, extra={"fields": {"error": str(exc)}})
            return 1
        finally:
            self._ready = False
            self.metrics.ready.set(0)
            self.health.stop()
            if self._consumer is not None:
                self._close_consumer()
            if self.metrics_server is not None:
                self.metrics_server.stop()
            restore_signals()

    # -- start-up -------------------------------------------------------------------------
    def _run(self) -> int:
        settings = self.settings
        try:
            started = time.perf_counter()
            model = LoadedModel.load(settings.model, settings.provider)
            model.warm_up()
            schemas = (
                schema_source(settings.schema_dir, settings.schema_registry_url)
                if settings.input_format == "rubin-wire"
                else None
            )
        except (ModelError, InputError, OSError, ValueError) as exc:
            log_event(logging.ERROR, "model_load_failed", error=str(exc))
            return 1
        meta = model.metadata
        log_event(
            logging.INFO,
            "model_ready",
            model=meta.name,
            model_version=meta.version,
            providers=model.providers,
            length_buckets=meta.length_buckets,
            seconds=round(time.perf_counter() - started, 3),
        )
        self._processor = BatchProcessor(
            model, settings.input_format, settings.output_format, schemas
        )
        if self._stop_signal is not None:
            log_event(logging.INFO, "worker_stopped", reason="signal before subscription")
            return 0

        if settings.metrics_port is not None:
            try:
                self.metrics_server = MetricsServer(
                    self.metrics,
                    settings.metrics_host,
                    settings.metrics_port,
                    alive=self.health.alive,
                    ready=lambda: self._ready,
                ).start()
            except OSError as exc:
                log_event(
                    logging.ERROR,
                    "metrics_server_failed",
                    host=settings.metrics_host,
                    port=settings.metrics_port,
                    error=str(exc),
                )
                return 1
            log_event(
                logging.INFO,
                "metrics_listening",
                host=self.metrics_server.host,
                port=self.metrics_server.port,
            )

        self._producer = self._make_producer()
        self._consumer = self._make_consumer()
        self._consumer.subscribe(
            list(settings.input_topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._ready = True
        self.metrics.ready.set(1)
        log_event(
            logging.INFO,
            "subscribed",
            topics=list(settings.input_topics),
            group_id=settings.group_id,
            delivery=settings.delivery,
        )
        self._loop()
        self._finish()
        log_event(
            logging.INFO,
            "worker_stopped",
            reason="signal" if self._stop_signal else "stop requested",
            signal=self._stop_signal,
            **self._totals,
        )
        return 0

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None  # signals reach the main thread only; request_stop() instead
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

        def handler(signum: int, _frame: Any) -> None:
            self.request_stop(signum)

        for s in previous:
            signal.signal(s, handler)

        def restore() -> None:
            for s, h in previous.items():
                signal.signal(s, h)

        return restore

    def _common_conf(self) -> dict[str, Any]:
        return {
            "logger": logging.getLogger("astro_classifier.stream.librdkafka"),
            "error_cb": self._on_kafka_error,
        }

    def _make_producer(self) -> Any:
        from confluent_kafka import Producer

        settings = self.settings
        conf: dict[str, Any] = {"linger.ms": 5, "acks": "all", "enable.idempotence": True}
        conf.update(settings.librdkafka())
        conf.update(self._common_conf())
        if self.exactly_once:
            conf["transactional.id"] = settings.effective_transactional_id()
        producer = Producer(conf)
        if self.exactly_once:
            # Fences an earlier incarnation with the same id and aborts its open transaction.
            producer.init_transactions(KAFKA_TIMEOUT_S)
            log_event(
                logging.INFO,
                "transactions_initialised",
                transactional_id=settings.effective_transactional_id(),
            )
        self._warn_missing_topics(producer)
        return producer

    def _make_consumer(self) -> Any:
        from confluent_kafka import Consumer

        settings = self.settings
        conf: dict[str, Any] = {
            "auto.offset.reset": "earliest",
            "heartbeat.interval.ms": min(3000, settings.session_timeout_ms // 3),
        }
        if self.metrics_server is not None:
            conf["statistics.interval.ms"] = 5000
        conf.update(settings.librdkafka())
        conf.update(self._common_conf())
        conf.update(
            {
                "group.id": settings.group_id,
                "session.timeout.ms": settings.session_timeout_ms,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
            }
        )
        if self.exactly_once:
            conf["isolation.level"] = "read_committed"
        if self.metrics_server is not None:
            conf["stats_cb"] = self._on_stats
        return Consumer(conf)

    def _warn_missing_topics(self, producer: Any) -> None:
        settings = self.settings
        try:
            topics = producer.list_topics(timeout=10).topics
        except Exception as exc:
            log_event(
                logging.WARNING,
                "kafka_unreachable",
                bootstrap_servers=settings.bootstrap_servers,
                error=str(exc),
            )
            return
        for name in (*settings.input_topics, settings.output_topic, settings.dead_letter_topic):
            if name not in topics:
                log_event(
                    logging.WARNING,
                    "topic_missing",
                    topic=name,
                    hint="create it, or rely on the broker's auto-creation",
                )

    # -- callbacks (run inside consume/poll/flush, on this thread) -------------------------
    def _on_kafka_error(self, error: Any) -> None:
        fatal = error.fatal()
        log_event(
            logging.ERROR if fatal else logging.WARNING,
            "kafka_error",
            code=error.name(),
            error=error.str(),
            fatal=fatal,
        )
        if fatal:
            self._fatal = f"{error.name()}: {error.str()}"

    def _on_stats(self, stats_json: str) -> None:
        try:
            self.metrics.update_from_librdkafka_stats(stats_json)
        except Exception as exc:  # never let a statistics document stop the worker
            log_event(logging.WARNING, "stats_unreadable", error=str(exc))

    def _on_assign(self, _consumer: Any, partitions: list) -> None:
        log_event(logging.INFO, "partitions_assigned", partitions=_names(partitions))

    def _on_revoke(self, consumer: Any, partitions: list) -> None:
        self._revoked_during_consume = True
        log_event(logging.INFO, "partitions_revoked", partitions=_names(partitions))
        if not self.exactly_once:
            # Between batches everything processed is stored; make sure it is committed.
            self._producer.flush(KAFKA_TIMEOUT_S)
            self._commit_stored(consumer)
        # Exactly-once: no transaction is open between batches, nothing to do.
        self.metrics.forget_partitions([(p.topic, p.partition) for p in partitions])

    def _on_lost(self, _consumer: Any, partitions: list) -> None:
        self._revoked_during_consume = True
        log_event(
            logging.WARNING,
            "partitions_lost",
            partitions=_names(partitions),
            hint="another member may re-process their uncommitted messages",
        )
        self.metrics.forget_partitions([(p.topic, p.partition) for p in partitions])

    # -- the loop -------------------------------------------------------------------------
    def _loop(self) -> None:
        from confluent_kafka import KafkaError

        settings = self.settings
        timeout_s = settings.max_wait_ms / 1000
        while self._stop_signal is None:
            self.health.beat()
            if self._fatal:
                raise FatalKafkaError(self._fatal)
            self._revoked_during_consume = False
            messages = self._consumer.consume(num_messages=settings.batch_size, timeout=timeout_s)
            records = []
            for message in messages:
                error = message.error()
                if error is None:
                    records.append(message)
                elif error.code() != KafkaError._PARTITION_EOF:
                    log_event(
                        logging.ERROR if error.fatal() else logging.WARNING,
                        "consume_error",
                        code=error.name(),
                        error=error.str(),
                        topic=message.topic(),
                        partition=message.partition(),
                    )
                    if error.fatal():
                        raise FatalKafkaError(f"{error.name()}: {error.str()}")
            if records and self._revoked_during_consume:
                self._reread(records, "fetched across a rebalance")
                continue
            if records:
                self.metrics.consumed.inc(len(records))
                self._totals["consumed"] += len(records)
                self._handle_batch(records)
            self._log_progress()

    def _handle_batch(self, messages: list) -> None:
        assert self._processor is not None
        result = self._processor.process(messages)
        for dead in result.dead_letters:
            log_event(
                logging.WARNING,
                "dead_letter",
                source=str(dead.source),
                error_class=dead.error_class,
                error=dead.error_message[:MAX_ERROR_MESSAGE_CHARS],
            )
        started = time.perf_counter()
        if self.exactly_once:
            done = self._deliver_in_transaction(messages, result)
        else:
            done = self._deliver_then_commit(messages, result)
        if not done:
            return
        deliver_seconds = time.perf_counter() - started
        m = self.metrics
        m.batches.inc()
        m.batch_size.observe(len(messages))
        m.decode_seconds.observe(result.decode_seconds)
        m.inference_seconds.observe(result.inference_seconds)
        m.features_seconds.observe(result.features_seconds)
        m.deliver_seconds.observe(deliver_seconds)
        m.produced.inc(len(result.outputs))
        for dead in result.dead_letters:
            m.dead_lettered.labels(reason=dead.error_class).inc()
        self._totals["produced"] += len(result.outputs)
        self._totals["dead_lettered"] += len(result.dead_letters)
        self._totals["batches"] += 1
        log_event(
            logging.DEBUG,
            "batch_done",
            messages=len(messages),
            classifications=len(result.outputs),
            dead_letters=len(result.dead_letters),
            decode_ms=round(result.decode_seconds * 1000, 2),
            inference_ms=round(result.inference_seconds * 1000, 2),
        )

    def _produce_all(self, result: BatchResult, failures: list[str]) -> None:
        """Hand every output and dead letter of the batch to the producer."""
        settings = self.settings

        def acked(source: MessageRef) -> Callable[[Any, Any], None]:
            def on_delivery(err: Any, _msg: Any) -> None:
                if err is not None:
                    failures.append(f"{settings.output_topic}: {err}")
                elif source.timestamp_ms >= 0:
                    latency = time.time() - source.timestamp_ms / 1000
                    self.metrics.end_to_end_seconds.observe(max(latency, 0.0))

            return on_delivery

        def dead_letter_acked(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(f"{settings.dead_letter_topic}: {err}")

        now = datetime.now(timezone.utc)
        for out in result.outputs:
            self._produce(settings.output_topic, out.key, out.value, None, acked(out.source))
        for dead in result.dead_letters:
            message = dead.message
            self._produce(
                settings.dead_letter_topic,
                message.key(),
                message.value(),
                dead.headers(now),
                dead_letter_acked,
            )

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None,
        on_delivery: Callable[[Any, Any], None],
    ) -> None:
        from confluent_kafka import KafkaException

        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=on_delivery
                )
                return
            except BufferError:  # local queue full: let deliveries drain
                self._producer.poll(0.1)
            except KafkaException as exc:  # e.g. message too large: a delivery failure
                on_delivery(exc.args[0], None)
                return

    def _flush(self) -> int:
        """Wait for every delivery report; returns the messages still not reported."""
        remaining = len(self._producer)
        deadline = time.monotonic() + 10 * KAFKA_TIMEOUT_S
        while remaining and time.monotonic() < deadline:
            self.health.beat()
            remaining = self._producer.flush(1.0)
        return remaining

    # at-least-once ----------------------------------------------------------------------
    def _deliver_then_commit(self, messages: list, result: BatchResult) -> bool:
        failures: list[str] = []
        self._produce_all(result, failures)
        remaining = self._flush()
        if remaining or failures:
            log_event(
                logging.ERROR,
                "delivery_failed",
                failed=len(failures),
                undelivered=remaining,
                first_error=failures[0] if failures else "flush timed out",
                action="not committing; the batch will be retried",
            )
            self._reread(messages, "delivery failed")
            time.sleep(RETRY_BACKOFF_S)
            return False
        from confluent_kafka import KafkaException, TopicPartition

        ends = _next_offsets(messages)
        try:
            self._consumer.store_offsets(
                offsets=[TopicPartition(t, p, o) for (t, p), o in ends.items()]
            )
        except KafkaException as exc:  # partitions revoked meanwhile: their new owner redoes them
            log_event(logging.WARNING, "store_offsets_failed", error=str(exc))
        self._commit_stored(self._consumer)
        return True

    def _commit_stored(self, consumer: Any) -> None:
        from confluent_kafka import KafkaError, KafkaException

        try:
            consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError._NO_OFFSET:
                return  # nothing new to commit
            # The outputs are delivered; an uncommitted batch is classified again later
            # (at-least-once), and stored offsets go out with the next successful commit.
            log_event(logging.WARNING, "commit_failed", error=str(exc))

    # exactly-once -----------------------------------------------------------------------
    def _deliver_in_transaction(self, messages: list, result: BatchResult) -> bool:
        from confluent_kafka import KafkaException

        producer, consumer = self._producer, self._consumer
        failures: list[str] = []
        try:
            producer.begin_transaction()
            self._produce_all(result, failures)
            positions = [tp for tp in consumer.position(consumer.assignment()) if tp.offset >= 0]
            self._retry(
                lambda: producer.send_offsets_to_transaction(
                    positions, consumer.consumer_group_metadata(), KAFKA_TIMEOUT_S
                )
            )
            self._retry(lambda: producer.commit_transaction(KAFKA_TIMEOUT_S))
            return True
        except KafkaException as exc:
            error = exc.args[0]
            if error.fatal() or not error.txn_requires_abort():
                raise FatalKafkaError(f"transaction failed: {error.name()}: {error.str()}") from exc
            log_event(
                logging.ERROR,
                "transaction_aborted",
                error=error.str(),
                failed_deliveries=failures[:3],
                action="aborting; rewinding to the committed offsets",
            )
            self._retry(lambda: producer.abort_transaction(KAFKA_TIMEOUT_S))
            self._rewind_to_committed()
            time.sleep(RETRY_BACKOFF_S)
            return False

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
                time.sleep(0.2 * (attempt + 1))
        return None

    def _rewind_to_committed(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING

        consumer = self._consumer
        for tp in consumer.committed(consumer.assignment(), timeout=KAFKA_TIMEOUT_S):
            if tp.offset < 0:
                tp.offset = OFFSET_BEGINNING
            self._seek(tp)

    # shared -----------------------------------------------------------------------------
    def _reread(self, messages: list, why: str) -> None:
        """Seek back to the first of ``messages`` in each partition still assigned."""
        from confluent_kafka import TopicPartition

        assigned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        starts: dict[tuple[str, int], int] = {}
        for m in messages:
            key = (m.topic(), m.partition())
            starts[key] = min(starts.get(key, m.offset()), m.offset())
        for (topic, partition), offset in starts.items():
            if (topic, partition) in assigned:
                self._seek(TopicPartition(topic, partition, offset))
        log_event(logging.INFO, "messages_reread", messages=len(messages), why=why)

    def _seek(self, tp: Any) -> None:
        from confluent_kafka import KafkaException

        try:
            self._consumer.seek(tp)
        except KafkaException as exc:
            # The partition's fetcher is (re)starting: it begins at the committed offset.
            log_event(
                logging.WARNING,
                "seek_failed",
                topic=tp.topic,
                partition=tp.partition,
                offset=tp.offset,
                error=str(exc),
            )

    def _finish(self) -> None:
        """After the loop: everything delivered and committed, then leave the group."""
        remaining = self._flush()
        if remaining:
            log_event(logging.ERROR, "flush_incomplete", undelivered=remaining)
        if not self.exactly_once:
            self._commit_stored(self._consumer)
        self._close_consumer()

    def _close_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        try:
            consumer.close()  # leaves the group now: its partitions move without waiting
        except Exception as exc:
            log_event(logging.WARNING, "consumer_close_failed", error=str(exc))

    def _log_progress(self) -> None:
        now = time.monotonic()
        if now - self._last_progress_log >= PROGRESS_LOG_INTERVAL_S:
            self._last_progress_log = now
            log_event(logging.INFO, "progress", **self._totals)


def _next_offsets(messages: Sequence[Any]) -> dict[tuple[str, int], int]:
    """Per (topic, partition): the offset after the last of ``messages``."""
    ends: dict[tuple[str, int], int] = {}
    for m in messages:
        key = (m.topic(), m.partition())
        ends[key] = max(ends.get(key, -1), m.offset() + 1)
    return ends


def _names(partitions: list) -> list[str]:
    return [f"{p.topic}[{p.partition}]" for p in partitions]
