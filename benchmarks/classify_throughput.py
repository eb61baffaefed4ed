"""Classify throughput at real PLAsTiCC lengths: ONNX Runtime vs torch eager, side by side.

One run measures, on the same machine and the same light curves:

1. features: light-curve feature extraction alone (objects/s), per-band set vs the same set
   plus a direct periodogram (what we chose not to pay for);
2. classify(): the whole serving path of the shipped model (features + buckets + ONNX Runtime);
3. input assembly alone (bucketing and padding, no features, no model); model calls only,
   on identical padded inputs: ONNX Runtime vs torch eager with the same architecture
   (ratio), at batch 512, and optionally against another export of the model (--compare);
4. padding efficiency (real tokens / padded tokens) of the serving buckets vs one
   padded call per batch of objects in file order.

    python -m benchmarks.classify_throughput [--model atat-lsst] [--provider cpu|cuda] [--objects N]

Writes benchmarks/results/classify_throughput_<model>_<provider>.json. torch is needed for
part 3 only (the `train` extra); without it that part is skipped.

GPU options (benchmarks/gpu_suite.sh runs them): ``--form`` picks the graph (auto: the dense
CUDA companion on CUDA; gather: the main file; dense: the companion), ``--cuda-graph``
captures the calls as CUDA graphs (CUDA only, a dense or float16 graph), ``--tf32`` lets CUDA
run float32 products in TF32 (off by default, see ``cuda_provider_options``);
``--batch-sizes 2048,4096,8192`` times the model calls at each batch size (``model_only``),
and ``--model-only`` skips the features, ``classify()`` and torch parts.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def shared_data() -> Path:
    return Path(os.environ.get("ASTROCLF_SHARED_DATA", ROOT.parent / "shared" / "data"))


def best_of(fn, repeats: int = 3) -> float:
    """Fastest wall time of ``repeats`` calls (seconds)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def interleaved_rounds(contenders: dict, rounds: int) -> dict[str, list[float]]:
    """Wall times of each contender over ``rounds`` rounds, one call of each per round (after
    one untimed warm-up call each)."""
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def median_ratio(slower: list[float], faster: list[float]) -> float:
    """Median over rounds of slower/faster time (the same round's two calls)."""
    return float(np.median(np.asarray(slower) / np.asarray(faster)))


def versions() -> dict[str, str]:
    import light_curve
    import onnxruntime

    out = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "light-curve": light_curve.__version__,
    }
    try:
        import torch

        out["torch"] = torch.__version__
    except ImportError:
        pass
    return out


def attention_ops(path: Path) -> str:
    """Which attention a graph holds: the fused ONNX Runtime kernel or decomposed ops."""
    import onnx

    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    return "MultiHeadAttention (fused)" if "MultiHeadAttention" in ops else "decomposed"


def graph_description(model) -> dict:
    """Which file and form a loaded model serves."""
    meta, path = model.metadata, model.path
    return {
        "precision": meta.precision,
        # dense: the CUDA companion; training: the float16 companion (one-hot tokens too)
        "graph_form": meta.graph_form or ("training" if meta.precision == "fp16" else "gather"),
        "graph": path.name if path.parent.name == "models" else f"{path.parent.name}/{path.name}",
    }


def parse_variant(spec: str) -> dict:
    """``FORM[+graph][+tf32]`` (FORM: gather, dense, fp16) -> LoadedModel.load arguments."""
    form, *flags = spec.split("+")
    unknown = set(flags) - {"graph", "tf32"}
    if form not in ("gather", "dense", "fp16") or unknown:
        raise SystemExit(f"--variants: cannot read {spec!r} (FORM[+graph][+tf32])")
    load = {"precision": "fp16"} if form == "fp16" else {"precision": "fp32", "form": form}
    return load | {"cuda_graph": "graph" in flags, "tf32": "tf32" in flags}


def time_model_calls(model, calls_by_size: dict[int, list], n: int, rounds: int) -> dict:
    """Objects/s of ``model``'s calls alone at each batch size: best of ``rounds`` after two
    untimed passes (the first call of a shape allocates; with CUDA graphs the second
    captures it)."""
    out = {}
    for size, sized in calls_by_size.items():

        def call_all(sized: list = sized) -> None:
            for x in sized:
                model.predict(x)

        call_all()
        call_all()
        t = min(interleaved_rounds({"m": call_all}, rounds)["m"])
        out[str(size)] = {"objects_per_s": n / t, "calls": len(sized)}
    return out


