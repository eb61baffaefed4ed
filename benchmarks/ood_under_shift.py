"""Does "I don't know" fire when the model is wrong on a source it never saw?

For a model and the real sources of the shortcut meter, every object is classified as read,
and three scores are compared as predictors of a wrong fine class:

- ``energy``: the model's own ``ood_score`` (``-logsumexp(logits)``, what serving abstains on);
- ``swap``: disagreement across processings: the object is also rendered as an alert, as
  sparse cadence and as detections only (``data/render.py``, fixed seed), and the score is
  the mean total-variation distance between the as-read probabilities and each rendering's
  (0: the answer does not depend on the processing; 1: it flips completely);
- ``1 - p_max``: one minus the top probability.

Reported per source and over all of them: AUROC of each score for wrong-vs-right (target
≥ 0.80), and the accuracy kept at 80 % coverage (the 20 % of objects with the highest score
set aside); the risk–coverage curves are drawn to a PNG beside the JSON.

Usage::

    python benchmarks/ood_under_shift.py --model runs/loso/ztf-bts-antares/model.onnx \
        [--sources ztf-bts-antares osc-sne] [--max-per-source 600] [--out ...json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from astro_classifier.core.lightcurve import LightCurveBatch
from astro_classifier.features.render import render
from astro_classifier.inference.classify import classify
from astro_classifier.inference.model import LoadedModel
from astro_classifier.training.config import TrainConfig
from benchmarks.baseline_features import machine_info, shared_data_dir
from benchmarks.shortcut_meter import SOURCES, read_sources

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = PROJECT_ROOT / "benchmarks" / "results" / "ood_under_shift.json"
SWAP = ("alert", "sparse", "detections")
COVERAGE = 0.8
SEED = 0


def probabilities(model: LoadedModel, batch: LightCurveBatch) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) probabilities (NaN rows where classify() skipped the object), (N,) ood_score."""
    labels = list(model.metadata.labels)
    result = classify(batch, model, n_jobs=2)
    proba = np.full((len(batch), len(labels)), np.nan)
    proba[result.rows] = result.probabilities
    ood = np.full(len(batch), np.nan)
    ood[result.rows] = result.ood_score
    return proba, ood


def scores(model: LoadedModel, batch: LightCurveBatch) -> dict[str, np.ndarray]:
    proba, energy = probabilities(model, batch)
    distances = []
    for processing in SWAP:
        other, _ = probabilities(
            model, render(batch, processing, np.random.default_rng(SEED), baseline=None)
        )
        distances.append(0.5 * np.abs(other - proba).sum(axis=1))
    labels = np.asarray(model.metadata.labels)
    predicted = np.where(
        np.isfinite(proba).all(axis=1), labels[np.nan_to_num(proba).argmax(axis=1)], ""
    )
    return {
        "correct": predicted == batch.label,
        "classified": np.isfinite(proba).all(axis=1),
        "energy": energy,
        "swap": np.nanmean(np.stack(distances), axis=0),
        "1 - p_max": 1.0 - np.nanmax(np.nan_to_num(proba, nan=-1.0), axis=1),
    }


def summary(s: dict[str, np.ndarray]) -> dict[str, Any]:
    ok = s["classified"] & np.isfinite(s["swap"])
    wrong = ~s["correct"][ok]
    out: dict[str, Any] = {"n": int(ok.sum()), "accuracy": float(s["correct"][ok].mean())}
    for name in ("energy", "swap", "1 - p_max"):
        score = s[name][ok]
        auroc = float(roc_auc_score(wrong, score)) if 0 < wrong.sum() < len(wrong) else None
        keep = score <= np.quantile(score, COVERAGE)
        out[name] = {
            "auroc_wrong": auroc,
            "accuracy_at_80pct_coverage": float((~wrong[keep]).mean()) if keep.any() else None,
        }
    return out


def risk_coverage_plot(curves: dict[str, dict[str, np.ndarray]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, (coverage, accuracy) in curves.items():
        ax.plot(coverage, accuracy, label=name)
    ax.set_xlabel("coverage (objects answered)")
    ax.set_ylabel("accuracy on the objects answered")
    ax.set_title(title, fontsize=9)
    ax.axvline(COVERAGE, color="grey", lw=0.5, ls="--")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def curve(score: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(score, kind="stable")
    kept = np.cumsum(correct[order])
    n = np.arange(1, len(order) + 1)
    return n / len(order), kept / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model name or path")
    parser.add_argument("--sources", nargs="+", choices=[s.name for s in SOURCES], default=None)
    parser.add_argument("--max-per-source", type=int, default=600)
    parser.add_argument("--test-split", action="store_true", help="real-sky test split only")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    data = args.data or shared_data_dir()
    os.environ["ASTROCLF_SHARED_DATA"] = str(data)
    cfg = TrainConfig.from_yaml(PROJECT_ROOT / "configs" / "atat_ztf.yaml")
    sources = read_sources(data, dict(cfg.data.label_map), args.max_per_source)
    if args.sources:
        sources = {k: v for k, v in sources.items() if k in args.sources}
    if args.test_split:
        from astro_classifier.catalogs.splits import real_sky_split

        sources = {
            k: v.select(np.flatnonzero(real_sky_split(v.object_id))) for k, v in sources.items()
        }
    model = LoadedModel.load(args.model, provider="cpu", threads=2)
    per_source, pooled = {}, []
    for name, batch in sources.items():
        s = scores(model, batch)
        per_source[name] = summary(s)
        pooled.append(s)
        print(f"{name}: {per_source[name]}", file=sys.stderr, flush=True)
    allscores = {k: np.concatenate([p[k] for p in pooled]) for k in pooled[0]}
    result = {
        "benchmark": "ood_under_shift",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": args.model,
        "model_version": model.metadata.version,
        "args": vars(args) | {"out": str(args.out), "data": str(data)},
        "swap_processings": SWAP,
        "all": summary(allscores),
        "sources": per_source,
        "machine": machine_info(),
        "runtime_seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    ok = allscores["classified"] & np.isfinite(allscores["swap"])
    curves = {
        name: curve(allscores[name][ok], allscores["correct"][ok])
        for name in ("energy", "swap", "1 - p_max")
    }
    png = args.out.with_suffix(".png")
    risk_coverage_plot(curves, png, f"{args.model}: {', '.join(sources)}")
    print(json.dumps(result["all"], indent=2))
    print(f"wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
