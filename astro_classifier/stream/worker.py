"""The Kafka worker behind `astroclf stream`: consume -> decode -> classify -> produce -> commit.

The pieces, each in its own module:

- :mod:`~astro_classifier.stream.logs`: one JSON object per log line;
- :mod:`~astro_classifier.stream.batch`: :class:`BatchProcessor`, one micro-batch of messages
  -> outputs and dead letters, no Kafka I/O;
- :mod:`~astro_classifier.stream.delivery`: :class:`AtLeastOnceDelivery` and
  :class:`ExactlyOnceDelivery`, produce a batch and commit its offsets;
- :mod:`~astro_classifier.stream.pipeline`: :class:`Pipeline`, which classifies one batch
  and delivers the previous one on two threads while this one consumes and decodes the next;
- this module: start-up checks, readiness, signals and the short loop of :class:`StreamWorker`.

The loop, on the consuming thread: collect the batches the pipeline has finished (oldest
first; when it is full, wait for the oldest), consume a micro-batch, decode it, submit it.
Batches are delivered and committed in the order they were consumed; ``pipeline: false``
runs every stage inline, one batch at a time (the serial worker).

Start-up, in order: structured logging, model load and warm-up (every length bucket), the
metrics server, a reachability check of Kafka (bootstrap reachable, authentication accepted,
input topics present, all within ``startup_timeout_s``; otherwise exit 1 with the reason),
then the subscription, so that no partition is held by a worker that cannot classify yet.

Error policy:

- bad input (:class:`InputError`, objects classify() skips, an output that cannot be encoded)
  -> dead letter;
- :class:`TransientError` (Schema Registry down) or a Kafka delivery failure that may heal
  -> the batch is retried with exponential backoff, never dead-lettered, never committed past;
  ``/ready`` says 503 meanwhile;
- anything else (a bug, :class:`ModelError`, an ONNX Runtime fault) -> the batch is read again;
  after ``max_consecutive_failures`` such batches in a row the worker exits 1 without
  committing them;
- a message that cannot be delivered even cut to fit, a permanent or fatal Kafka error ->
  exit 1 without committing.

``/ready`` is 200 only while partitions are assigned, the brokers are reachable,
authentication succeeded and no retry is under way. SIGTERM/SIGINT stop consuming, finish
the batches in hand (the pipeline drains), commit and exit 0; if deliveries are stuck, the
worker exits 1 within ``stop_timeout_s`` without committing what was not delivered. A
failed batch cancels the batches consumed after it, and all of them are read again. A
revocation drains the pipeline and commits finished work before the partitions go; a loss
cancels the batches not yet started; messages fetched in the same ``consume()`` call as a
revocation are not processed but re-read from their offsets.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from astro_classifier import __version__
from astro_classifier.core.errors import InputError, ModelError, TransientError
from astro_classifier.inference.model import LoadedModel
from astro_classifier.stream.batch import (
    DEAD_LETTER_HEADERS,
    MAX_ERROR_MESSAGE_CHARS,
    UNCLASSIFIABLE,
    BatchProcessor,
    BatchResult,
    DeadLetter,
    Output,
    release_headers,
)
from astro_classifier.stream.codecs import schema_source
from astro_classifier.stream.config import (
    StreamSettings,
    TransactionalIdClaim,
    claim_transactional_id,
)
from astro_classifier.stream.delivery import (
    AtLeastOnceDelivery,
    Backoff,
    Delivery,
    DeliveryFailed,
    ExactlyOnceDelivery,
    FatalKafkaError,
    StopTimeout,
    Undeliverable,
)
from astro_classifier.stream.logs import JsonLogFormatter, configure_logging, log_event
from astro_classifier.stream.metrics import LoopHealth, MetricsServer, StreamMetrics
from astro_classifier.stream.pipeline import Cancelled, InFlight, Outcome, Pipeline

__all__ = [
    "DEAD_LETTER_HEADERS",
    "UNCLASSIFIABLE",
    "BatchProcessor",
    "BatchResult",
    "DeadLetter",
    "JsonLogFormatter",
    "Output",
    "StartupError",
    "StreamWorker",
    "configure_logging",
    "log_event",
]

log = logging.getLogger("astro_classifier.stream")

PROGRESS_LOG_INTERVAL_S = 30.0
BROKER_PROBE_INTERVAL_S = 1.0
# While nothing is fetched for this long, one metadata request checks that the brokers still
# answer: librdkafka does not always report a broker that died while the worker was idle.
IDLE_CHECK_S = 3.0
BROKER_DOWN_ERRORS = frozenset({"_ALL_BROKERS_DOWN", "_TRANSPORT", "_RESOLVE"})
AUTH_ERRORS = frozenset({"_AUTHENTICATION", "SASL_AUTHENTICATION_FAILED", "_SSL"})


class StartupError(RuntimeError):
    """Kafka is not usable as configured (unreachable, authentication, missing topic)."""


class KafkaConfigError(StartupError):
    """librdkafka refused a property of the configuration (unknown name, invalid value)."""


def _on_commit(error: Any, partitions: list) -> None:
    """A failed asynchronous commit is logged; the next batch's commit carries its offsets."""
    from confluent_kafka import KafkaError

    if error is not None and error.code() != KafkaError._NO_OFFSET:
        log_event(logging.WARNING, "commit_failed", error=str(error), partitions=_names(partitions))