def run_variants(args, batch, loaded_main, result: dict) -> None:
    """``--variants``: the model calls of every variant on the same padded calls (built once
    per batch size), one after the other; a variant that fails is recorded, not fatal."""
    from astro_classifier.features.preprocess import keep_model_bands, tabular_features
    from astro_classifier.inference.classify import bucketed_inputs
    from astro_classifier.inference.model import LoadedModel

    meta, spec = loaded_main.metadata, loaded_main.metadata.preprocessing
    for name in args.variants.split(","):  # refuse a misspelt variant before any work
        parse_variant(name)
    in_bands, _ = keep_model_bands(batch, spec)
    tab = tabular_features(in_bands, spec)
    sizes = [int(b) for b in (args.batch_sizes or str(args.batch_size)).split(",")]
    calls_by_size = {
        size: [x for _, x in bucketed_inputs(in_bands, spec, tab, meta.length_buckets, size)]
        for size in sizes
    }
    variants = {name: parse_variant(name) for name in args.variants.split(",")}
    result["variants"] = {}
    for name, load in variants.items():
        entry: dict = {}
        started = time.perf_counter()
        try:
            model = LoadedModel.load(args.model, provider=args.provider, **load)
            entry |= graph_description(model) | {"providers": model.providers}
            entry["model_only"] = time_model_calls(
                model, calls_by_size, len(batch), args.model_rounds
            )
            del model
            gc.collect()  # its sessions (and their device memory) go before the next variant's
        except Exception as exc:  # noqa: BLE001 - recorded in the result, the others still run
            entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["seconds"] = round(time.perf_counter() - started, 1)
        result["variants"][name] = entry
        rates = ", ".join(
            f"{b}: {v['objects_per_s']:,.0f}/s" for b, v in entry.get("model_only", {}).items()
        )
        print(
            f"{name}: {entry.get('graph', '')} {rates or entry.get('error')} ({entry['seconds']} s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="atat-lsst")
    parser.add_argument("--provider", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "fp16"],
        help="auto: the fp16 companion on CUDA when the model has one",
    )
    parser.add_argument("--objects", type=int, default=2000, help="PLAsTiCC objects to classify")
    parser.add_argument(
        "--data",
        default="plasticc",
        choices=["plasticc", "ztf-alerts"],
        help="plasticc: training-set light curves at their real lengths; ztf-alerts: the "
        "light curves of every real ZTF alert packet in the shared data (what the ZTF worker "
        "classifies), repeated to --objects",
    )
    parser.add_argument(
        "--form",
        default="auto",
        choices=["auto", "gather", "dense"],
        help="auto: the dense (CUDA) companion on CUDA when the model has one",
    )
    parser.add_argument(
        "--cuda-graph", action="store_true", help="capture the calls as CUDA graphs (CUDA only)"
    )
    parser.add_argument("--tf32", action="store_true", help="TF32 float32 products on CUDA")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--batch-sizes",
        default=None,
        help="comma-separated batch sizes to time the model calls at (default: --batch-size)",
    )
    parser.add_argument(
        "--model-only",
        action="store_true",
        help="only the model calls (and input assembly): no features, classify() or torch",
    )
    parser.add_argument("--no-torch", action="store_true", help="skip the torch eager comparison")
    parser.add_argument(
        "--variants",
        default=None,
        help="model calls only, for each of these graph variants on the same calls, e.g. "
        "gather,dense,dense+graph,dense+tf32,fp16,fp16+graph (FORM[+graph][+tf32]); "
        "ignores --form/--precision/--cuda-graph/--tf32",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="another .onnx of the same model (e.g. an earlier export): timed on the same calls",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed repeats of each step (best is kept)"
    )
    parser.add_argument(
        "--model-rounds",
        type=int,
        default=7,
        help="rounds of the model-call comparison; each round calls every runtime once",
    )
    args = parser.parse_args()

    from astro_classifier.features.lc_features import compute_light_curve_features
    from astro_classifier.features.preprocess import (
        keep_model_bands,
        tabular_features,
    )
    from astro_classifier.formats.plasticc import read_plasticc
    from astro_classifier.inference.classify import bucketed_inputs, classify
    from astro_classifier.inference.model import LoadedModel

    if args.data == "plasticc":
        plasticc = shared_data() / "lightcurves" / "plasticc"
        batch = read_plasticc(
            plasticc / "plasticc_train_lightcurves.csv.gz",
            plasticc / "plasticc_train_metadata.csv.gz",
        )
        # a random sample: the file is ordered, deep-drilling objects (352 points) first
        pick = np.random.default_rng(0).permutation(len(batch))[: args.objects]
        batch = batch.select(np.sort(pick))
    else:
        from astro_classifier.formats.registry import read_light_curves

        alerts = read_light_curves(sorted((shared_data() / "alerts" / "ztf").rglob("*.avro")))
        batch = alerts.select(np.arange(args.objects) % len(alerts))
    model = LoadedModel.load(
        args.model,
        provider=args.provider,
        precision=args.precision,
        form=args.form,
        cuda_graph=args.cuda_graph and not args.variants,
        tf32=args.tf32,
    )
    meta, spec = model.metadata, model.metadata.preprocessing
    batch_sizes = [int(b) for b in (args.batch_sizes or str(args.batch_size)).split(",")]
    n = len(batch)
    result: dict = {
        "model": meta.name,
        "provider": args.provider,
        **graph_description(model),
        "cuda_graph": args.cuda_graph,
        "tf32": args.tf32 if args.provider == "cuda" else None,
        "providers": model.providers,
        "objects": n,
        "data": args.data,
        "batch_size": args.batch_size,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "processor": platform.processor(),
        },
        "versions": versions(),
    }
    print(
        f"{n} objects ({args.data}), mean {batch.lengths.mean():.0f} points; model {meta.name}; "
        f"{model.providers}"
    )
    out = args.out or ROOT / "benchmarks" / "results" / (
        f"classify_throughput_{meta.name}_{args.provider}"
        f"{'' if args.data == 'plasticc' else '_' + args.data}"
        f"{'_variants' if args.variants else ''}.json"
    )
    if args.variants:
        for key in ("precision", "graph_form", "graph", "cuda_graph", "tf32", "providers"):
            result.pop(key)
        run_variants(args, batch, model, result)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")
        return

    # 1. features
    in_bands, _ = keep_model_bands(batch, spec)
    if not args.model_only:  # features and the whole classify() path
        t = best_of(lambda: compute_light_curve_features(in_bands, spec.bands))
        result["features_objects_per_s"] = n / t
        import light_curve as lc

        periodogram = lc.Extractor(
            lc.Periodogram(peaks=1, fast=False, nyquist="median", max_freq_factor=1.0)
        )
        sub = in_bands.select(np.arange(min(300, n)))
        curves = []
        for k in range(len(sub)):
            s = slice(sub.offsets[k], sub.offsets[k + 1])
            for b in range(len(spec.bands)):
                m = sub.band[s] == b
                if m.sum() >= 4:
                    curves.append(
                        (
                            sub.time[s][m],
                            sub.flux[s][m].astype(np.float64),
                            np.maximum(sub.flux_err[s][m].astype(np.float64), 1e-3),
                        )
                    )
        t_per = best_of(
            lambda: periodogram.many(curves, fill_value=np.nan, sorted=True, check=False, n_jobs=1),
            1,
        )
        result["periodogram_only_objects_per_s"] = len(sub) / t_per
        result["features_plus_periodogram_objects_per_s"] = 1 / (
            1 / result["features_objects_per_s"] + t_per / len(sub)
        )
        print(
            f"features: {result['features_objects_per_s']:,.0f} objects/s "
            f"(with a direct periodogram per band: {result['features_plus_periodogram_objects_per_s']:,.0f}/s)"
        )

        # 2. the whole classify() path
        classify(batch.select(np.arange(min(64, n))), model)  # warm-up
        holder = {}
        t = best_of(
            lambda: holder.setdefault("r", classify(batch, model, batch_size=args.batch_size))
        )
        r = holder["r"]
        result["classify_objects_per_s"] = n / t
        result["padding_efficiency_buckets"] = r.padding_efficiency
        print(f"classify(): {n / t:,.0f} objects/s, padding efficiency {r.padding_efficiency:.2f}")

    # padding without buckets: one call per batch in file order, padded to its longest curve
    lengths = np.minimum(in_bands.lengths, spec.max_length)
    padded = sum(
        len(lengths[i : i + args.batch_size]) * lengths[i : i + args.batch_size].max()
        for i in range(0, n, args.batch_size)
    )
    result["padding_efficiency_file_order"] = float(lengths.sum() / padded)
    print(f"padding efficiency without buckets: {result['padding_efficiency_file_order']:.2f}")

    # 3. model calls only: ONNX Runtime vs torch eager on identical bucketed inputs
    tab = tabular_features(in_bands, spec)

    def assemble() -> list:
        return [
            x for _, x in bucketed_inputs(in_bands, spec, tab, meta.length_buckets, args.batch_size)
        ]

    calls = assemble()
    t_asm = best_of(assemble, args.repeats)
    result["input_assembly_objects_per_s"] = n / t_asm
    print(f"input assembly alone (buckets, padding): {n / t_asm:,.0f} objects/s")
    # Model calls of each runtime, interleaved round by round (A, B, C, A, B, C, ...): this
    # machine's speed drifts by tens of percent within a minute, so each ratio is also
    # taken round by round, and the median of those is reported next to best / best.
    contenders = {"onnxruntime": lambda: [model.predict(x) for x in calls]}
    if args.cuda_graph:  # the first call of a shape allocates, the second captures its graph
        for fn in contenders.values():
            fn()
    if args.compare is not None:
        other = LoadedModel.load(args.compare, provider=args.provider)
        contenders["compare"] = lambda: [other.predict(x) for x in calls]
    result["attention_ops"] = attention_ops(model.path)
    try:
        import torch
    except ImportError:
        torch = None
        print("torch not installed: skipping the torch eager comparison", file=sys.stderr)
    if args.model_only or args.no_torch:
        torch = None
    if torch is not None and meta.modalities:
        print("multimodal (CLIP) model: the torch eager comparison covers ATAT models only")
    elif torch is not None:
        from astro_classifier.families.registry import create_model

        net = create_model(meta.architecture, **meta.architecture_config).eval()
        device = torch.device("cuda" if args.provider == "cuda" else "cpu")
        net.to(device)
        feeds = [{k: torch.from_numpy(v) for k, v in x.as_dict().items()} for x in calls]

        @torch.no_grad()
        def run_torch() -> None:
            for f in feeds:
                net(**{k: v.to(device) for k, v in f.items()}).cpu()
            if device.type == "cuda":
                torch.cuda.synchronize()

        contenders["torch_eager"] = run_torch
    rounds = interleaved_rounds(contenders, args.model_rounds)
    t_ort = min(rounds["onnxruntime"])
    result["model_call_rounds"] = args.model_rounds
    result["onnxruntime_model_objects_per_s"] = n / t_ort
    print(f"ONNX Runtime model calls: {n / t_ort:,.0f} objects/s (best of {args.model_rounds})")
    if "classify_objects_per_s" in result:
        result["classify_over_model_only"] = result["classify_objects_per_s"] / (n / t_ort)
        print(f"classify() end to end / model calls: {result['classify_over_model_only']:.3f}")
    # model calls alone at each batch size (the same light curves, the same buckets)
    calls_by_size = {
        size: calls
        if size == args.batch_size
        else [x for _, x in bucketed_inputs(in_bands, spec, tab, meta.length_buckets, size)]
        for size in batch_sizes
    }
    result["model_only"] = time_model_calls(model, calls_by_size, n, args.model_rounds)
    for size, v in result["model_only"].items():
        print(
            f"model calls at batch {size}: {v['objects_per_s']:,.0f} objects/s ({v['calls']} calls)"
        )
    if "compare" in rounds:
        t_other = min(rounds["compare"])
        result["compare"] = {
            "path": str(args.compare),
            "attention_ops": attention_ops(args.compare),
            "onnxruntime_model_objects_per_s": n / t_other,
            "this_over_compare": t_other / t_ort,
            "this_over_compare_median_of_rounds": median_ratio(
                rounds["compare"], rounds["onnxruntime"]
            ),
        }
        print(
            f"  {args.compare}: {n / t_other:,.0f} objects/s -> {t_other / t_ort:.2f}x "
            f"(median of rounds {result['compare']['this_over_compare_median_of_rounds']:.2f}x)"
        )
    if "torch_eager" in rounds:
        t_torch = min(rounds["torch_eager"])
        result["torch_eager_model_objects_per_s"] = n / t_torch
        result["onnxruntime_over_torch"] = t_torch / t_ort
        result["onnxruntime_over_torch_median_of_rounds"] = median_ratio(
            rounds["torch_eager"], rounds["onnxruntime"]
        )
        print(
            f"torch eager model calls: {n / t_torch:,.0f} objects/s "
            f"-> ONNX Runtime is {t_torch / t_ort:.2f}x torch eager "
            f"(median of rounds {result['onnxruntime_over_torch_median_of_rounds']:.2f}x)"
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
