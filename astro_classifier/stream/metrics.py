"""Prometheus metrics of the Kafka worker, and the small HTTP server that exposes them.

Every metric lives in the worker's own :class:`CollectorRegistry` (not the process-wide
default one), so two workers in one process, or a test, never share counters.

Endpoints of :class:`MetricsServer`:

- ``/metrics``: Prometheus text format;
- ``/healthz``: 200 while the worker's loop is alive (it has started, has not ended, and
  has gone round within ``stall_after_s``), else 503;
- ``/ready``: 200 while the worker can do its job (model warmed up, partitions assigned,
  brokers reachable, authenticated, no retry under way), else 503.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# Seconds: from a millisecond (decode of one small batch) to a minute (a stalled pipeline).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class StreamMetrics:
    """The worker's metrics (names prefixed ``astroclf_``) in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.consumed = Counter(
            "astroclf_consumed_messages", "Input messages consumed (errors excluded)", registry=r
        )
        self.produced = Counter(
            "astroclf_classifications_produced",
            "Classifications produced to the output topic and acknowledged (committed, "
            "in exactly-once mode)",
            registry=r,
        )
        self.dead_lettered = Counter(
            "astroclf_dead_lettered_messages",
            "Input messages copied to the dead-letter topic, by error class",
            ["reason"],
            registry=r,
        )
        self.points_dropped = Counter(
            "astroclf_points_dropped",
            "Points of decoded alerts the readers could not use, by reason",
            ["reason"],
            registry=r,
        )
        self.truncated = Counter(
            "astroclf_dead_letters_truncated",
            "Dead letters whose value was cut to fit message.max.bytes",
            registry=r,
        )
        self.retries = Counter(
            "astroclf_retries",
            "Retries after a transient failure, by dependency or cause "
            "(Schema Registry, Kafka, delivery, transaction)",
            ["reason"],
            registry=r,
        )
        self.batch_failures = Counter(
            "astroclf_batch_failures",
            "Batches that failed for a reason other than input or a transient outage "
            "(a bug, a model runtime error), by exception class",
            ["error_class"],
            registry=r,
        )
        self.batches = Counter("astroclf_batches", "Micro-batches finished", registry=r)
        self.batch_size = Histogram(
            "astroclf_batch_size_messages",
            "Messages per micro-batch",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.decode_seconds = Histogram(
            "astroclf_decode_seconds",
            "Time to decode the messages of one micro-batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "astroclf_inference_seconds",
            "Time of classify() for one micro-batch (features and model)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.features_seconds = Histogram(
            "astroclf_features_seconds",
            "Light-curve feature extraction within classify() for one micro-batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.deliver_seconds = Histogram(
            "astroclf_deliver_seconds",
            "Producing one micro-batch's outputs and dead letters until acknowledged, "
            "and committing its offsets (or its transaction)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pipeline_wait_seconds = Histogram(
            "astroclf_pipeline_wait_seconds",
            "Time the consuming thread waited for the oldest micro-batch in the pipeline "
            "before fetching the next one (backpressure: classification or delivery is "
            "the slowest stage)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pipeline_in_flight = Gauge(
            "astroclf_pipeline_batches_in_flight",
            "Micro-batches decoded and handed to the pipeline, not yet delivered",
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "astroclf_end_to_end_latency_seconds",
            "From the input message's Kafka timestamp to the broker's acknowledgement of "
            "its classification",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "astroclf_consumer_lag_messages",
            "Messages behind the end of each assigned partition (librdkafka statistics)",
            ["topic", "partition"],
            registry=r,
        )
        self.ready = Gauge(
            "astroclf_ready",
            "1 while /ready says 200: model warmed up, partitions assigned, brokers "
            "reachable and authenticated, no retry under way",
            registry=r,
        )

    def update_from_librdkafka_stats(self, stats_json: str) -> None:
        """Consumer lag per partition from a librdkafka statistics document (``stats_cb``)."""
        stats = json.loads(stats_json)
        for topic, topic_stats in (stats.get("topics") or {}).items():
            for partition, p in (topic_stats.get("partitions") or {}).items():
                lag = p.get("consumer_lag", -1)
                # Partition -1 is librdkafka's internal UA partition; lag -1 means unknown.
                if int(partition) < 0 or lag is None or lag < 0:
                    continue
                self.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)

    def forget_partitions(self, partitions: list[tuple[str, int]]) -> None:
        """Drop the lag series of partitions this worker no longer owns."""
        for topic, partition in partitions:
            with contextlib.suppress(KeyError):  # never had a value
                self.consumer_lag.remove(topic, str(partition))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class LoopHealth:
    """Liveness of the worker's loop: ``beat()`` each round, ``stop()`` when it ends."""

    def __init__(self, stall_after_s: float = 60.0) -> None:
        self.stall_after_s = stall_after_s
        self._last_beat: float | None = None
        self._stopped = False

    def beat(self) -> None:
        self._last_beat = time.monotonic()

    def stop(self) -> None:
        self._stopped = True

    def alive(self) -> bool:
        if self._stopped or self._last_beat is None:
            return False
        return time.monotonic() - self._last_beat < self.stall_after_s


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/ready`` on ``host:port`` (port 0: a free port).

    Runs a stdlib :class:`ThreadingHTTPServer` in a daemon thread; :attr:`port` is the port
    actually bound.
    """

    def __init__(
        self,
        metrics: StreamMetrics,
        host: str,
        port: int,
        alive: Callable[[], bool],
        ready: Callable[[], bool],
    ) -> None:
        handler = _handler_class(metrics, alive, ready)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="astroclf-metrics", daemon=True
        )

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _handler_class(
    metrics: StreamMetrics, alive: Callable[[], bool], ready: Callable[[], bool]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "astroclf"

        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, metrics.exposition(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok = alive()
                self._reply(200 if ok else 503, b"ok\n" if ok else b"loop not running\n")
            elif path == "/ready":
                ok = ready()
                self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            else:
                self._reply(404, b"not found; try /metrics, /healthz or /ready\n")

        def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # scrapes every few seconds would flood the worker's log

    return Handler
