"""Decode rate of real ZTF alert messages: plain fastavro against astroclf's decoding, one run.

The messages are every real ZTF alert file under ``$ASTROCLF_SHARED_DATA/alerts/ztf``
(``fink-v4.02``, ``fink-v3.3``, ``ztf-avro-alert``: each one Avro container with its schema,
history and cutouts, exactly as the worker receives it), repeated to ``--messages``. Methods, measured in
alternating rounds on the same messages (best round of ``--rounds`` each):

1. ``fastavro.reader``: plain full decode of every record (what the worker did before);
2. astroclf, schema cached, whole records (``decode_avro_container`` without a projection);
3. astroclf, schema cached + projected records (``decode_ztf_avro_bytes``: what the readers
   use);
4. astroclf decode + ``ztf_records_to_batch``: bytes to a light-curve batch (no cleaning);
5. astroclf ``decode_message``: bytes to cleaned light curves, in this process, per message;
6. astroclf ``decode_micro_batch`` on micro-batches of ``--batch-size`` messages (what the
   worker calls): records of the whole micro-batch converted to light curves in one pass;
7. the same through the decode pool (``DecodePool``, ``--pool-workers`` processes).

Rates are messages per second of wall time; "per core" divides by the processes used.

    python -m benchmarks.decode_throughput [--messages 2000] [--pool-workers 2]

Writes benchmarks/results/decode_throughput.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def shared_data() -> Path:
    return Path(os.environ.get("ASTROCLF_SHARED_DATA", ROOT.parent / "shared" / "data"))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--batch-size", type=int, default=500, help="messages per worker micro-batch (as stream)"
    )
    parser.add_argument("--pool-workers", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/decode_throughput.json"
    )
    args = parser.parse_args()

    import cramjam
    import fastavro
    import numpy
    import pyarrow

    from astro_classifier.formats.avro import clear_schema_cache, decode_avro_container
    from astro_classifier.formats.registry import decode_message, decode_micro_batch
    from astro_classifier.formats.ztf import EXPECTED, decode_ztf_avro_bytes, ztf_records_to_batch
    from astro_classifier.stream.decoding import DecodePool

    files = sorted((shared_data() / "alerts/ztf").rglob("*.avro"))
    values = [p.read_bytes() for p in files]
    values = (values * (-(-args.messages // len(values))))[: args.messages]
    items = [(v, f"alerts[0]@{k}") for k, v in enumerate(values)]
    mean_kb = sum(map(len, values)) / len(values) / 1000
    print(
        f"{len(values)} messages from {len(files)} real ZTF alert files "
        f"({mean_kb:.1f} kB on average)"
    )

    pool = DecodePool(args.pool_workers, "ztf-avro").start()

    def plain() -> None:
        for v in values:
            list(fastavro.reader(io.BytesIO(v)))

    def cached_whole() -> None:
        for v in values:
            decode_avro_container(v, "m", EXPECTED)

    def cached_projected() -> None:
        for v in values:
            decode_ztf_avro_bytes(v, "m")

    def to_batch() -> None:
        for v in values:
            ztf_records_to_batch(decode_ztf_avro_bytes(v, "m"), "m")

    def to_light_curves() -> None:
        for v, source in items:
            decode_message(v, "ztf-avro", None, source)

    def micro_batches() -> None:
        for start in range(0, len(items), args.batch_size):
            decode_micro_batch(items[start : start + args.batch_size], "ztf-avro", None)

    def pooled() -> None:
        for start in range(0, len(items), args.batch_size):
            results = pool.decode(items[start : start + args.batch_size])
            assert results.count == len(items[start : start + args.batch_size])

    methods: dict[str, tuple[Callable[[], None], int]] = {
        "fastavro.reader, full records": (plain, 1),
        "astroclf, schema cached, full records": (cached_whole, 1),
        "astroclf, schema cached + projected records": (cached_projected, 1),
        "astroclf decode + ztf_records_to_batch, 1 process": (to_batch, 1),
        "astroclf decode_message (to light curves), 1 process": (to_light_curves, 1),
        "astroclf decode_micro_batch, 1 process": (micro_batches, 1),
        f"astroclf decode_micro_batch, pool of {args.pool_workers}": (pooled, args.pool_workers),
    }
    clear_schema_cache()
    for run, _ in methods.values():  # warm: schema caches, imports, pool
        run()
    best = {name: float("inf") for name in methods}
    for r in range(args.rounds):
        for name, (run, _) in methods.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
        print(f"round {r + 1}/{args.rounds} done")
    pool.close()

    base = len(values) / best["fastavro.reader, full records"]
    rows = {}
    print(f"\n{'method':55s} {'msg/s':>8s} {'per core':>9s} {'vs fastavro':>11s}")
    for name, (_, processes) in methods.items():
        rate = len(values) / best[name]
        rows[name] = {
            "messages_per_s": rate,
            "processes": processes,
            "per_core_messages_per_s": rate / processes,
            "ratio_vs_fastavro_reader": rate / base,
        }
        print(f"{name:55s} {rate:8.0f} {rate / processes:9.0f} {rate / base:10.2f}x")

    load = os.getloadavg()
    result = {
        "messages": len(values),
        "files": len(files),
        "mean_message_kb": mean_kb,
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "methods": rows,
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "load_average_1_5_15": load,
            "niceness": os.nice(0),
        },
        "versions": {
            "python": platform.python_version(),
            "fastavro": fastavro.__version__,
            "numpy": numpy.__version__,
            "pyarrow": pyarrow.__version__,
            "cramjam": cramjam.__version__,
        },
    }
    print(f"machine: {result['machine']}\nversions: {result['versions']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
