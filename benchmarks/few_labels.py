"""Does CLIP pretraining pay with few labels? Hold-out macro F1 at 1 %, 10 % and 100 % of
the PLAsTiCC training labels, several seeds, four methods:

(a) ``clip``: CLIP pretrained without labels (configs/clip_plasticc.yaml, light curve <->
    metadata), then fine-tuned on the labelled fraction (configs/clip_finetune.yaml);
(b) ``scratch``: the same encoders and head trained from scratch on the same labels;
(c) ``atat``: ATAT from scratch on the same labels (configs/atat_lsst.yaml without its
    augmented copies, which the other methods do not get either);
(d) ``gbm``: histogram gradient boosting (benchmarks/baseline_features.py's parameters) on
    ATAT's tabular features (metadata + light-curve features) of the same objects.

Every method sees the same folds (data.seed 0, hold-out fold 0, never pretrained on) and, per
seed, the same labelled subset (stratified, at least one object per class; training.seed
varies the subset and the initialisation). The pretraining is shared by every seed (it sees no
label). Reported: mean, standard deviation and standard error of the hold-out macro F1 over
seeds, the paired difference (a) - (b) per fraction (a gain smaller than two standard errors
is reported as no gain), (a) - (c) at 100 %, and the "zero-shot" quality of the frozen
pretrained embeddings (class-centroid and 5-NN accuracy, training split -> validation split).

Usage (one command; resumable: finished runs are read back from --work-dir)::

    python -m benchmarks.few_labels                 # 5 seeds x 3 fractions x 4 methods (--plan cpu)
    python -m benchmarks.few_labels --plan quick    # tiny models, 300 objects, 2 seeds: minutes
    python -m benchmarks.few_labels --plan full     # the configs as written: a GPU's job

``--plan cpu`` (the recorded result) keeps the configs' encoders and data but feeds whole light
curves only (no truncated copies) of at most 128 points and trains for a fixed number of
epochs (30 for the pretraining; 60 / 30 / 6 at 1 / 10 / 100 % of the labels, so the runs take
comparable numbers of steps; the best epoch on the validation split is kept, with the same
validation labels for every method). About 1.5 h on 2 CPU cores. ``--plan full`` runs the
configs as written: about a day on 2 CPU cores, an hour on one GPU. Writes ``benchmarks/results/few_labels.json`` (or
``few_labels_quick.json``), a Markdown table and ``few_labels.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = PROJECT_ROOT / "configs"
RESULTS = PROJECT_ROOT / "benchmarks" / "results"
METHODS = ("clip", "scratch", "atat", "gbm")


# Epochs per labelled fraction: fewer labels, more passes, so that every run takes a
# comparable number of optimiser steps (1 %: ~1 step an epoch at batch 128).
CPU_EPOCHS = {0.01: 60, 0.1: 30, 1.0: 6}


def _plan(name: str) -> dict[str, Any]:
    """``quick``: smoke test; ``cpu``: the recorded run (fits 2 CPU cores in about 1.5 h);
    ``full``: the configs as written (about a day on 2 CPU cores, an hour on a GPU)."""
    if name == "quick":
        common = ["data.max_objects=300", "training.epochs=2", "training.num_threads=1"]
        return {
            "pretrain": ("clip_tiny_pretrain.yaml", common),
            "finetune": ("clip_tiny_finetune.yaml", common),
            "atat": ("atat_tiny.yaml", common),
            "seeds": [0, 1],
            "fractions": [0.1, 1.0],
            "epochs": {},
        }
    if name == "cpu":
        # Every object, whole light curves only (no truncated copies), at most 128 points:
        # the same encoders as the configs, a schedule 2 cores finish in one sitting.
        common = [
            "preprocessing.max_length=128",
            "data.truncation_days=[.inf]",
            "training.time_limit_minutes=null",
        ]
        return {
            "pretrain": (
                "clip_plasticc.yaml",
                [*common, "training.epochs=30", "training.patience=30"],
            ),
            "finetune": ("clip_finetune.yaml", [*common, "training.patience=100"]),
            "atat": (
                "atat_lsst.yaml",
                [
                    *common,
                    "model.init_from=null",
                    "data.augment=null",
                    "training.learning_rate=0.001",
                    "training.warmup_epochs=1",
                    "training.patience=100",
                ],
            ),
            "seeds": [0, 1, 2, 3, 4],
            "fractions": [0.01, 0.1, 1.0],
            "epochs": CPU_EPOCHS,
        }
    return {
        "pretrain": ("clip_plasticc.yaml", []),
        "finetune": ("clip_finetune.yaml", []),
        "atat": ("atat_lsst.yaml", ["model.init_from=null", "data.augment=null"]),
        "seeds": [0, 1, 2, 3, 4],
        "fractions": [0.01, 0.1, 1.0],
        "epochs": {},
    }


def _config(name: str, overrides: list[str]):
    from astro_classifier.training.config import TrainConfig

    return TrainConfig.from_yaml(CONFIGS / name, overrides)


def _run(
    cfg, run_dir: Path, dataset: Path | None = None, report_only: bool = False
) -> dict[str, Any] | None:
    """Train (or read back a finished run); ``dataset``: a dataset.h5 to reuse. With
    ``report_only``, an unfinished run is None (left out of the report, which says so)."""
    from rich.console import Console

    from astro_classifier.training.train import train

    done = run_dir / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    if report_only:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    if dataset is not None and dataset.is_file() and not (run_dir / "dataset.h5").exists():
        os.symlink(dataset.resolve(), run_dir / "dataset.h5")
    started = time.perf_counter()
    metrics = train(cfg, run_dir, console=Console(quiet=True))
    print(f"  {run_dir.name}: {time.perf_counter() - started:.0f} s", flush=True)
    return metrics


def _gbm(dataset: Path, cfg, seed: int) -> float:
    """Hold-out macro F1 of gradient boosting on an ATAT dataset's features (every ATAT run
    shares one), with the label subset of ``cfg``."""
    import warnings

    from sklearn.ensemble import HistGradientBoostingClassifier

    from astro_classifier.evaluation.metrics import classification_report
    from astro_classifier.training.dataset import TrainingDataset
    from astro_classifier.training.sources import grouped_splits
    from astro_classifier.training.train import label_seed, label_subset
    from benchmarks.baseline_features import HGB_PARAMS

    ds = TrainingDataset.load(dataset)
    labels = sorted(set(ds.batch.label.tolist()))
    y = np.searchsorted(labels, ds.batch.label)
    train_idx, _, holdout = grouped_splits(ds.batch, cfg)
    fit = label_subset(y, train_idx, cfg.data.label_fraction, label_seed(cfg))
    x = ds.features[-1]  # whole light curves
    params = dict(HGB_PARAMS, random_state=seed)
    counts = np.bincount(y[fit])
    if len(fit) < 200 or counts[counts > 0].min() < 10:  # too few for early stopping's split
        params.update(early_stopping=False, max_iter=100)
    # leaves of 40 objects cannot split 56 labelled objects (1 %): scale the leaf size
    params["min_samples_leaf"] = int(np.clip(len(fit) // 20, 2, params["min_samples_leaf"]))
    with warnings.catch_warnings():  # "more classes than half the samples" at 1 % labels
        warnings.simplefilter("ignore", UserWarning)
        model = HistGradientBoostingClassifier(**params).fit(x[fit], y[fit])
    proba = np.zeros((len(holdout), len(labels)))
    proba[:, model.classes_] = model.predict_proba(x[holdout])
    return classification_report(y[holdout], proba, labels).macro_f1


Scores = dict[str, dict[float, dict[int, float]]]  # method -> fraction -> seed -> F1


def _summary(scores: Scores) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method, per_fraction in scores.items():
        for fraction, per_seed in per_fraction.items():
            if not per_seed:
                continue
            v = np.asarray(list(per_seed.values()), np.float64)
            out.setdefault(method, {})[str(fraction)] = {
                "mean": float(v.mean()),
                "std": float(v.std(ddof=1)) if len(v) > 1 else None,
                "se": float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None,
                "n_seeds": len(v),
                "seeds": list(per_seed),
                "values": v.tolist(),
            }
    return out


def _paired(a: dict[int, float], b: dict[int, float]) -> dict[str, Any] | None:
    """Paired difference over the seeds both methods finished."""
    seeds = [s for s in a if s in b]
    if not seeds:
        return None
    d = np.asarray([a[s] - b[s] for s in seeds])
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    mean = float(d.mean())
    return {
        "mean": mean,
        "se": se,
        "n_seeds": len(seeds),
        "verdict": "gain" if mean > 2 * se else ("loss" if mean < -2 * se else "no gain"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--plan",
        default="cpu",
        choices=["quick", "cpu", "full"],
        help="quick: tiny smoke test; cpu: the recorded run; full: the configs as written",
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="run directories (resumable)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default=None, help="comma-separated, overrides the plan")
    parser.add_argument("--fractions", default=None, help="comma-separated, overrides the plan")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: report the runs already finished in --work-dir",
    )
    args = parser.parse_args()

    plan = _plan(args.plan)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else plan["seeds"]
    fractions = (
        [float(f) for f in args.fractions.split(",")] if args.fractions else plan["fractions"]
    )
    methods = [m for m in args.methods.split(",") if m]
    tag = {"quick": "few_labels_quick", "cpu": "few_labels", "full": "few_labels_full"}[args.plan]
    work = args.work_dir or PROJECT_ROOT / "runs" / tag
    out = args.out or RESULTS / f"{tag}.json"
    device = [f"training.device={args.device}"]

    name, extra = plan["pretrain"]
    print(f"pretraining ({name}) -> {work / 'pretrain'}", flush=True)
    pre_metrics = _run(_config(name, [*extra, *device]), work / "pretrain", None, args.report_only)
    if pre_metrics is None:
        raise SystemExit(f"{work / 'pretrain'}: the pretraining has not finished")
    clip_dataset = work / "pretrain" / "dataset.h5"
    atat_dataset: Path | None = None

    scores: Scores = {m: {f: {} for f in fractions} for m in methods}
    report = args.report_only
    for fraction in fractions:
        for seed in seeds:
            common = [f"data.label_fraction={fraction}", f"training.seed={seed}", *device]
            if fraction in plan["epochs"]:
                common.append(f"training.epochs={plan['epochs'][fraction]}")
            tag_run = f"f{fraction:g}-s{seed}"
            ft_name, ft_extra = plan["finetune"]
            if "clip" in methods:
                cfg = _config(ft_name, [*ft_extra, *common, f"model.init_from={work / 'pretrain'}"])
                m = _run(cfg, work / f"clip-{tag_run}", clip_dataset, report)
                if m is not None:
                    scores["clip"][fraction][seed] = m["holdout"]["macro_f1"]
            if "scratch" in methods:
                cfg = _config(ft_name, [*ft_extra, *common, "model.init_from=null"])
                m = _run(cfg, work / f"scratch-{tag_run}", clip_dataset, report)
                if m is not None:
                    scores["scratch"][fraction][seed] = m["holdout"]["macro_f1"]
            if "atat" in methods or "gbm" in methods:
                at_name, at_extra = plan["atat"]
                cfg = _config(at_name, [*at_extra, *common])
                run_dir = work / f"atat-{tag_run}"
                m = _run(cfg, run_dir, atat_dataset, report)
                atat_dataset = atat_dataset or run_dir / "dataset.h5"
                if m is not None and "atat" in methods:
                    scores["atat"][fraction][seed] = m["holdout"]["macro_f1"]
                if atat_dataset is not None and atat_dataset.exists() and "gbm" in methods:
                    scores["gbm"][fraction][seed] = _gbm(atat_dataset, cfg, seed)
            print(
                f"fraction {fraction:g} seed {seed}: "
                + ", ".join(
                    f"{k} {v[fraction][seed]:.3f}" for k, v in scores.items() if seed in v[fraction]
                ),
                flush=True,
            )

    summary = _summary(scores)
    comparisons: dict[str, Any] = {}
    if "clip" in scores and "scratch" in scores:
        for f in fractions:
            comparisons[f"clip-scratch@{f:g}"] = _paired(scores["clip"][f], scores["scratch"][f])
    if "clip" in scores and "atat" in scores and 1.0 in fractions:
        comparisons["clip-atat@1"] = _paired(scores["clip"][1.0], scores["atat"][1.0])
    result = {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "plan": args.plan,
        "plan_overrides": {k: plan[k] for k in ("pretrain", "finetune", "atat", "epochs")},
        "seeds": seeds,
        "fractions": fractions,
        "holdout_macro_f1": summary,
        "paired_differences": comparisons,
        "targets": {
            "clip-scratch@0.01": ">= +0.05",
            "clip-scratch@0.1": ">= +0.03",
            "clip-atat@1": ">= -0.01",
        },
        "zero_shot_frozen_pretrained": pre_metrics.get("zero_shot"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(markdown(result))
    plot(result, out.with_suffix(".png"))
    print(f"-> {out}, {out.with_suffix('.png')}")
    maps = out.with_name(f"{out.stem}_embedding_map.png")
    embedding_map(work / "pretrain", maps)
    print(f"-> {maps}")


def embedding_map(pretrain_dir: Path, path: Path) -> None:
    """PCA maps of the frozen pretrained embeddings (photometry, metadata, fused) of the
    pretraining's validation objects, coloured by class (labels the pretraining never read)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from astro_classifier.families.registry import family_of
    from astro_classifier.training.batches import embed_dataset
    from astro_classifier.training.dataset import TrainingDataset
    from astro_classifier.training.extras import model_extras
    from astro_classifier.training.record import load_run

    model, record = load_run(pretrain_dir)
    family = family_of(record.model_name)
    ds = TrainingDataset.load(pretrain_dir / "dataset.h5")
    index = np.asarray(record.split.validation, np.int64)
    extras = model_extras(family, model, ds)
    emb = embed_dataset(model, family, ds, index, torch.device("cpu"), extras)
    labels = ds.batch.label[index]
    classes = sorted(set(labels.tolist()), key=lambda c: -int((labels == c).sum()))
    names = [n for n in ("photometry", "metadata", "fused") if n in emb]
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.8))
    cmap = plt.get_cmap("tab20")
    for ax, name in zip(np.atleast_1d(axes), names, strict=True):
        z = emb[name] - emb[name].mean(0)
        _, _, vt = np.linalg.svd(z, full_matrices=False)
        xy = z @ vt[:2].T
        for k, c in enumerate(classes):
            m = labels == c
            ax.scatter(
                xy[m, 0], xy[m, 1], s=5, alpha=0.6, color=cmap(k % 20), label=f"{c} ({m.sum()})"
            )
        ax.set_title(f"{name} embedding, PCA\n(validation objects, labels never seen)")
        ax.set_xticks([])
        ax.set_yticks([])
    np.atleast_1d(axes)[-1].legend(
        fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5)
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict[str, Any]) -> str:
    fr = result["fractions"]
    lines = [
        "| method | " + " | ".join(f"{100 * f:g} % labels" for f in fr) + " |",
        "|---|" + "---|" * len(fr),
    ]
    for method, per in result["holdout_macro_f1"].items():
        cells = []
        for f in fr:
            s = per.get(str(f))
            if s is None:
                cells.append("not run")
                continue
            cells.append(
                f"{s['mean']:.3f}"
                + (f" ± {s['std']:.3f}" if s["std"] is not None else "")
                + f" (n={s['n_seeds']})"
            )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, c in result["paired_differences"].items():
        if c is None:
            lines.append(f"- {name}: no seed finished for both methods")
            continue
        lines.append(
            f"- {name}: {c['mean']:+.3f} ± {c['se']:.3f} (SE, {c['n_seeds']} seeds) -> "
            f"{c['verdict']}"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    fr = result["fractions"]
    for method, per in result["holdout_macro_f1"].items():
        done = [f for f in fr if str(f) in per]
        mean = [per[str(f)]["mean"] for f in done]
        err = [per[str(f)]["se"] or 0.0 for f in done]
        ax.errorbar([100 * f for f in done], mean, yerr=err, marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training objects (%)")
    ax.set_ylabel("hold-out macro F1")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
