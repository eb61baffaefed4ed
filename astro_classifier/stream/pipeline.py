"""The worker's pipeline: while one micro-batch is delivered, the next is classified and the
one after that is consumed and decoded.

Before, the worker ran consume -> decode -> classify -> produce -> commit one batch at a
time, so every part waited for every other: on a GPU machine the GPU sat idle while the CPU
decoded and produced. Now three threads work on three batches at once::

    consuming thread  (the worker's own)   consume N+2, decode N+2, submit;
                                            collect N-1: commit its offsets
    classify thread                         features + model of N+1 -> outputs
    deliver thread                          produce N, wait for its acks (exactly-once:
                                            its transaction, offsets included), metrics

**Why threads, not processes.** The costly parts release the GIL: ONNX Runtime's ``Run``,
most numpy kernels, librdkafka's produce/flush/commit (C threads), and decoding either in
the optional decode process pool (stream/decoding.py) or in fastavro's C code. Threads
share the model, the Kafka clients and the messages without copying or pickling them, and
the consumer and producer stay in the one process that owns the partitions, so the group
protocol, rebalance callbacks and transactions work as before. On a GPU one process per
worker also keeps one CUDA session per process (see docs/stream.md, "Several workers per
GPU").

**Order and offsets.** Each stage is one thread taking batches in the order they were
consumed, so outputs are produced, and offsets committed, in consumption order per
partition. The deliver thread produces and waits for every acknowledgement
(:meth:`Delivery.deliver_outputs`, producer only); the consuming thread then commits the
batch's offsets when it collects the batch, in order (:meth:`Delivery.commit`): nothing is
committed before its outputs are acknowledged. The consumer stays on the consuming thread
because confluent_kafka lets one thread at a time into a Consumer (another thread waits,
and can starve while the consuming thread polls). With exactly-once delivery the produce,
sendOffsetsToTransaction and commit of a batch still happen in one transaction on the
deliver thread (with the consumer's group metadata taken when the batch was consumed);
the transactions of consecutive batches never overlap, only the decoding and classification
of later batches overlap with a transaction. That is safe because a batch's transaction
names its own offsets explicitly, and a rebalance drains the pipeline (below) so no
transaction carries a stale generation.

**Failures.** When batch N fails in any stage, every later batch in flight is cancelled
before it starts its next stage (it can never be delivered or committed past N): the
failing stage marks the pipeline broken *before* it reports the failure. The worker then
takes every batch out (:meth:`Pipeline.discard`), seeks back to the first offset of each
partition among them and applies the serial worker's policy (retry with backoff, or stop
after ``max_consecutive_failures``). A batch before N that is already in delivery finishes
normally.

**Bounded memory and backpressure.** At most ``max_in_flight`` batches are submitted and
not yet finished (plus the one the consuming thread is decoding); the consuming thread
waits for the oldest before it fetches more, so a slow delivery slows consumption down
instead of piling up batches.

**Rebalance, stop.** A revocation drains the pipeline (every consumed batch is delivered
and committed before the partitions go, as before); a loss cancels what has not started.
SIGTERM stops consumption and drains the pipeline, then commits and exits 0; ``kill -9``
loses nothing because nothing is committed before it is acknowledged.

``overlap=False`` (setting ``pipeline: false``) runs each batch's stages inline on the
consuming thread: the serial worker, same code path, for comparison and as a fallback.
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from typing import Any

DEFAULT_MAX_IN_FLIGHT = 2
WAIT_STEP_S = 0.1  # how often a waiting consuming thread beats its liveness


class Cancelled(Exception):
    """The batch was not run: an earlier batch failed, or the pipeline was cancelled."""


@dataclasses.dataclass
class Outcome:
    """What the deliver stage gives for one batch."""

    result: Any  # BatchResult
    delivered: Any  # Delivered
    deliver_seconds: float
    record_error: Exception | None = None  # what ``on_delivered`` raised, if anything


@dataclasses.dataclass
class InFlight:
    """One submitted batch: its messages and the future of its delivery."""

    seq: int
    messages: Sequence[Any]
    future: Future
    committed: bool = False  # the consuming thread committed its offsets (worker's flag)


class _Stage:
    """One daemon thread running tasks in submission order.

    Daemon: a delivery stuck in librdkafka must never keep the process alive past the
    worker's own stop watchdog.
    """

    def __init__(self, name: str, pipeline: Pipeline) -> None:
        self.name = name
        self._pipeline = pipeline
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, seq: int, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        self._queue.put((seq, future, fn, args))
        return future

    def _run(self) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            seq, future, fn, args = task
            self._pipeline.run_task(seq, future, fn, args)

    def close(self, timeout_s: float) -> None:
        self._queue.put(None)
        self._thread.join(timeout_s)


class Pipeline:
    """Classify and deliver micro-batches on two threads, in order; see the module docstring.

    ``classify(messages, decoded) -> result`` and ``deliver(messages, result, context) ->
    delivered`` are the worker's stages (``context``: what the consuming thread passed to
    :meth:`submit`, e.g. the consumer's group metadata); the consuming thread decodes and
    calls :meth:`submit`, then collects finished batches, oldest first, with
    :meth:`next_finished`, and commits their offsets itself. ``on_delivered(messages,
    outcome)`` runs on the deliver thread right after each delivery (the worker's metrics:
    with exactly-once the transaction is committed there, and the counters must not lag
    it); what it raises is kept in ``outcome.record_error``, never failing a batch that is
    delivered.
    """

    def __init__(
        self,
        classify: Callable[[Sequence[Any], Any], Any],
        deliver: Callable[[Sequence[Any], Any, Any], Any],
        *,
        overlap: bool = True,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        beat: Callable[[], None] = lambda: None,
        on_delivered: Callable[[Sequence[Any], Outcome], None] = lambda _m, _o: None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        self._classify = classify
        self._deliver = deliver
        self.overlap = overlap
        self.max_in_flight = max_in_flight if overlap else 1
        self.beat = beat
        self._on_delivered = on_delivered
        self._lock = threading.Lock()
        self._failed_at: int | None = None  # seq of the first failed batch; later ones cancel
        self._next_seq = 0
        self._in_flight: collections.deque[InFlight] = collections.deque()
        self._stages: list[_Stage] = []
        self._closed = False
        if overlap:
            self._classifier = _Stage("astroclf-classify", self)
            self._deliverer = _Stage("astroclf-deliver", self)
            self._stages = [self._classifier, self._deliverer]

    # -- the consuming thread -----------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def full(self) -> bool:
        """True when the consuming thread must wait for the oldest batch before it fetches."""
        return len(self._in_flight) >= self.max_in_flight

    def submit(self, messages: Sequence[Any], decoded: Any, context: Any = None) -> InFlight:
        """Queue one decoded batch for classification, then delivery. ``decoded`` may be the
        exception decoding raised: the batch then fails in order, like any failed batch.

        The bound is the caller's to keep (collect the oldest while :attr:`full`); a submit
        past it is a bug and raises, rather than letting batches pile up."""
        if self.full:
            raise RuntimeError(f"{self.in_flight} batches in flight: collect one first")
        seq = self._next_seq
        self._next_seq += 1
        if self.overlap:
            classified = self._classifier.submit(seq, self._classify_stage, messages, decoded)
            future = self._deliverer.submit(seq, self._deliver_stage, messages, classified, context)
        else:
            classified = Future()
            self.run_task(seq, classified, self._classify_stage, (messages, decoded))
            future = Future()
            self.run_task(seq, future, self._deliver_stage, (messages, classified, context))
        batch = InFlight(seq, messages, future)
        self._in_flight.append(batch)
        return batch

    def next_finished(self, block: bool) -> InFlight | None:
        """The oldest batch once it is finished (delivered, failed or cancelled), taken out
        of the pipeline; None when there is none, or it is not finished and not ``block``."""
        if not self._in_flight:
            return None
        oldest = self._in_flight[0]
        if not oldest.future.done():
            if not block:
                return None
            self._wait([oldest.future])
        return self._in_flight.popleft()

    def finished_in_order(self) -> list[InFlight]:
        """The batches at the head of the pipeline that are delivered, oldest first, up to
        the first one not finished or failed (their offsets may be committed)."""
        done = []
        for batch in self._in_flight:
            if not batch.future.done() or batch.future.exception() is not None:
                break
            done.append(batch)
        return done

    def wait_idle(self) -> None:
        """Wait until every submitted batch is finished (they stay to be collected). After
        :meth:`close` it returns at once: a batch still unfinished then never will be."""
        if not self._closed:
            self._wait([b.future for b in self._in_flight])

    def discard(self) -> list[InFlight]:
        """After a failure: wait for every batch in flight to finish (later ones are
        cancelled), take them all out, and accept new batches again."""
        self.wait_idle()
        batches = list(self._in_flight)
        self._in_flight.clear()
        with self._lock:
            self._failed_at = None
        return batches

    def cancel(self) -> None:
        """From now on no batch starts a stage (the worker is failing or closing)."""
        with self._lock:
            self._failed_at = -1

    def drop_pending(self) -> None:
        """Cancel every batch that has not started its next stage, wait for the ones under
        way, then accept new batches again (partitions lost). The cancelled batches stay to
        be collected: their future says :class:`Cancelled`."""
        if self._closed:
            return
        self.cancel()
        self.wait_idle()
        with self._lock:
            self._failed_at = None

    def close(self, timeout_s: float = 5.0) -> None:
        """Cancel what has not started and stop the threads (waiting at most ``timeout_s``
        for each: a stuck delivery is left to the process's exit)."""
        self.cancel()
        self._closed = True
        deadline = time.monotonic() + timeout_s
        for stage in self._stages:
            stage.close(max(deadline - time.monotonic(), 0.0))
        self._stages = []

    def _wait(self, futures: list[Future]) -> None:
        while futures:
            self.beat()
            _done, pending = wait_futures(futures, timeout=WAIT_STEP_S)
            futures = list(pending)

    # -- the stages ---------------------------------------------------------------------------
    def run_task(self, seq: int, future: Future, fn: Callable[..., Any], args: tuple) -> None:
        """Run one stage of batch ``seq`` unless an earlier batch failed; a failure marks
        the pipeline broken at ``seq`` *before* the future reports it, so no later batch can
        start a stage once anyone has seen the failure."""
        if not future.set_running_or_notify_cancel():
            return
        with self._lock:
            cancelled = self._failed_at is not None and seq > self._failed_at
        if cancelled:
            future.set_exception(Cancelled(f"batch {seq}: an earlier batch failed"))
            return
        try:
            value = fn(*args)
        except BaseException as exc:
            with self._lock:
                if self._failed_at is None or seq < self._failed_at:
                    self._failed_at = seq
            future.set_exception(exc)
        else:
            future.set_result(value)

    def _classify_stage(self, messages: Sequence[Any], decoded: Any) -> Any:
        if isinstance(decoded, BaseException):
            raise decoded
        return self._classify(messages, decoded)

    def _deliver_stage(self, messages: Sequence[Any], classified: Future, context: Any) -> Outcome:
        result = classified.result()  # the classify stage runs ahead: waits only if it lags
        started = time.perf_counter()
        delivered = self._deliver(messages, result, context)
        outcome = Outcome(result, delivered, time.perf_counter() - started)
        try:
            self._on_delivered(messages, outcome)
        except Exception as exc:  # delivered (maybe committed): never fail the batch now
            outcome.record_error = exc
        return outcome


__all__ = ["DEFAULT_MAX_IN_FLIGHT", "Cancelled", "InFlight", "Outcome", "Pipeline"]
