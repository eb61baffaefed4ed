"""Does "I don't know" fire when the model is wrong on a source it never saw?

Every leave-one-source-out model (``runs/loso/<source>/model.onnx``, trained without that
source; ``benchmarks/loso_configs.py``) classifies the objects of its held-out source as
read, and four scores are compared as predictors of a wrong fine class:

- the model's own ``ood_score``, what serving abstains on (``mahalanobis_energy`` for models
  exported with the Gaussians: Mahalanobis distance of the head's embedding to the nearest
  class Gaussian plus the energy, each standardised on validation; see
  ``astro_classifier/export/gaussian_ood.py``);
- ``energy``: ``-logsumexp(logits)`` (what serving abstained on before);
- ``swap``: disagreement across processings: the object is also rendered as an alert, as
  sparse cadence and as detections only (``data/render.py``, fixed seed), and the score is
  the mean total-variation distance between the as-read probabilities and each rendering's
  (0: the answer does not depend on the processing; 1: it flips completely);
- ``1 - p_max``: one minus the top probability.

Reported per held-out source (its own model) and pooled over all of them: AUROC of each
score for wrong-vs-right (target ≥ 0.80; undefined for a source where every answer is wrong),
the accuracy kept at 80 % coverage (the 20 % of objects with the highest score set aside), and
for the model's scores the share above the abstention threshold (the 0.95 quantile of the
model's validation objects, whole light curves) and the accuracy of the objects below it. Pooling objects of different models needs
one scale: each model's ``ood_score``, ``energy`` and ``1 - p_max`` are expressed as
``(s - median) / (q95 - median)`` of that model's validation objects (1 = the abstention
threshold); ``swap`` is a distance between probabilities and pools as it is. The risk–coverage
curves of the pooled scores are drawn to a PNG beside the JSON.

Usage::

    python -m benchmarks.ood_under_shift --loso runs/loso [--max-per-source 600]
    python -m benchmarks.ood_under_shift --model runs/loso/ztf-bts-antares/model.onnx \
        [--sources ztf-bts-antares osc-sne] [--out ...json]

With ``--model``, the model classifies every named source (default: all); its validation
objects are read when the file sits in its run directory (``dataset.h5`` and the run record).
"""

from __future__ import annotations

import argparse
import dataclasses
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
from astro_classifier.inference.model import (
    OOD_ENERGY,
    LoadedModel,
    OODSpec,
    energy_score,
)
from astro_classifier.training.config import TrainConfig
from benchmarks.baseline_features import machine_info, shared_data_dir
from benchmarks.shortcut_meter import SOURCES, read_sources

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = PROJECT_ROOT / "benchmarks" / "results" / "ood_under_shift.json"
SWAP = ("alert", "sparse", "detections")
COVERAGE = 0.8
SEED = 0
ENERGY = "energy"
MODEL_FREE = ("swap", "1 - p_max")


def with_energy_rule(model: LoadedModel) -> LoadedModel:
    """The same session, abstaining on the energy score (its ``ood_score`` = energy)."""
    spec = OODSpec(score=OOD_ENERGY, threshold=np.inf, min_points=model.ood_spec().min_points)
    meta = model.metadata.model_copy(update={"ood": spec})
    return dataclasses.replace(model, metadata=meta)


def own_score(model: LoadedModel) -> str:
    """Name of the score the model abstains on."""
    return model.ood_spec().score


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
    """Per object: correct, classified, and every score (higher = less trusted)."""
    proba, own = probabilities(model, batch)
    out: dict[str, np.ndarray] = {}
    if own_score(model) == ENERGY:
        out[ENERGY] = own
    else:
        out[own_score(model)] = own
        out[ENERGY] = probabilities(with_energy_rule(model), batch)[1]
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
        **out,
        "swap": np.nanmean(np.stack(distances), axis=0),
        "1 - p_max": 1.0 - np.nanmax(np.nan_to_num(proba, nan=-1.0), axis=1),
    }


def validation_scores(model: LoadedModel, run_dir: Path) -> dict[str, np.ndarray] | None:
    """The model's scores on its run's validation objects (whole light curves), or None
    when ``run_dir`` is not the model's run directory."""
    from astro_classifier.export.onnx_export import validation_calls
    from astro_classifier.training.record import load_record

    if not (run_dir / "dataset.h5").is_file():
        return None
    try:
        record = load_record(run_dir)
    except FileNotFoundError:
        return None
    calls, y = validation_calls(run_dir, record, model.metadata.preprocessing, batch_size=256)
    out = {name: np.empty(len(y)) for name in (own_score(model), ENERGY, "1 - p_max")}
    for index, x in calls:
        prediction = model.predict(x)
        out[own_score(model)][index] = model.ood_scores(prediction)
        out[ENERGY][index] = energy_score(prediction.logits)
        out["1 - p_max"][index] = 1.0 - prediction.probabilities.max(axis=1)
    return out


