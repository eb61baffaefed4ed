"""Decoding the messages of a micro-batch in a pool of worker processes.

Decoding (Avro containers above all) is pure CPU work in Python, so one worker process
decodes on one core however many the machine has. :class:`DecodePool` spreads a batch's
messages over ``decode_workers`` processes, each decoding a run of consecutive messages with
:func:`decode_micro_batch`, and joins the runs **in message order** into the
:class:`DecodedMessages` the in-process path (``decode_workers: 0``) gives: every alert's
light curve in one batch with its message index, the :class:`PartialDecode` of containers
with good and bad records, the :class:`InputError` of each message refused. The worker's
loop, offsets and delivery do not know whether a pool was used: a batch is still decoded
completely before it is classified, produced and committed, so the delivery guarantees are
those of the in-process path.

Failures keep their meaning across the process boundary: an :class:`InputError` stays the
message's fault, a :class:`TransientError` (Schema Registry down) is raised again in the
worker, anything else (a bug) is raised as :class:`DecodeWorkerError`; a pool process that
dies takes the batch with it (:class:`DecodeWorkerError`, the batch is read again) and the
pool is started afresh.

Pool processes are started with ``spawn`` (the worker holds librdkafka and ONNX Runtime
threads, which ``fork`` would copy in an unknown state), before the worker subscribes, and
are asked to die with their parent (Linux ``PR_SET_PDEATHSIG``), so a ``kill -9`` of the
worker leaves none behind.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from astro_classifier.core.errors import TransientError
from astro_classifier.formats.registry import DecodedMessages, decode_micro_batch

log = logging.getLogger("astro_classifier.stream")

TASKS_PER_WORKER = 2  # chunks per process and batch: balance against per-task overhead

# Across the process boundary, per run of messages: ("ok", DecodedMessages), or
# (kind, *details) for a failure that is not a message's (InputErrors are in DecodedMessages).


class DecodeWorkerError(RuntimeError):
    """Decoding failed for a reason that is not the input's (a bug, a dead pool process)."""


# -- in the pool processes --------------------------------------------------------------
_STATE: dict[str, Any] = {}


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:  # best effort: the pool's pipes close with the parent anyway
            pass


def _initialise(input_format: str, schemas: Any, cutout_size: int | None = None) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _STATE.update(
        decode=decode_micro_batch,
        input_format=input_format,
        schemas=schemas,
        cutout_size=cutout_size,
    )


def _ping(hold_s: float) -> int:
    time.sleep(hold_s)  # so that the other pings reach the other processes
    return os.getpid()


def _decode_chunk(items: list[tuple[bytes | None, str]]) -> tuple:
    decode = _STATE["decode"]
    try:
        decoded = decode(items, _STATE["input_format"], _STATE["schemas"], _STATE["cutout_size"])
    except TransientError as exc:
        return ("transient", exc.dependency, exc.reason)
    except Exception as exc:  # a bug: not a message's fault
        return ("bug", type(exc).__name__, str(exc))
    return ("ok", decoded)


# -- in the worker ------------------------------------------------------------------------
class DecodePool:
    """``workers`` processes decoding messages of ``input_format``; see the module docstring."""

    def __init__(
        self,
        workers: int,
        input_format: str,
        schemas: Any = None,
        cutout_size: int | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"a decode pool needs at least one process, not {workers}")
        self.workers = workers
        self.input_format = input_format
        self.schemas = schemas
        self.cutout_size = cutout_size  # decode stamps too (models with an image tower)
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self.pids: list[int] = []  # of the processes, once started

    def start(self) -> DecodePool:
        """Start every process and wait until each has imported the decoders."""
        if self._executor is None:
            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_initialise,
                initargs=(self.input_format, self.schemas, self.cutout_size),
            )
            # Every process started and warm (imports done) before the first batch.
            pids: set[int] = set()
            for attempt in range(5):
                futures = [self._executor.submit(_ping, 0.2 * attempt) for _ in range(self.workers)]
                pids |= {f.result(timeout=120) for f in futures}
                if len(pids) >= self.workers:
                    break
            self.pids = sorted(pids)
            log.debug("decode pool started: %d process(es) %s", self.workers, self.pids)
        return self

    def decode(self, items: Sequence[tuple[bytes | None, str]]) -> DecodedMessages:
        """(value, source) per message -> their :class:`DecodedMessages`, as
        :func:`decode_micro_batch` gives in-process.

        Raises :class:`TransientError` (first one in message order) or
        :class:`DecodeWorkerError`.
        """
        self.start()
        assert self._executor is not None
        n_chunks = min(len(items), self.workers * TASKS_PER_WORKER) or 1
        size = -(-len(items) // n_chunks)
        chunks = [list(items[i : i + size]) for i in range(0, len(items), size)]
        try:
            results = list(self._executor.map(_decode_chunk, chunks))
        except BrokenProcessPool as exc:
            self.close()  # started again on the next batch
            raise DecodeWorkerError(f"a decode process died: {exc}") from exc
        runs: list[DecodedMessages] = []
        for result in results:
            kind = result[0]
            if kind == "ok":
                runs.append(result[1])
            elif kind == "transient":
                raise TransientError(result[1], result[2])
            else:
                raise DecodeWorkerError(f"decoding raised {result[1]}: {result[2]}")
        return DecodedMessages.concat(runs)

    def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