class StreamWorker:
    """`astroclf stream`: see the module docstring. ``run()`` returns the exit code."""

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings
        self.metrics = StreamMetrics()
        self.health = LoopHealth(stall_after_s=max(60.0, 10 * settings.max_wait_ms / 1000))
        self.metrics_server: MetricsServer | None = None
        self.exactly_once = settings.delivery == "exactly-once"
        # Why the worker is not ready (empty: ready). Keys: starting, assignment, broker,
        # authentication, retrying.
        self._not_ready: dict[str, str] = {"starting": "model not loaded yet"}
        self._stop_signal: int | None = None
        self._stop_deadline: float | None = None
        self._watchdog: threading.Timer | None = None
        self._fatal: str | None = None
        self._revoked_during_consume = False
        self._assigned: set[tuple[str, int]] = set()
        self._next_probe = 0.0
        self._last_answer = time.monotonic()  # last fetch or metadata answer from the brokers
        self._consumer: Any = None
        self._producer: Any = None
        self._transactional_id: TransactionalIdClaim | None = None  # exactly-once only
        self._delivery: Delivery | None = None
        self._processor: BatchProcessor | None = None
        self._pipeline = Pipeline(lambda *_: None, lambda *_: None, overlap=False)  # set in _run
        self._failures = 0
        self._transient = 0
        self._ready_lock = threading.Lock()  # deliver-thread callbacks change readiness too
        self._last_progress_log = time.monotonic()
        # Every key present from the start: the deliver thread adds to the counts of the
        # batches it delivered while the consuming thread reads them for its log lines.
        self._totals: dict[str, int] = dict.fromkeys(
            ("consumed", "produced", "dead_lettered", "points_dropped", "batches"), 0
        )
        self._backoff = Backoff(max_s=settings.retry_backoff_max_s)

    # -- public ---------------------------------------------------------------------------
    @property
    def metrics_port(self) -> int | None:
        return self.metrics_server.port if self.metrics_server is not None else None

    @property
    def ready(self) -> bool:
        return not self._not_ready

    def request_stop(self, signum: int | None = None) -> None:
        """Finish the batches in hand, then stop (what SIGTERM and SIGINT do); exit within
        ``stop_timeout_s`` whatever happens."""
        if self._stop_signal is not None:
            return
        self._stop_signal = signum if signum is not None else 0
        timeout = self.settings.stop_timeout_s
        # Cooperative deadline for flushes and retries; the watchdog is the guarantee.
        self._stop_deadline = time.monotonic() + max(timeout - 1.0, timeout * 0.75)
        self._watchdog = threading.Timer(timeout, self._stop_timed_out)
        self._watchdog.daemon = True
        self._watchdog.start()

    def run(self) -> int:
        settings = self.settings
        configure_logging(settings.log_level)

        log_event(
            logging.INFO,
            "worker_starting",
            version=__version__,
            host=socket.gethostname(),
            settings=settings.redacted(),
        )
        secrets = settings.secret_kafka_properties()
        if secrets:
            log_event(
                logging.WARNING,
                "secret_in_kafka_map",
                properties=secrets,
                hint="redacted from logs; move them to kafka_secrets "
                "(ASTROCLF_KAFKA_SECRETS__<NAME>), which are never shown",
            )
        restore_signals = self._install_signal_handlers()
        code = 1
        try:
            code = self._run()
        except KafkaConfigError as exc:
            log_event(logging.ERROR, "config_invalid", error=str(exc))
        except StartupError as exc:
            log_event(logging.ERROR, "startup_failed", error=str(exc))
        except (FatalKafkaError, Undeliverable, DeliveryFailed) as exc:
            log_event(
                logging.ERROR,
                "worker_failed",
                error_class=type(exc).__name__,
                error=str(exc),
                committed="nothing past the last delivered batch",
            )
        except StopTimeout as exc:
            log_event(
                logging.ERROR,
                "stop_timeout",
                error=str(exc),
                stop_timeout_s=settings.stop_timeout_s,
                committed="nothing past the last delivered batch",
            )
        except Exception as exc:  # a bug: say so in the log, exit non-zero
            log_event(logging.ERROR, "worker_crashed", exc_info=exc, error=str(exc))
        finally:
            self._set_not_ready("stopped", "the worker is stopping")
            self.health.stop()
            self._stop_pipeline()
            self._release_kafka(clean=code == 0)
            if self._transactional_id is not None:  # after the producer is closed
                self._transactional_id.release()
            if self._processor is not None:
                self._processor.close()
            if self.metrics_server is not None:
                self.metrics_server.stop()
            restore_signals()
            if self._watchdog is not None:
                self._watchdog.cancel()
        return code

    # -- readiness ------------------------------------------------------------------------
    def _set_not_ready(self, key: str, why: str | None) -> None:
        """``why`` None clears the reason ``key``. Called from the consuming thread and,
        through Kafka callbacks served while producing, from the deliver thread."""
        with self._ready_lock:
            before = self.ready
            if why is None:
                self._not_ready.pop(key, None)
            else:
                self._not_ready[key] = why
            if self.ready != before:
                self.metrics.ready.set(1 if self.ready else 0)
                log_event(
                    logging.INFO if self.ready else logging.WARNING,
                    "ready" if self.ready else "not_ready",
                    reasons=dict(self._not_ready),
                )

    # -- start-up -------------------------------------------------------------------------
    def _run(self) -> int:
        settings = self.settings
        self._check_kafka_config()
        try:
            started = time.perf_counter()
            model = LoadedModel.load(
                settings.model, settings.provider, precision=settings.precision
            )
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
            precision=meta.precision,
            model_file=str(model.path),
            length_buckets=meta.length_buckets,
            seconds=round(time.perf_counter() - started, 3),
        )
        self._processor = BatchProcessor(
            model,
            settings.input_format,
            settings.output_format,
            schemas,
            decode_workers=settings.decode_workers,
        )
        if settings.decode_workers:
            started = time.perf_counter()
            try:
                self._processor.start()
            except Exception as exc:  # cannot start processes: resources, a broken install
                log_event(logging.ERROR, "decode_pool_failed", error=str(exc))
                return 1
            log_event(
                logging.INFO,
                "decode_pool_ready",
                processes=settings.decode_workers,
                pids=self._processor.decode_pids,
                seconds=round(time.perf_counter() - started, 3),
            )
        if self._stop_signal is not None:
            log_event(logging.INFO, "worker_stopped", reason="signal before subscription")
            return 0
        if settings.metrics_port is not None and not self._start_metrics_server():
            return 1

        self._set_not_ready("starting", "connecting to Kafka")
        if self.exactly_once:
            self._transactional_id = claim_transactional_id(settings)
        self._producer = self._make_producer()
        self._consumer = self._make_consumer()
        self._check_kafka()
        if self.exactly_once:
            # Fences an earlier incarnation with the same id and aborts its open transaction.
            self._producer.init_transactions(settings.startup_timeout_s)
            log_event(
                logging.INFO,
                "transactions_initialised",
                transactional_id=self._transactional_id.transactional_id,
            )
        self._delivery = self._make_delivery()
        self._pipeline = Pipeline(
            self._processor.classify,
            self._delivery.deliver_outputs,
            overlap=settings.pipeline,
            beat=self.health.beat,
            on_delivered=self._record,
        )
        self._consumer.subscribe(
            list(settings.input_topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._set_not_ready("assignment", "no partition assigned yet")
        self._set_not_ready("starting", None)
        log_event(
            logging.INFO,
            "subscribed",
            topics=list(settings.input_topics),
            group_id=settings.group_id,
            delivery=settings.delivery,
            pipeline=settings.pipeline,
        )
        code = self._loop()
        if code == 0:
            self._delivery.finish()
            log_event(
                logging.INFO,
                "worker_stopped",
                reason="signal" if self._stop_signal else "stop requested",
                signal=self._stop_signal,
                **self._totals,
            )
        return code

    def _start_metrics_server(self) -> bool:
        settings = self.settings
        try:
            self.metrics_server = MetricsServer(
                self.metrics,
                settings.metrics_host,
                settings.metrics_port or 0,
                alive=self.health.alive,
                ready=lambda: self.ready,
            ).start()
        except OSError as exc:
            log_event(
                logging.ERROR,
                "metrics_server_failed",
                host=settings.metrics_host,
                port=settings.metrics_port,
                error=str(exc),
            )
            return False
        log_event(
            logging.INFO,
            "metrics_listening",
            host=self.metrics_server.host,
            port=self.metrics_server.port,
        )
        return True

    def _check_kafka(self) -> None:
        """Bootstrap reachable, authentication accepted, input topics present: or
        :class:`StartupError` within ``startup_timeout_s``."""
        settings = self.settings
        deadline = time.monotonic() + settings.startup_timeout_s
        last_error = "no answer"
        while True:
            self._producer.poll(0)  # serves error callbacks (authentication failures)
            if "authentication" in self._not_ready:
                raise StartupError(
                    f"authentication with {settings.bootstrap_servers} failed: "
                    f"{self._not_ready['authentication']}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise StartupError(
                    f"Kafka at {settings.bootstrap_servers} not reachable within "
                    f"{settings.startup_timeout_s} s (startup_timeout_s): {last_error}"
                )
            if self._stop_signal is not None:
                raise StartupError("stopped by a signal while connecting to Kafka")
            try:
                topics = self._producer.list_topics(timeout=min(1.0, left)).topics
                break
            except Exception as exc:  # KafkaException: timed out, transport
                last_error = str(exc)
        self._set_not_ready("broker", None)
        missing = [t for t in settings.input_topics if t not in topics or topics[t].error]
        if missing:
            raise StartupError(
                f"input topic(s) {missing} do not exist on {settings.bootstrap_servers}"
            )
        for name in (settings.output_topic, settings.dead_letter_topic):
            if name not in topics:
                log_event(
                    logging.WARNING,
                    "topic_missing",
                    topic=name,
                    hint="create it, or rely on the broker's auto-creation",
                )

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

    def _check_kafka_config(self) -> None:
        """Let librdkafka check both configurations before anything slow: a client made
        without ``bootstrap.servers`` connects nowhere."""
        from confluent_kafka import Consumer, Producer

        for kind, conf, what in (
            (Producer, self._producer_conf("check"), "producer"),
            (Consumer, self._consumer_conf(), "consumer"),
        ):
            conf.pop("bootstrap.servers", None)
            client = _kafka_client(kind, conf, what)
            if kind is Consumer:
                client.close()
            del client

    def _producer_conf(self, transactional_id: str | None) -> dict[str, Any]:
        settings = self.settings
        conf: dict[str, Any] = {"linger.ms": 5, "acks": "all", "enable.idempotence": True}
        conf.update(settings.librdkafka())
        # Bounded under max.poll.interval.ms (StreamSettings checks a configured value).
        conf["message.timeout.ms"] = settings.message_timeout_ms()
        conf.update(self._common_conf())
        if self.exactly_once:
            conf["transactional.id"] = transactional_id
        return conf

    def _make_producer(self) -> Any:
        from confluent_kafka import Producer

        transactional_id = self._transactional_id.transactional_id if self.exactly_once else None
        return _kafka_client(Producer, self._producer_conf(transactional_id), "producer")

    def _make_consumer(self) -> Any:
        from confluent_kafka import Consumer

        return _kafka_client(Consumer, self._consumer_conf(), "consumer")

    def _consumer_conf(self) -> dict[str, Any]:
        settings = self.settings
        conf: dict[str, Any] = {
            "auto.offset.reset": "earliest",
            "heartbeat.interval.ms": min(3000, settings.session_timeout_ms // 3),
        }
        if self.metrics_server is not None:
            conf["statistics.interval.ms"] = 5000
        conf.update(settings.librdkafka())
        conf.pop(
            "message.max.bytes", None
        )  # a producer setting: the consumer's fetch limit differs
        conf.update(self._common_conf())
        conf.update(
            {
                "group.id": settings.group_id,
                "session.timeout.ms": settings.session_timeout_ms,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "on_commit": _on_commit,  # results of the asynchronous per-batch commits
            }
        )
        if self.exactly_once:
            conf["isolation.level"] = "read_committed"
        if self.metrics_server is not None:
            conf["stats_cb"] = self._on_stats
        return conf

    def _make_delivery(self) -> Delivery:
        settings = self.settings
        kind = ExactlyOnceDelivery if self.exactly_once else AtLeastOnceDelivery
        return kind(
            self._producer,
            self._consumer,
            output_topic=settings.output_topic,
            dead_letter_topic=settings.dead_letter_topic,
            max_message_bytes=settings.max_message_bytes(),
            stop_deadline=lambda: self._stop_deadline,
            on_acked=self._on_acked,
            on_retry=self._on_delivery_retry,
            beat=self.health.beat,
            backoff=self._backoff,
            retry_for_s=settings.delivery_retry_s,
        )

    # -- callbacks: consumer ones inside consume() (consuming thread), producer ones inside
    # flush() (the deliver thread when pipelined) -------------------------------------------
    def _on_kafka_error(self, error: Any) -> None:
        fatal = error.fatal()
        name = error.name()
        log_event(
            logging.ERROR if fatal else logging.WARNING,
            "kafka_error",
            code=name,
            error=error.str(),
            fatal=fatal,
        )
        if name in BROKER_DOWN_ERRORS:
            self._set_not_ready("broker", f"{name}: {error.str()}")
            self._next_probe = time.monotonic() + BROKER_PROBE_INTERVAL_S
        elif name in AUTH_ERRORS:
            self._set_not_ready("authentication", f"{name}: {error.str()}")
            self._next_probe = time.monotonic() + BROKER_PROBE_INTERVAL_S
        if fatal:
            self._fatal = f"{name}: {error.str()}"

    def _on_stats(self, stats_json: str) -> None:
        try:
            self.metrics.update_from_librdkafka_stats(stats_json)
        except Exception as exc:  # never let a statistics document stop the worker
            log_event(logging.WARNING, "stats_unreadable", error=str(exc))

    def _on_acked(self, source: Any) -> None:
        if source.timestamp_ms >= 0:
            latency = time.time() - source.timestamp_ms / 1000
            self.metrics.end_to_end_seconds.observe(max(latency, 0.0))

    def _on_delivery_retry(self, why: str, attempt: int) -> None:
        self.metrics.retries.labels(reason=why).inc()
        self._set_not_ready("retrying", f"{why} failing (attempt {attempt})")

    def _on_assign(self, _consumer: Any, partitions: list) -> None:
        self._assigned |= {(p.topic, p.partition) for p in partitions}
        log_event(logging.INFO, "partitions_assigned", partitions=_names(partitions))
        if self._assigned:
            self._set_not_ready("assignment", None)

    def _forget(self, partitions: list) -> None:
        self._assigned -= {(p.topic, p.partition) for p in partitions}
        if not self._assigned:
            self._set_not_ready("assignment", "no partition assigned")
        self.metrics.forget_partitions([(p.topic, p.partition) for p in partitions])

    def _on_revoke(self, _consumer: Any, partitions: list) -> None:
        self._revoked_during_consume = True
        log_event(logging.INFO, "partitions_revoked", partitions=_names(partitions))
        if self._delivery is not None:  # None once the worker is releasing Kafka
            # Every batch consumed so far is delivered and committed (or has failed) before
            # the partitions go: the pipeline is drained; the loop collects them afterwards.
            self._pipeline.wait_idle()
            for batch in self._pipeline.finished_in_order():
                self._commit(batch)  # stored now, committed just below
            try:
                self._delivery.on_revoke()
            except (StopTimeout, DeliveryFailed) as exc:  # deliveries stuck: commit nothing more
                log_event(logging.WARNING, "revoke_commit_skipped", error=str(exc))
        self._forget(partitions)

    def _on_lost(self, _consumer: Any, partitions: list) -> None:
        self._revoked_during_consume = True
        log_event(
            logging.WARNING,
            "partitions_lost",
            partitions=_names(partitions),
            hint="another member may re-process their uncommitted messages",
        )
        # Their offsets cannot be committed any more: batches not started are not worth
        # delivering (the loop reads them again where still assigned).
        self._pipeline.drop_pending()
        self._forget(partitions)

    # -- the loop -------------------------------------------------------------------------
    def _loop(self) -> int:
        """Consume, decode and submit batches to the pipeline, and collect the finished ones,
        until a stop request (0) or too many failures (1); a stop drains the pipeline first."""
        settings = self.settings
        timeout_s = settings.max_wait_ms / 1000
        self._failures = 0  # consecutive batches that failed for a reason other than input
        self._transient = 0  # consecutive transient failures (backoff)
        while self._stop_signal is None:
            self.health.beat()
            if self._fatal:
                raise FatalKafkaError(self._fatal)
            self._probe_broker()
            code = self._collect(block=self._pipeline.full)
            if code is not None:
                return code
            if self._stop_signal is not None:
                break
            records = self._consume(timeout_s)
            if not records:
                self._check_idle_broker()
                self._log_progress()
                continue
            self.metrics.consumed.inc(len(records))
            self._totals["consumed"] += len(records)
            self._submit(records)
            self._log_progress()
        # Stopping: what was consumed is finished (delivered and committed) first.
        while self._pipeline.in_flight:
            code = self._collect(block=True)
            if code is not None:
                return code
        return 0

    def _submit(self, records: list) -> None:
        """Decode ``records`` here, on the consuming thread, and hand them to the pipeline;
        a decode failure travels with the batch and is handled in order."""
        assert self._processor is not None
        try:
            decoded: Any = self._processor.decode(records)
        except Exception as exc:  # TransientError, a bug: the batch fails in its turn
            decoded = exc
        # Exactly-once: the transaction of this batch carries the group metadata of now (a
        # rebalance drains the pipeline first, so it is still current when the batch goes).
        group = self._consumer.consumer_group_metadata() if self.exactly_once else None
        self._pipeline.submit(records, decoded, group)
        self.metrics.pipeline_in_flight.set(self._pipeline.in_flight)

    def _collect(self, block: bool) -> int | None:
        """Take the finished batches out of the pipeline, oldest first: record a delivered
        one, apply the error policy to a failed one. ``block``: wait for the oldest first
        (the pipeline is full). Returns 1 when the worker must stop (too many failures)."""
        started = time.perf_counter()
        batch = self._pipeline.next_finished(block)
        if block:
            self.metrics.pipeline_wait_seconds.observe(time.perf_counter() - started)
        while batch is not None:
            try:
                outcome = batch.future.result()
            except Exception as exc:
                code = self._failed(batch, exc)
                self.metrics.pipeline_in_flight.set(self._pipeline.in_flight)
                return code
            release_headers(batch.messages)  # no dead letter of this batch is produced any more
            self._commit(batch)
            if outcome.record_error is not None:
                log_event(
                    logging.ERROR,
                    "batch_record_failed",
                    exc_info=outcome.record_error,
                    error=str(outcome.record_error),
                )
            self._failures = self._transient = 0
            self._set_not_ready("retrying", None)
            batch = self._pipeline.next_finished(block=False)
        self.metrics.pipeline_in_flight.set(self._pipeline.in_flight)
        return None

    def _commit(self, batch: InFlight) -> None:
        """Commit the offsets of a delivered batch, once: here, on the consuming thread, the
        only one that uses the consumer (at-least-once: an asynchronous commit, so it adds
        nothing to astroclf_deliver_seconds; exactly-once: done in the batch's transaction)."""
        if batch.committed:
            return
        assert self._delivery is not None
        self._delivery.commit(batch.messages)
        batch.committed = True

    def _failed(self, batch: InFlight, exc: Exception) -> int | None:
        """Batch ``batch`` failed: the batches after it are cancelled and, with it, read
        again; then the serial worker's policy (retry, or stop after too many failures)."""
        settings = self.settings
        if isinstance(exc, (FatalKafkaError, Undeliverable, StopTimeout)):
            self._pipeline.cancel()
            raise exc
        discarded = [batch, *self._pipeline.discard()]
        messages = [m for b in discarded for m in b.messages]
        release_headers(messages)
        if isinstance(exc, Cancelled):  # partitions lost: nothing failed, read them again
            self._reread(messages, "cancelled (partitions lost)")
            return None
        if isinstance(exc, (TransientError, DeliveryFailed)):
            self._transient += 1
            dependency = getattr(exc, "dependency", "Kafka")
            self.metrics.retries.labels(reason=dependency).inc()
            delay = self._backoff.delay(self._transient)
            log_event(
                logging.WARNING,
                "batch_retry",
                dependency=dependency,
                error=str(exc),
                attempt=self._transient,
                backoff_s=delay,
                action="not committing; the batch will be read again",
            )
            self._set_not_ready("retrying", f"{dependency} unavailable: {exc}")
            self._reread(messages, "transient failure")
            self._sleep(delay)
            return None
        # our bug, a model or ONNX Runtime error
        self._failures += 1
        self.metrics.batch_failures.labels(error_class=type(exc).__name__).inc()
        log_event(
            logging.ERROR,
            "batch_failed",
            exc_info=exc,
            error_class=type(exc).__name__,
            error=str(exc),
            consecutive=self._failures,
            limit=settings.max_consecutive_failures,
        )
        self._reread(messages, "batch failed")
        if self._failures >= settings.max_consecutive_failures:
            log_event(
                logging.ERROR,
                "worker_failed",
                error_class=type(exc).__name__,
                error=str(exc),
                reason=f"{self._failures} batches in a row failed (max_consecutive_failures)",
                committed="nothing of the failed batches",
            )
            return 1
        self._sleep(self._backoff.delay(self._failures))
        return None

    def _consume(self, timeout_s: float) -> list:
        from confluent_kafka import KafkaError

        self._revoked_during_consume = False
        messages = self._consumer.consume(num_messages=self.settings.batch_size, timeout=timeout_s)
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
            return []
        if records:
            self._last_answer = time.monotonic()
            self._set_not_ready("broker", None)  # fetched: the brokers answer
        return records

    def _check_idle_broker(self) -> None:
        """After IDLE_CHECK_S without a fetch, ask for metadata (once per IDLE_CHECK_S): no
        answer makes the worker not ready; :meth:`_probe_broker` then watches for recovery."""
        if "broker" in self._not_ready or time.monotonic() - self._last_answer < IDLE_CHECK_S:
            return
        try:
            self._consumer.list_topics(self.settings.input_topics[0], timeout=2.0)
        except Exception as exc:  # KafkaException: transport failure or timeout
            self._set_not_ready("broker", f"no answer to a metadata request while idle ({exc})")
            self._next_probe = time.monotonic() + BROKER_PROBE_INTERVAL_S
        self._last_answer = time.monotonic()

    def _probe_broker(self) -> None:
        """While brokers were reported down or authentication failed, ask for metadata
        every second; an answer makes the worker ready again."""
        if not ({"broker", "authentication"} & self._not_ready.keys()):
            return
        if time.monotonic() < self._next_probe:
            return
        self._next_probe = time.monotonic() + BROKER_PROBE_INTERVAL_S
        try:
            self._consumer.list_topics(self.settings.input_topics[0], timeout=0.5)
        except Exception:  # still down
            return
        self._last_answer = time.monotonic()
        self._set_not_ready("broker", None)
        self._set_not_ready("authentication", None)

    def _record(self, messages: Sequence[Any], outcome: Outcome) -> None:
        """Metrics, totals and the debug log line of one delivered batch: on the deliver
        thread, right after the delivery (the consuming thread only adds ``consumed``)."""
        result, delivered = outcome.result, outcome.delivered
        deliver_seconds = outcome.deliver_seconds
        m = self.metrics
        m.batches.inc()
        m.batch_size.observe(len(messages))
        m.decode_seconds.observe(result.decode_seconds)
        m.inference_seconds.observe(result.inference_seconds)
        m.features_seconds.observe(result.features_seconds)
        m.deliver_seconds.observe(deliver_seconds)
        m.produced.inc(delivered.outputs)
        for reason, n in result.dropped_points.items():
            m.points_dropped.labels(reason=reason).inc(n)
        for dead in delivered.dead_letters:
            m.dead_lettered.labels(reason=dead.error_class).inc()
            if dead.truncated:
                m.truncated.inc()
            log_event(
                logging.WARNING,
                "dead_letter",
                source=str(dead.source),
                error_class=dead.error_class,
                error=dead.error_message[:MAX_ERROR_MESSAGE_CHARS],
                truncated=dead.truncated,
            )
        self._totals["produced"] += delivered.outputs
        self._totals["dead_lettered"] += len(delivered.dead_letters)
        self._totals["points_dropped"] += sum(result.dropped_points.values())
        self._totals["batches"] += 1
        log_event(
            logging.DEBUG,
            "batch_done",
            messages=len(messages),
            classifications=delivered.outputs,
            dead_letters=len(delivered.dead_letters),
            points_dropped=result.dropped_points,
            delivery_attempts=delivered.attempts,
            decode_ms=round(result.decode_seconds * 1000, 2),
            inference_ms=round(result.inference_seconds * 1000, 2),
            deliver_ms=round(deliver_seconds * 1000, 2),
        )

    # -- shared ---------------------------------------------------------------------------
    def _sleep(self, seconds: float) -> None:
        """A backoff that a stop request cuts short."""
        end = time.monotonic() + seconds
        while self._stop_signal is None and time.monotonic() < end:
            self.health.beat()
            time.sleep(min(0.1, max(end - time.monotonic(), 0.0)))

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

    def _stop_pipeline(self) -> None:
        """On the way out: batches not started are cancelled, a delivery under way gives up
        at its next check (its stop deadline is now), and the threads end before the Kafka
        clients are released."""
        if self._pipeline.in_flight:
            now = time.monotonic()
            self._stop_deadline = min(self._stop_deadline or now, now)
        self._pipeline.close(timeout_s=5.0)

    def _release_kafka(self, clean: bool) -> None:
        """Leave the group and drop the clients; after a failure, undelivered messages are
        purged (they were never committed)."""
        consumer, self._consumer = self._consumer, None
        producer, self._producer = self._producer, None
        self._delivery = None
        if producer is not None and not clean:
            try:
                producer.purge()
                producer.flush(0)
            except Exception as exc:
                log_event(logging.WARNING, "producer_purge_failed", error=str(exc))
        if consumer is not None:
            try:
                consumer.close()  # leaves the group now: its partitions move without waiting
            except Exception as exc:
                log_event(logging.WARNING, "consumer_close_failed", error=str(exc))
        del producer, consumer

    def _stop_timed_out(self) -> None:
        """The watchdog: the stop took longer than ``stop_timeout_s``; exit now (1). Offsets
        are only ever committed after delivery, so nothing undelivered was committed."""
        log_event(
            logging.ERROR,
            "stop_timeout",
            stop_timeout_s=self.settings.stop_timeout_s,
            action="exiting without finishing; undelivered messages are not committed",
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os._exit(1)

    def _log_progress(self) -> None:
        now = time.monotonic()
        if now - self._last_progress_log >= PROGRESS_LOG_INTERVAL_S:
            self._last_progress_log = now
            log_event(logging.INFO, "progress", **self._totals)


def _kafka_client(kind: Callable[[dict], Any], conf: dict[str, Any], what: str) -> Any:
    """A confluent_kafka Producer or Consumer; a property librdkafka refuses (an unknown name
    such as ``securty.protocol``, a bad value) is a :class:`KafkaConfigError` naming it."""
    from confluent_kafka import KafkaError, KafkaException

    try:
        return kind(conf)
    except KafkaException as exc:
        error = exc.args[0]
        if error.code() != KafkaError._INVALID_ARG:
            raise
        raise KafkaConfigError(
            f"the Kafka {what} configuration is invalid: {error.str()} (check the kafka and "
            "kafka_secrets settings, or the ASTROCLF_KAFKA__* variables)"
        ) from exc


def _names(partitions: list) -> list[str]:
    return [f"{p.topic}[{p.partition}]" for p in partitions]
