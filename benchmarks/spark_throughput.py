"""Spark throughput: astro_classifier.spark on a local Spark against one process, same rows.

The rows: the real ZTF alerts of the shared data (fink-v4.02, 561 alerts, cutouts kept as a
data lake keeps them) repeated ``--repeat`` times, written as a Parquet folder of
``--files`` files in a temporary directory. One run measures, over exactly those rows:

1. ``classify()`` today: every file read whole by the registry, then one ``classify()``
   (all cores: ONNX Runtime's default threads, features on every core);
2. the streamed core in one process (``astroclf classify`` on the folder): Arrow batches of
   ``--rows-per-batch`` rows through ``classify_batches``, same threads as 1;
3. Spark (``--master``, default ``local[2]``), one ONNX Runtime thread per task, each
   repetition a fresh job on a warm session: ``classify_dataframe`` into Spark's ``noop``
   sink (the classification alone), then ``write_parquet`` (classified and error folders
   and the counts: what a user runs), projected (the default: ``spark.read.parquet`` then
   the projection in ``classify_dataframe``), read projected (``read_alerts``: the pruned
   schema given to the reader, what ``classify_parquet`` and ``classify --spark`` do) and,
   once, unprojected (``project=False``). The session start and the first job (Python workers start, model
   loads) are reported apart; the machine's load average too (shared machines). While Spark runs, a sampler reads the resident memory (RSS, /proc) of
   the Spark JVM and of each Python worker every 0.2 s: the peaks are the memory per worker.

Every Spark result is checked against ``classify()``: same alerts, same classes, max |dp|.

    python -m benchmarks.spark_throughput [--master local[2]] [--repeat 10] [--runs 3]

Writes benchmarks/results/spark_throughput.json (``--tag`` adds a suffix, e.g. local16).
Needs the ``spark`` extra and Java 17 or 21 (JAVA_HOME).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ASTROCLF_SHARED_DATA", ROOT.parent / "shared" / "data"))


def build_lake(folder: Path, repeat: int, files: int) -> int:
    """The shared fink-v4.02 alerts, ``repeat`` times, as ``files`` Parquet files."""
    records = []
    for path in sorted((SHARED / "alerts/ztf/fink-v4.02").glob("*.avro")):
        with path.open("rb") as stream:
            records += list(fastavro.reader(stream))
    table = pa.Table.from_pylist(records)
    table = pa.concat_tables([table] * repeat)
    folder.mkdir(parents=True)
    step = -(-table.num_rows // files)
    for k in range(files):
        pq.write_table(table.slice(k * step, step), folder / f"part-{k:05d}.parquet")
    return table.num_rows


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class MemorySampler:
    """Peak RSS of the Spark JVM and of each pyspark Python worker (by pid), sampled."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.jvm_peak = 0.0
        self.workers: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                pid = int(entry)
                cmd = _cmdline(pid)
                if (
                    "org.apache.spark.deploy.SparkSubmit" in cmd
                    or "pyspark-shell" in cmd
                    and "java" in cmd
                ):
                    self.jvm_peak = max(self.jvm_peak, _rss_mb(pid))
                elif "pyspark.daemon" in cmd or "pyspark/daemon" in cmd or "pyspark.worker" in cmd:
                    self.workers[pid] = max(self.workers.get(pid, 0.0), _rss_mb(pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        peaks = sorted(self.workers.values(), reverse=True)
        return {
            "jvm_peak_rss_mb": round(self.jvm_peak, 1),
            "python_worker_peak_rss_mb": [round(p, 1) for p in peaks],
            "python_workers_seen": len(peaks),
        }


def compare(got: pa.Table, expected: pa.Table) -> dict:
    got, expected = (t.sort_by([("alert_id", "ascending")]) for t in (got, expected))
    same_ids = got.column("alert_id").to_pylist() == expected.column("alert_id").to_pylist()
    if not same_ids:
        return {"same_alerts": False}
    probs = [
        n for n in expected.column_names if n.startswith("prob_") and expected[n].null_count == 0
    ]
    dp = max(float(np.abs(got[n].to_numpy() - expected[n].to_numpy()).max()) for n in probs)
    mismatches = sum(
        a != b for a, b in zip(got["class"].to_pylist(), expected["class"].to_pylist(), strict=True)
    )
    return {"same_alerts": True, "max_abs_dp": dp, "class_mismatches": mismatches}


def _safe_text(exc: BaseException) -> str:
    """The text of an exception; a Py4J error whose JVM has died cannot even say it."""
    try:
        return str(exc)
    except Exception:
        cause = exc.__cause__ or exc.__context__
        return f"{type(exc).__name__} (the JVM is gone; cause: {type(cause).__name__})"


def spark_job(spark, lake, work, label, project, args, rows, reference) -> dict:
    """``write_parquet(classify_dataframe(...))`` timed ``args.runs`` times after one
    untimed first job, with the memory sampler running; checked against ``reference``."""
    from astro_classifier.spark import classify_dataframe, read_alerts, write_parquet

    times, check, counts, first = [], None, None, 0.0
    n_runs = args.runs if project else 1
    with MemorySampler() as memory:
        for k in range(n_runs + 1):  # the first job starts the workers: not timed
            target = work / f"out-{label}-{k}"
            t0 = time.perf_counter()
            if project == "read":  # the pruned schema given to the reader (classify_parquet)
                df = read_alerts(spark, str(lake))
            else:
                df = spark.read.parquet(str(lake))
            counts = write_parquet(
                classify_dataframe(df, args.model, project=bool(project)), str(target)
            )
            elapsed = time.perf_counter() - t0
            if k == 0:
                check = compare(pq.read_table(target), reference)
                first = elapsed
            else:
                times.append(elapsed)
            shutil.rmtree(target, ignore_errors=True)
            shutil.rmtree(str(target) + "_errors", ignore_errors=True)
    result = {
        "first_job_s": first,
        "seconds": times,
        "rows_per_s_best": rows / min(times),
        "rows_per_s_median": rows / float(np.median(times)),
        "classified": counts.classified,
        "errors": counts.errors,
        "check_vs_classify": check,
        "memory": memory.summary(),
    }
    print(
        f"spark {args.master} {label}: {rows / min(times):,.0f} rows/s (best of "
        f"{len(times)}), first job {first:.1f} s, {check}, {memory.summary()}"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--model", default="atat-ztf")
    parser.add_argument("--repeat", type=int, default=10, help="copies of the 561 alerts")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3, help="timed repetitions of each path")
    parser.add_argument("--rows-per-batch", type=int, default=10_000)
    parser.add_argument("--driver-memory", default="2g")
    parser.add_argument(
        "--max-partition-bytes",
        default="32m",
        help="spark.sql.files.maxPartitionBytes: Spark's default (128m) packs this lake into 3 "
        "uneven tasks on 2 cores; smaller splits balance them",
    )
    parser.add_argument("--tag", default="")
    parser.add_argument("--skip-single", action="store_true", help="Spark only")
    args = parser.parse_args()

    from astro_classifier.formats.registry import read_light_curves
    from astro_classifier.inference.arrow_batches import (
        BatchCounts,
        classify_batches,
        project_schema,
        split_errors,
    )
    from astro_classifier.inference.classify import classify
    from astro_classifier.inference.model import LoadedModel

    work = Path(tempfile.mkdtemp(prefix="spark-throughput-"))
    out: dict = {
        "load_average_at_start": os.getloadavg(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "java_home": os.environ.get("JAVA_HOME"),
        },
        "master": args.master,
        "model": args.model,
    }
    try:
        lake = work / "lake"
        rows = build_lake(lake, args.repeat, args.files)
        files = sorted(lake.glob("*.parquet"))
        out["rows"] = rows
        out["lake_bytes"] = sum(f.stat().st_size for f in files)
        print(f"{rows} rows in {len(files)} files, {out['lake_bytes'] / 1e6:.0f} MB")

        # 1. classify() today, and 2. the streamed core, in this process
        model = LoadedModel.load(args.model, provider="cpu")
        reference = None
        if not args.skip_single:
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                reference = classify(read_light_curves(files), model).to_arrow()
                times.append(time.perf_counter() - t0)
            out["classify_whole"] = {
                "seconds": times,
                "rows_per_s_best": rows / min(times),
                "rows_per_s_median": rows / float(np.median(times)),
            }
            print(f"classify() whole: {rows / min(times):,.0f} rows/s (best of {args.runs})")
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                counts = BatchCounts()
                for file in files:
                    parquet = pq.ParquetFile(file)
                    columns = project_schema(parquet.schema_arrow, "ztf-parquet").names
                    for result in classify_batches(
                        parquet.iter_batches(batch_size=args.rows_per_batch, columns=columns),
                        model,
                        format="ztf-parquet",
                        n_jobs=-1,
                        counts=counts,
                    ):
                        split_errors(result)
                times.append(time.perf_counter() - t0)
            out["streamed_one_process"] = {
                "seconds": times,
                "rows_per_s_best": rows / min(times),
                "rows_per_s_median": rows / float(np.median(times)),
            }
            print(f"streamed core, one process: {rows / min(times):,.0f} rows/s")
        if reference is None:
            reference = classify(read_light_curves(files), model).to_arrow()

        # 3. Spark
        from pyspark.sql import SparkSession

        from astro_classifier.spark import classify_dataframe

        t0 = time.perf_counter()
        spark = (
            SparkSession.builder.master(args.master)
            .appName("astroclf-spark-throughput")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", "2")
            .config("spark.driver.memory", args.driver_memory)
            .config("spark.sql.files.maxPartitionBytes", args.max_partition_bytes)
            .getOrCreate()
        )
        spark.sparkContext.setLogLevel("ERROR")
        out["spark_session_start_s"] = time.perf_counter() - t0
        out["spark_partitions"] = spark.read.parquet(str(lake)).rdd.getNumPartitions()
        out["max_partition_bytes"] = args.max_partition_bytes
        # classification alone: Spark's noop sink runs the whole job and writes nothing
        noop = []
        for _ in range(args.runs + 1):
            t0 = time.perf_counter()
            classify_dataframe(spark.read.parquet(str(lake)), args.model).write.format("noop").mode(
                "overwrite"
            ).save()
            noop.append(time.perf_counter() - t0)
        out["spark_noop_sink"] = {
            "first_job_s": noop[0],
            "seconds": noop[1:],
            "rows_per_s_best": rows / min(noop[1:]),
            "rows_per_s_median": rows / float(np.median(noop[1:])),
        }
        print(f"spark {args.master} classify only (noop sink): {rows / min(noop[1:]):,.0f} rows/s")
        spark_runs: dict = {}
        out["spark"] = spark_runs
        for label, project in (
            ("projected", True),
            ("read_alerts", "read"),
            ("unprojected", False),
        ):
            try:
                spark_runs[label] = spark_job(
                    spark, lake, work, label, project, args, rows, reference
                )
            except Exception as exc:  # the unprojected job can exhaust the JVM heap
                text = _safe_text(exc)
                first = next((line for line in text.splitlines() if line.strip()), "")
                cause = [line.strip() for line in text.splitlines() if "Caused by" in line]
                spark_runs[label] = {"failed": first[:300], "causes": cause[:3]}
                print(f"spark {args.master} {label}: FAILED {first[:200]} {cause[:2]}")
                break
        with contextlib.suppress(Exception):  # a JVM that died of a failure above is gone
            spark.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["load_average_at_end"] = os.getloadavg()
    name = "spark_throughput" + (f"_{args.tag}" if args.tag else "") + ".json"
    path = ROOT / "benchmarks" / "results" / name
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