def standardise(s: dict[str, np.ndarray], val: dict[str, np.ndarray] | None) -> dict:
    """The model's scores as (s - median) / (q95 - median) of its validation objects (1 = the
    abstention threshold), the rest as they are; unchanged without validation scores."""
    if val is None:
        return dict(s)
    out = dict(s)
    for name, v in val.items():
        median, q95 = np.quantile(v, [0.5, 0.95])
        out[name] = (s[name] - median) / (q95 - median)
    return out


def score_names(s: dict[str, np.ndarray]) -> list[str]:
    return [k for k in s if k not in ("correct", "classified")]


def summary(s: dict[str, np.ndarray], val: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """AUROC wrong-vs-right and accuracy at 80 % coverage per score; with ``val`` (or scores
    already standardised, ``val`` = {}), the share above the validation 0.95 quantile and the
    accuracy of the objects below it."""
    ok = s["classified"] & np.isfinite(s["swap"])
    wrong = ~s["correct"][ok]
    out: dict[str, Any] = {
        "n": int(ok.sum()),
        "n_wrong": int(wrong.sum()),
        "accuracy": float(s["correct"][ok].mean()),
    }
    for name in score_names(s):
        score = s[name][ok]
        auroc = float(roc_auc_score(wrong, score)) if 0 < wrong.sum() < len(wrong) else None
        keep = score <= np.quantile(score, COVERAGE)
        out[name] = {
            "auroc_wrong": auroc,
            "accuracy_at_80pct_coverage": float((~wrong[keep]).mean()) if keep.any() else None,
        }
        if val is not None and name not in MODEL_FREE:
            threshold = np.quantile(val[name], 0.95) if name in val else 1.0
            answered = score <= threshold
            out[name]["abstain_share"] = float((~answered).mean())
            out[name]["accuracy_answered"] = (
                float((~wrong[answered]).mean()) if answered.any() else None
            )
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


def loso_models(root: Path, names: list[str]) -> dict[str, Path]:
    """held-out source -> its model file, for every ``root/<source>/model.onnx``."""
    models = {s: root / s / "model.onnx" for s in names if (root / s / "model.onnx").is_file()}
    if not models:
        raise SystemExit(f"no <source>/model.onnx under {root}")
    return models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="model name or path: classifies every --sources")
    which.add_argument("--loso", type=Path, help="folder of leave-one-source-out run directories")
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
    if args.loso is not None:
        files = loso_models(args.loso, list(sources))
        sources = {k: v for k, v in sources.items() if k in files}
    else:
        files = dict.fromkeys(sources, args.model)
    per_source, pooled, loaded = {}, [], {}
    for name, batch in sources.items():
        if files[name] not in loaded:
            model = LoadedModel.load(files[name], provider="cpu", threads=2)
            val = validation_scores(model, model.path.parent)
            loaded[files[name]] = (model, val)
        model, val = loaded[files[name]]
        s = scores(model, batch)
        per_source[name] = {"model": str(files[name])} | summary(s, val)
        pooled.append(standardise(s, val))
        print(f"{name}: {per_source[name]}", file=sys.stderr, flush=True)
    names = score_names(pooled[0])
    if any(score_names(p) != names for p in pooled):
        raise SystemExit("the models do not all have the same OOD score; pool them separately")
    allscores = {k: np.concatenate([p[k] for p in pooled]) for k in pooled[0]}
    all_validated = all(val is not None for _, val in loaded.values())
    models = sorted({str(f) for f in files.values()})
    result = {
        "benchmark": "ood_under_shift",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": models[0] if len(models) == 1 else models,
        "model_version": sorted({m.metadata.version for m, _ in loaded.values()}),
        "ood_score": sorted({own_score(m) for m, _ in loaded.values()}),
        "args": vars(args) | {"out": str(args.out), "data": str(data)},
        "swap_processings": SWAP,
        "pooled_scale": (
            "model scores as (s - median) / (q95 - median) of each model's validation objects"
            if all_validated and len(loaded) > 1
            else "as they are (one model)"
        ),
        "all": summary(allscores, {} if all_validated else None),
        "sources": per_source,
        "machine": machine_info(),
        "runtime_seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    ok = allscores["classified"] & np.isfinite(allscores["swap"])
    curves = {name: curve(allscores[name][ok], allscores["correct"][ok]) for name in names}
    png = args.out.with_suffix(".png")
    n = int(ok.sum())
    title = (
        f"{len(files)} leave-one-source-out models, each on its held-out source ({n} objects)"
        if args.loso
        else f"{args.model}: {', '.join(sources)} ({n} objects)"
    )
    risk_coverage_plot(curves, png, title)
    print(json.dumps(result["all"], indent=2))
    print(f"wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
