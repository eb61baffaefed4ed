"""The training loop: config -> run directory with checkpoint, metrics and plots.

Run directory contents::

    config.yaml            the validated config that produced the run
    dataset.h5             the training dataset (light curves + features per truncation)
    model.yaml             registered model name + its full architecture config
    weights.pt             best weights, a plain state_dict (torch.load(weights_only=True))
    checkpoint.pt          the same weights, model config, labels, spec, splits (plain data)
    metrics.json           history, best validation metrics, hold-out metrics
    confusion_matrix.png   on the hold-out fold (or validation set without one)
    learning_curves.png    loss and macro F1 per epoch
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import TextColumn

from astro_classifier.core.progress import progress_bar
from astro_classifier.evaluation.metrics import classification_report
from astro_classifier.evaluation.plots import plot_confusion_matrix, plot_learning_curves
from astro_classifier.features.preprocess import light_curves_to_inputs
from astro_classifier.inference.model import read_metadata
from astro_classifier.training.clip_train import train_clip
from astro_classifier.training.common import (
    label_seed,
    label_subset,
    length_bucketed_batches,
    predict,
    to_tensors,
)
from astro_classifier.training.config import TrainConfig
from astro_classifier.training.contrastive import pretrain_on_renderings, pretraining_rows
from astro_classifier.training.dataset import TrainingDataset
from astro_classifier.families.registry import (
    create_model,
    get_entry,
    load_model_dir,
    save_model_dir,
)
from astro_classifier.training.sources import grouped_splits, read_training_objects
from astro_classifier.training.warm_start import atat_state_from_onnx, load_onnx_weights

log = logging.getLogger(__name__)


def multi_head_loss(
    logits: dict[str, torch.Tensor],
    target: torch.Tensor,
    heads: tuple[str, ...],
    class_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Sum of the cross-entropies of the ``heads`` the model returned, and how many there were.

    The sum is what is optimised; divided by the count it is the per-head loss reported as
    ``train_loss`` (comparable with ``val_loss``, the loss of the served head).
    """
    used = [h for h in heads if h in logits]
    if not used:
        raise ValueError(f"the model returned none of the heads {list(heads)}: {list(logits)}")
    loss = sum(F.cross_entropy(logits[h], target, weight=class_weight) for h in used)
    return loss, len(used)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but torch sees no CUDA device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def load_or_build_dataset(cfg: TrainConfig, run_dir: Path, console: Console) -> TrainingDataset:
    path = run_dir / "dataset.h5"
    if path.exists():
        ds = TrainingDataset.load(path)
        if ds.spec == cfg.preprocessing and list(ds.truncation_days) == sorted(
            cfg.data.truncation_days
        ):
            console.print(f"[dim]reusing {path} ({len(ds)} objects)[/dim]")
            return ds
    batch = read_training_objects(cfg, console)
    source = " + ".join(
        f"{cfg.data.format}:{Path(cfg.data.light_curves).name}"
        if k == 0
        else f"{s.format or 'detected'}:{Path(s.path).name}"
        for k, s in enumerate([None, *cfg.data.extra_sources])
    )
    with progress_bar("features per truncation", console) as bar:
        task = bar.add_task("", total=len(cfg.data.truncation_days))
        ds = TrainingDataset.build(
            batch,
            cfg.preprocessing,
            cfg.data.truncation_days,
            source,
            progress=lambda done, _: bar.update(task, completed=done),
        )
    ds.save(path)
    return ds


