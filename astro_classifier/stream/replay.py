"""Produce real alert files to a Kafka topic (tests, demos, benchmarks).

What each file becomes:

- an Avro container file (ZTF or Rubin alerts): one message, the file's bytes unchanged;
- a Confluent wire-format message file: one message, its bytes unchanged;
- Parquet alert rows (``ztf-parquet``, ``rubin-parquet``): one single-row Parquet file per row;
- a file of astroclf JSON alerts: one message per line;
- any other light-curve file astroclf reads (PLAsTiCC, long format, EROS-1): one message
  per object in the ``json`` input format (:mod:`astro_classifier.formats.jsonalert`).

What a file becomes is decided by the format registry (``formats/registry.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import BANDS, LightCurveBatch
from astro_classifier.formats.registry import file_messages as message_values
from astro_classifier.formats.registry import read_light_curves


def batch_to_json_messages(batch: LightCurveBatch) -> Iterator[tuple[str, bytes]]:
    """(key, value) per object: astroclf's JSON alert format."""
    for k in range(len(batch)):
        s = slice(batch.offsets[k], batch.offsets[k + 1])
        doc: dict[str, Any] = {
            "object_id": str(batch.object_id[k]),
            "alert_id": None if batch.alert_id is None else batch.alert_id[k],
            "points": [
                {
                    "mjd": float(t),
                    "band": BANDS[b],
                    "flux": float(f),
                    "flux_err": float(e),
                    "detected": bool(d),
                }
                for t, b, f, e, d in zip(
                    batch.time[s],
                    batch.band[s],
                    batch.flux[s],
                    batch.flux_err[s],
                    batch.detected[s],
                    strict=True,
                )
            ],
            "metadata": {
                key: float(col[k]) for key, col in batch.metadata.items() if np.isfinite(col[k])
            },
        }
        yield str(batch.object_id[k]), json.dumps(doc, separators=(",", ":")).encode()


def file_messages(path: Path, metadata: Path | None = None) -> list[tuple[str | None, bytes]]:
    """The messages one file turns into (module docstring)."""
    if not path.is_file():
        raise InputError(path, "file not found")
    messages = message_values(path) if metadata is None else None
    if messages is not None:
        return messages
    return list(batch_to_json_messages(read_light_curves([path], metadata=metadata)))


def replay(
    paths: Sequence[Path],
    topic: str,
    producer_conf: dict[str, str],
    repeat: int = 1,
    rate: float | None = None,
    metadata: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Produce the messages of ``paths`` to ``topic`` ``repeat`` times; return the count.

    ``rate`` limits messages per second (None: as fast as the broker takes them). Waits until
    every message is acknowledged; raises RuntimeError if any delivery failed.
    """
    from confluent_kafka import KafkaException, Producer

    messages = [m for p in paths for m in file_messages(Path(p), metadata)]
    producer = Producer({"linger.ms": "20", "compression.type": "lz4", **producer_conf})
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    sent, started = 0, time.perf_counter()
    for _ in range(repeat):
        for key, value in messages:
            if rate:
                ahead = sent / rate - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)
            while True:
                try:
                    producer.produce(topic, value=value, key=key, on_delivery=delivered)
                    break
                except BufferError:  # local queue full: let deliveries drain
                    producer.poll(0.1)
                except KafkaException as exc:
                    raise RuntimeError(f"cannot produce to {topic}: {exc}") from exc
            producer.poll(0)
            sent += 1
            if progress is not None and sent % 1000 == 0:
                progress(sent)
    remaining = producer.flush(60)
    if remaining or failures:
        raise RuntimeError(
            f"{remaining} message(s) not delivered, {len(failures)} failed"
            + (f": {failures[0]}" if failures else "")
        )
    if progress is not None:
        progress(sent)
    return sent
