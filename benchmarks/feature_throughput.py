"""Light-curve features per object: the batch (array) implementation vs the light-curve
package one object at a time, side by side, and the host side of ``classify()``.

One run measures, on the same machine and the same light curves (real ZTF alert light curves
of ``$ASTROCLF_SHARED_DATA/alerts/ztf``, repeated to ``--objects``, as ``atat-ztf`` sees them:
its bands, nightly binned; and a random PLAsTiCC sample as ``atat-lsst`` sees them):

1. features alone, objects/s: ``compute_light_curve_features`` (segment reductions over the
   flat point arrays) against ``reference_light_curve_features`` (``light_curve.Extractor.many``,
   what serving called before), each with 1 thread and with ``--threads`` threads; ratio;
2. agreement of the two on these objects (max relative difference, NaN mismatches);
3. the host side of ``classify()``: everything except the ONNX Runtime calls (band filter,
   nightly binning, features, bucketing and padding, outputs), objects/s, from the
   ``Timings`` classify() records. On a GPU the model calls are cheap, so this rate bounds
   ``classify()``: with model-only rate M and host rate H, end to end is 1 / (1/M + 1/H).

    python -m benchmarks.feature_throughput [--objects 20000] [--threads 2]

Writes benchmarks/results/feature_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np

from benchmarks.classify_throughput import ROOT, best_of, shared_data, versions
from benchmarks.decode_throughput import cpu_model


def warm_best_of(fn, repeats: int) -> float:
    """Fastest wall time of ``repeats`` calls (seconds), after one untimed warm-up call."""
    fn()
    return best_of(fn, repeats)


def measure(name: str, batch, model, threads: int, repeats: int) -> dict:
    from astro_classifier.features.lc_features import (
        compute_light_curve_features,
        reference_light_curve_features,
    )
    from astro_classifier.features.preprocess import keep_model_bands
    from astro_classifier.inference.classify import classify

    spec = model.metadata.preprocessing
    prepared, _ = keep_model_bands(batch, spec)
    n = len(prepared)
    out: dict = {
        "objects": n,
        "mean_points": float(prepared.lengths.mean()),
        "bands": list(spec.bands),
    }
    for jobs in sorted({1, threads}):
        ours = warm_best_of(
            lambda j=jobs: compute_light_curve_features(prepared, spec.bands, j), repeats
        )
        ref = warm_best_of(
            lambda j=jobs: reference_light_curve_features(prepared, spec.bands, j), repeats
        )
        out[f"threads_{jobs}"] = {
            "batch_objects_per_s": n / ours,
            "package_objects_per_s": n / ref,
            "ratio": ref / ours,
        }
        print(
            f"{name}, {jobs} thread(s): batch {n / ours:,.0f}/s, package {n / ref:,.0f}/s, "
            f"x{ref / ours:.1f}",
            flush=True,
        )
    a = compute_light_curve_features(prepared, spec.bands)
    b = reference_light_curve_features(prepared, spec.bands)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(a.astype(np.float64) - b) / np.maximum(np.abs(b), 1e-6)
    out["agreement"] = {
        "max_relative_difference": float(np.nanmax(rel)) if np.isfinite(rel).any() else 0.0,
        "nan_mismatches": int((np.isnan(a) != np.isnan(b)).sum()),
        "values": int(a.size),
    }
    # the host side of classify(): its total minus the time inside ONNX Runtime
    hosts = []
    for _ in range(repeats):
        predictions = classify(batch, model, batch_size=4096, n_jobs=threads)
        t = predictions.timings
        hosts.append((t.total - t.inference, t.features, t.inference, t.total))
    host, features, inference, total = min(hosts)
    out["classify"] = {
        "host_objects_per_s": len(batch) / host,
        "features_s": features,
        "host_s": host,
        "inference_cpu_s": inference,
        "total_s": total,
        "end_to_end_objects_per_s_cpu": len(batch) / total,
    }
    print(
        f"{name}: classify() host side {len(batch) / host:,.0f} objects/s "
        f"(features {features * 1e3:.0f} ms of {host * 1e3:.0f} ms host, "
        f"CPU model calls {inference * 1e3:.0f} ms)",
        flush=True,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--objects", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "feature_throughput.json"
    )
    args = parser.parse_args(argv)

    from astro_classifier.formats.plasticc import read_plasticc
    from astro_classifier.formats.registry import read_light_curves
    from astro_classifier.inference.model import LoadedModel

    data = shared_data()
    alerts = read_light_curves(sorted((data / "alerts" / "ztf").rglob("*.avro")))
    ztf = alerts.select(np.arange(args.objects) % len(alerts))
    folder = data / "lightcurves" / "plasticc"
    plasticc = read_plasticc(
        folder / "plasticc_train_lightcurves.csv.gz", folder / "plasticc_train_metadata.csv.gz"
    )
    pick = np.random.default_rng(0).permutation(len(plasticc))[: args.objects]
    plasticc = plasticc.select(np.sort(pick))
    result = {
        "command": "python -m benchmarks.feature_throughput "
        f"--objects {args.objects} --threads {args.threads} --provider {args.provider}",
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform()},
        "versions": versions(),
        "ztf_alerts_atat_ztf": measure(
            "ZTF alerts (atat-ztf)",
            ztf,
            LoadedModel.load("atat-ztf", provider=args.provider),
            args.threads,
            args.repeats,
        ),
        "plasticc_atat_lsst": measure(
            "PLAsTiCC (atat-lsst)",
            plasticc,
            LoadedModel.load("atat-lsst", provider=args.provider),
            args.threads,
            args.repeats,
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