def train(cfg: TrainConfig, run_dir: Path, console: Console | None = None) -> dict[str, Any]:
    """Train a model as ``cfg`` says; write the run directory; return metrics.json's content."""
    console = console or Console()
    cfg.check_model()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    tc = cfg.training
    seed_everything(tc.seed)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    device = resolve_device(tc.device)
    entry = get_entry(cfg.model.name)

    ds = load_or_build_dataset(cfg, run_dir, console)
    labels = sorted(set(ds.batch.label.tolist()))
    y = np.searchsorted(labels, ds.batch.label)
    train_idx, val_idx, holdout = grouped_splits(ds.batch, cfg)
    console.print(
        f"{len(ds)} objects, {len(labels)} classes, {len(ds.spec.feature_names)} tabular features; "
        f"train {len(train_idx)}, validation {len(val_idx)}, hold-out {len(holdout)}; device {device}"
    )
    if entry.family == "clip":
        return train_clip(
            cfg, run_dir, console, ds, labels, y, (train_idx, val_idx, holdout), device
        )
    if cfg.data.label_fraction < 1.0:
        train_idx = label_subset(y, train_idx, cfg.data.label_fraction, label_seed(cfg))
        console.print(
            f"label_fraction {cfg.data.label_fraction}: {len(train_idx)} training objects"
        )

    if cfg.model.init_from is not None and cfg.model.init_from.endswith(".onnx"):
        # warm start from an exported model: its architecture, weights and quantile tables
        architecture, _ = atat_state_from_onnx(cfg.model.init_from)
        source_labels = read_metadata(cfg.model.init_from).labels
        if source_labels != labels:
            raise ValueError(
                f"{cfg.model.init_from} has classes {source_labels}, the data {labels}: a warm "
                "start needs the same classes"
            )
        model = create_model(cfg.model.name, **architecture)
        fresh = load_onnx_weights(model, cfg.model.init_from)
        console.print(
            f"warm start from {cfg.model.init_from} (fresh: {', '.join(fresh) or 'none'})"
        )
    elif cfg.model.init_from is not None:  # a run directory: model.yaml + weights.pt
        source_name, model = load_model_dir(Path(cfg.model.init_from))
        if source_name != cfg.model.name or model.cfg.n_classes != len(labels):
            raise ValueError(
                f"{cfg.model.init_from} holds a {source_name} with {model.cfg.n_classes} classes; "
                f"this config trains a {cfg.model.name} on {len(labels)} classes"
            )
        console.print(f"warm start from run {cfg.model.init_from}")
    else:
        model = create_model(
            cfg.model.name,
            n_classes=len(labels),
            n_bands=len(ds.spec.bands),
            n_features=len(ds.spec.feature_names),
            **cfg.model.args,
        )
        # fitted on training data before the first step (ATAT: quantile tables, every truncation)
        entry.fit(
            model, torch.from_numpy(ds.features[:, train_idx].reshape(-1, ds.features.shape[-1]))
        )
    model.to(device)
    pretrain = tc.render_pretrain
    if pretrain.epochs:
        rows = pretraining_rows(ds.batch, train_idx)
        console.print(f"contrastive pretraining on renderings of {len(rows)} objects")
        pretrain_on_renderings(
            model,
            ds.batch,
            rows,
            ds.spec,
            epochs=pretrain.epochs,
            processings=pretrain.processings,
            temperature=pretrain.temperature,
            learning_rate=pretrain.learning_rate,
            batch_size=tc.batch_size,
            seed=tc.seed,
            device=device,
            console=console,
        )

    counts = np.bincount(y[train_idx], minlength=len(labels)).astype(np.float64)
    class_weight = (
        torch.tensor(
            counts.sum() / (len(labels) * np.maximum(counts, 1)), dtype=torch.float32, device=device
        )
        if tc.class_balance == "weights"
        else None
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay
    )
    rng = np.random.default_rng(tc.seed)
    steps_per_epoch = math.ceil(len(train_idx) / tc.batch_size)
    total_steps = tc.epochs * steps_per_epoch
    warmup = tc.warmup_epochs * steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    n_levels = len(ds.truncation_days)
    history: list[dict[str, float]] = []
    best_f1, best_state, best_epoch, since_best = -1.0, None, 0, 0
    started = time.perf_counter()
    loss_column = TextColumn("loss {task.fields[loss]:.3f}")
    with progress_bar("epoch {task.fields[epoch]}", console, loss_column) as bar:
        for epoch in range(1, tc.epochs + 1):
            model.train()
            batches = length_bucketed_batches(ds.batch.lengths[train_idx], tc.batch_size, rng)
            task = bar.add_task("", total=len(batches), epoch=epoch, loss=float("nan"))
            losses = []
            for pos in batches:
                index = train_idx[pos]
                # with one level (the whole curve) there is nothing to cut
                cut = rng.random(len(index)) < (tc.truncation_probability if n_levels > 1 else 0)
                level = np.where(
                    cut, rng.integers(0, max(n_levels - 1, 1), len(index)), n_levels - 1
                )
                sub, feats = ds.truncated(index, level)
                inputs = to_tensors(light_curves_to_inputs(sub, ds.spec, tabular=feats), device)
                target = torch.from_numpy(y[index]).to(device)
                loss, n_heads = multi_head_loss(
                    model.forward_logits(**inputs), target, entry.heads, class_weight
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                losses.append(loss.item() / n_heads)
                bar.update(task, advance=1, loss=float(np.mean(losses)))
            bar.remove_task(task)

            proba = predict(model, ds, val_idx, device)
            report = classification_report(y[val_idx], proba, labels)
            val_loss = float(
                F.nll_loss(
                    torch.log(torch.from_numpy(proba).clamp_min(1e-15)),
                    torch.from_numpy(y[val_idx]),
                    weight=None if class_weight is None else class_weight.cpu(),
                )
            )
            row = {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)),
                "val_loss": val_loss,
                "val_macro_f1": report.macro_f1,
                "val_accuracy": report.accuracy,
            }
            history.append(row)
            improved = report.macro_f1 > best_f1
            console.print(
                f"epoch {epoch:3d}  train loss {row['train_loss']:.3f}  val loss {val_loss:.3f}  "
                f"val macro F1 {report.macro_f1:.3f}  acc {report.accuracy:.3f}"
                + ("  *" if improved else "")
            )
            if improved:
                best_f1, best_epoch, since_best = report.macro_f1, epoch, 0
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
                if since_best >= tc.patience:
                    console.print(
                        f"early stop: no better validation macro F1 for {tc.patience} epochs"
                    )
                    break
            if tc.time_limit_minutes and time.perf_counter() - started > 60 * tc.time_limit_minutes:
                console.print(f"stopping: time limit of {tc.time_limit_minutes} minutes reached")
                break

    model.load_state_dict(best_state)
    metrics: dict[str, Any] = {
        "best_epoch": best_epoch,
        "train_seconds": round(time.perf_counter() - started, 1),
        "n_train": len(train_idx),
        "n_validation": len(val_idx),
        "n_holdout": len(holdout),
        "validation": classification_report(
            y[val_idx], predict(model, ds, val_idx, device), labels
        ).to_dict(),
        "history": history,
    }
    shown, title = ("validation", "validation set")
    if len(holdout):
        metrics["holdout"] = classification_report(
            y[holdout], predict(model, ds, holdout, device), labels
        ).to_dict()
        shown, title = "holdout", f"hold-out fold {cfg.data.holdout_fold}"
    torch.save(
        {
            "model_name": cfg.model.name,
            "model_config": asdict(model.cfg),
            "state_dict": best_state,
            "labels": labels,
            "spec": ds.spec.model_dump(mode="json"),
            "dataset": {"source": ds.source, "content_hash": ds.content_hash, "n_objects": len(ds)},
            "split": {"validation": val_idx.tolist(), "holdout": holdout.tolist()},
            "export": cfg.export.model_dump(),
            "metrics": {k: metrics[k] for k in ("validation", "holdout") if k in metrics},
        },
        run_dir / "checkpoint.pt",
    )
    save_model_dir(run_dir, cfg.model.name, model, best_state)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_confusion_matrix(
        np.asarray(metrics[shown]["confusion_matrix"]),
        labels,
        run_dir / "confusion_matrix.png",
        title=f"{cfg.export.name}: {title}",
    )
    plot_learning_curves(history, run_dir / "learning_curves.png")
    m = metrics[shown]
    console.print(
        f"[bold]{title}[/bold]: macro F1 {m['macro_f1']:.3f}, accuracy {m['accuracy']:.3f}, "
        f"class-balanced log loss {m['log_loss']:.3f} (best epoch {best_epoch}) -> {run_dir}"
    )
    return metrics
