"""What serving a model with an image tower costs: decoding the stamps, and the tower.

On the real ZTF alert messages (every ``*.avro`` under ``alerts/ztf``, one message each), in
one run, on one core (``--threads``):

1. decoding, as the worker does it (``decode_message``): light curves only (what every model
   without an image tower gets) against light curves + stamps (``cutout_size``), alerts/s
   and the ratio;
2. ``classify()`` of the decoded alerts by the image model, stamps present (every tower runs)
   against the same model with the stamps absent, and against ``--baseline`` (a model
   without an image tower, default the shipped atat-ztf), objects/s.

    python -m benchmarks.image_serving --model clip-ztf-alerts-solar.onnx

Writes benchmarks/results/image_serving.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from astro_classifier.core.lightcurve import LightCurveBatch
from astro_classifier.formats.registry import decode_message
from astro_classifier.inference.classify import classify
from astro_classifier.inference.model import LoadedModel

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "benchmarks" / "results"


def best_rate(fn, n: int, repeats: int) -> float:
    """Items per second of the fastest of ``repeats`` runs of ``fn`` (which handles n)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="an exported model with an image tower")
    ap.add_argument("--baseline", default="atat-ztf", help="a model without one")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "image_serving.json")
    args = ap.parse_args()
    import onnxruntime

    shared = Path(os.environ.get("ASTROCLF_SHARED_DATA", ROOT.parent / "shared" / "data"))
    values = [p.read_bytes() for p in sorted((shared / "alerts" / "ztf").glob("**/*.avro"))]
    model = LoadedModel.load(args.model, provider="cpu", threads=args.threads)
    baseline = LoadedModel.load(args.baseline, provider="cpu", threads=args.threads)
    if not model.needs_images:
        raise SystemExit(f"{args.model} has no image tower")
    size = int(model.metadata.image_size or 63)

    def decode(cutout_size):
        return [
            decode_message(v, "ztf-avro", None, f"m{i}", cutout_size) for i, v in enumerate(values)
        ]

    n = len(values)
    decode(None), decode(size)  # warm the schema cache
    rate_plain = best_rate(lambda: decode(None), n, args.repeats)
    rate_stamps = best_rate(lambda: decode(size), n, args.repeats)
    with_stamps = LightCurveBatch.concat(decode(size))
    without = LightCurveBatch.concat(decode(None))
    n_obj = len(with_stamps)
    classify(with_stamps, model, n_jobs=1)  # warm-up
    rate_image = best_rate(lambda: classify(with_stamps, model, n_jobs=1), n_obj, args.repeats)
    rate_absent = best_rate(lambda: classify(without, model, n_jobs=1), n_obj, args.repeats)
    classify(without, baseline, n_jobs=1)
    rate_base = best_rate(lambda: classify(without, baseline, n_jobs=1), n_obj, args.repeats)
    result = {
        "benchmark": "image_serving",
        "command": " ".join(["python -m benchmarks.image_serving", *sys.argv[1:]]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
        },
        "messages": n,
        "decode_alerts_per_s": {"light_curves": rate_plain, "light_curves_and_stamps": rate_stamps},
        "decode_ratio_plain_over_stamps": rate_plain / rate_stamps,
        "classify_objects_per_s": {
            f"{model.metadata.name} with stamps": rate_image,
            f"{model.metadata.name} stamps absent": rate_absent,
            f"{baseline.metadata.name} (no image tower)": rate_base,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
