"""Training: config -> run directory with the run record, weights, metrics and plots.

Run directory contents::

    config.yaml            the validated config that produced the run
    dataset.h5             the training dataset (light curves + features per truncation)
    run.json               the run record (training/record.py): model name and architecture,
                           labels, preprocessing spec, data, split, export section, metrics
    weights.pt             best weights, a plain state_dict (torch.load(weights_only=True))
    metrics.json           history, best validation metrics, hold-out metrics
    confusion_matrix.png   on the hold-out fold (or validation set without one; classifiers)
    learning_curves.png    loss (and macro F1) per epoch

Every model trains the same way (:func:`train_on`), whatever its family: the model is built
(fresh, its tabular quantile tables fitted on the training split; from a run directory or an
exported file, ``model.init_from``), its extra data inputs are read (spectra, stamps:
:mod:`astro_classifier.training.extras`), then the one loop
(:mod:`astro_classifier.training.loop`) optimises the family's loss of each batch.

- ``training.objective: classify``: cross-entropy on ``data.label_fraction`` of the training
  split's labels (validation and hold-out whole), early stopping on validation macro F1,
  objects scored as alerts arrive (with stamps, without spectra); ``holdout_with_spectra``
  adds the spectra where objects have one.
- ``training.objective: contrastive`` (families that support it): self-supervised
  pretraining, no labels read for the loss, early stopping on the validation split's
  contrastive loss; ``metrics.json`` reports the quality of the frozen embeddings
  (class-centroid and 5-NN accuracy, train -> validation).

The hold-out fold is never trained on. The run records the ids of every object it saw; a run
that starts from a pretrained run which saw any of its hold-out objects is refused.
"""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console

from astro_classifier.core.progress import progress_bar
from astro_classifier.evaluation.metrics import classification_report
from astro_classifier.evaluation.plots import plot_confusion_matrix, plot_learning_curves
from astro_classifier.families.base import CLASSIFY, Family, model_config
from astro_classifier.families.registry import create_model, get_entry
from astro_classifier.inference.model import read_metadata
from astro_classifier.training import extras as extra_data
from astro_classifier.training.batches import (
    embed_dataset,
    label_seed,
    label_subset,
    length_bucketed_batches,
    make_batch,
    predict,
)
from astro_classifier.training.config import TrainConfig
from astro_classifier.training.contrastive import pretrain_on_renderings, pretraining_rows
from astro_classifier.training.dataset import TrainingDataset
from astro_classifier.training.loop import Schedule, Step, Validation, run_epochs
from astro_classifier.training.record import (
    DatasetInfo,
    RunRecord,
    Split,
    load_record,
    load_run,
    save_run,
)
from astro_classifier.training.sources import grouped_splits, read_training_objects
from astro_classifier.training.warm_start import atat_state_from_onnx, load_onnx_weights

log = logging.getLogger(__name__)


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

    ds = load_or_build_dataset(cfg, run_dir, console)
    labels = sorted(set(ds.batch.label.tolist()))
    y = np.searchsorted(labels, ds.batch.label)
    train_idx, val_idx, holdout = grouped_splits(ds.batch, cfg)
    console.print(
        f"{len(ds)} objects, {len(labels)} classes, {len(ds.spec.feature_names)} tabular features; "
        f"train {len(train_idx)}, validation {len(val_idx)}, hold-out {len(holdout)}; device {device}"
    )
    return train_on(cfg, run_dir, console, ds, labels, y, (train_idx, val_idx, holdout), device)


def build_model(
    cfg: TrainConfig,
    ds: TrainingDataset,
    labels: list[str],
    n_classes: int,
    fit_idx: np.ndarray,
    holdout_ids: list[str],
    console: Console,
) -> tuple[torch.nn.Module, str | None]:
    """(model, what it starts from): fresh with its fitted tables, from an exported file
    (warm start) or from a run directory (``model.init_from``)."""
    family = get_entry(cfg.model.name).family
    sizes = dict(
        n_classes=n_classes,
        n_bands=len(ds.spec.bands),
        n_features=len(ds.spec.feature_names),
        feature_names=tuple(ds.spec.feature_names),
    )
    source = cfg.model.init_from
    if source is None:
        model = create_model(cfg.model.name, **sizes, **cfg.model.args)
        # fitted on training data before the first step (quantile tables, every truncation)
        features = ds.features[:, fit_idx].reshape(-1, ds.features.shape[-1])
        family.fit(model, torch.from_numpy(features))
        return model, None
    if source.endswith(".onnx"):  # an exported model: its architecture, weights and tables
        architecture, _ = atat_state_from_onnx(source)
        source_labels = read_metadata(source).labels
        if source_labels != labels:
            raise ValueError(
                f"{source} has classes {source_labels}, the data {labels}: a warm start needs "
                "the same classes"
            )
        model = create_model(cfg.model.name, **architecture)
        fresh = load_onnx_weights(model, source)
        console.print(f"warm start from {source} (fresh: {', '.join(fresh) or 'none'})")
        return model, source
    record = load_record(Path(source))  # a run directory
    leaked = set(record.seen_object_ids) & set(holdout_ids)
    if leaked:
        raise ValueError(
            f"{source} was pretrained on {len(leaked)} objects of this run's hold-out fold "
            f"(e.g. {sorted(leaked)[:3]}): use the same data, folds and seed"
        )
    pretrained, _ = load_run(Path(source))
    if get_entry(record.model_name).family is not family:
        raise ValueError(
            f"{source} holds a {record.model_name}; this config trains a {cfg.model.name}"
        )
    try:
        model = family.start_from(pretrained, **sizes)
    except ValueError as exc:
        raise ValueError(
            f"{source} holds a {record.model_name} that cannot start this {cfg.model.name} "
            f"on {n_classes} classes: {exc}"
        ) from exc
    return model.train(), source


def train_on(
    cfg: TrainConfig,
    run_dir: Path,
    console: Console,
    ds: TrainingDataset,
    labels: list[str],
    y: np.ndarray,
    splits: tuple[np.ndarray, np.ndarray, np.ndarray],
    device: torch.device,
) -> dict[str, Any]:
    """Train on ``ds`` with these ``splits`` (training, validation, hold-out rows); write
    the run directory; return metrics.json's content."""
    tc = cfg.training
    family = get_entry(cfg.model.name).family
    train_idx, val_idx, holdout = splits
    supervised = tc.objective == CLASSIFY
    holdout_ids = ds.batch.object_id[holdout].tolist()
    fit_idx = (
        label_subset(y, train_idx, cfg.data.label_fraction, label_seed(cfg))
        if supervised
        else train_idx
    )
    model, source = build_model(
        cfg, ds, labels, len(labels) if supervised else 0, fit_idx, holdout_ids, console
    )
    if supervised and (cfg.data.label_fraction < 1.0 or source):
        console.print(
            f"label_fraction {cfg.data.label_fraction}: {len(fit_idx)} labelled training objects"
            + (f"; from {source}" + (" (frozen)" if cfg.model.freeze else "") if source else "")
        )
    names = extra_data.data_input_names(family.extra_inputs(model))
    extra_data.attach(cfg, ds, names, run_dir)  # export checks parity on these too
    extras = extra_data.dataset_extras(ds, names, family.metadata_extras(model))
    alerts = extra_data.alert_extras(extras)
    extra_data.describe(ds, extras, console)
    model.to(device)
    pretrain = tc.render_pretrain
    if pretrain.epochs:
        rows = pretraining_rows(ds.batch, fit_idx)
        console.print(f"contrastive pretraining on renderings of {len(rows)} objects")
        pretrain_on_renderings(
            model,
            family,
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

    freeze = cfg.model.freeze
    params = family.trainable(model, freeze)
    counts = np.bincount(y[fit_idx], minlength=len(labels)).astype(np.float64)
    class_weight = (
        torch.tensor(
            counts.sum() / (len(labels) * np.maximum(counts, 1)), dtype=torch.float32, device=device
        )
        if tc.class_balance == "weights" and supervised
        else None
    )
    rng = np.random.default_rng(tc.seed)
    generator = torch.Generator(device=device).manual_seed(tc.seed)
    n_levels = len(ds.truncation_days)
    full_val = np.full(len(val_idx), n_levels - 1)

    def batches() -> list[np.ndarray]:
        return [
            fit_idx[pos]
            for pos in length_bucketed_batches(ds.batch.lengths[fit_idx], tc.batch_size, rng)
        ]

    def step(index: np.ndarray) -> Step:
        # with one level (the whole curve) there is nothing to cut
        cut = rng.random(len(index)) < (tc.truncation_probability if n_levels > 1 else 0)
        level = np.where(cut, rng.integers(0, max(n_levels - 1, 1), len(index)), n_levels - 1)
        batch = make_batch(ds, index, level, device, extras, y if supervised else None)
        batch.class_weight = class_weight
        loss, value = family.loss(model, batch, tc.objective, generator)
        return Step(loss, value)

    def validate() -> Validation:
        if supervised:
            proba = predict(model, family, ds, val_idx, device, alerts)
            report = classification_report(y[val_idx], proba, labels)
            val_loss = float(
                F.nll_loss(
                    torch.log(torch.from_numpy(proba).clamp_min(1e-15)),
                    torch.from_numpy(y[val_idx]),
                    weight=None if class_weight is None else class_weight.cpu(),
                )
            )
            row = {
                "val_loss": val_loss,
                "val_macro_f1": report.macro_f1,
                "val_accuracy": report.accuracy,
            }
            text = (
                f"val loss {val_loss:.3f}  val macro F1 {report.macro_f1:.3f}  "
                f"acc {report.accuracy:.3f}"
            )
            return Validation(row, report.macro_f1, text)
        loss = contrastive_loss(model, family, ds, val_idx, full_val, device, extras, tc)
        row = {"val_loss": loss, **family.history_extras(model, tc.objective)}
        return Validation(row, -loss, f"val contrastive loss {loss:.3f}")

    steps_per_epoch = max(1, math.ceil(len(fit_idx) / tc.batch_size))
    result = run_epochs(
        model,
        params,
        Schedule(
            tc.epochs,
            tc.learning_rate,
            tc.weight_decay,
            tc.warmup_epochs,
            tc.patience,
            tc.time_limit_minutes,
        ),
        steps_per_epoch,
        batches,
        step,
        validate,
        train_mode=lambda: family.train_mode(model, freeze),
        console=console,
        metric="validation macro F1" if supervised else "validation contrastive loss",
    )
    model.eval()
    metrics: dict[str, Any] = {
        "objective": tc.objective,
        "init_from": source,
        "freeze": freeze,
        "best_epoch": result.best_epoch,
        "train_seconds": round(result.seconds, 1),
        "n_train": len(fit_idx),
        "n_validation": len(val_idx),
        "n_holdout": len(holdout),
        "history": result.history,
    }
    if supervised:
        metrics |= holdout_metrics(model, family, ds, y, labels, splits, device, extras, alerts)
        seen = ds.batch.object_id[np.concatenate([fit_idx, val_idx])].tolist()
    else:
        metrics["validation"] = {"contrastive_loss": -result.best_score}
        metrics["zero_shot"] = zero_shot_metrics(model, family, ds, y, splits, device, extras)
        seen = ds.batch.object_id[np.concatenate([train_idx, val_idx])].tolist()
    record = RunRecord(
        model_name=cfg.model.name,
        architecture=model_config(model),
        labels=labels,
        spec=ds.spec,
        dataset=DatasetInfo(source=ds.source, content_hash=ds.content_hash, n_objects=len(ds)),
        split=Split(validation=val_idx.tolist(), holdout=holdout.tolist()),
        seen_object_ids=seen,
        export=cfg.export,
        metrics={k: metrics[k] for k in ("validation", "holdout") if k in metrics},
        objective=tc.objective,
        truncation_probability=tc.truncation_probability,
    )
    save_run(run_dir, record, model.state_dict())
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_learning_curves(result.history, run_dir / "learning_curves.png")
    if supervised:
        shown, title = (
            ("holdout", f"hold-out fold {cfg.data.holdout_fold}")
            if "holdout" in metrics
            else ("validation", "validation set")
        )
        plot_confusion_matrix(
            np.asarray(metrics[shown]["confusion_matrix"]),
            labels,
            run_dir / "confusion_matrix.png",
            title=f"{cfg.export.name}: {title}",
        )
        m = metrics[shown]
        console.print(
            f"[bold]{title}[/bold]: macro F1 {m['macro_f1']:.3f}, accuracy {m['accuracy']:.3f}, "
            f"class-balanced log loss {m['log_loss']:.3f} (best epoch {result.best_epoch}) "
            f"-> {run_dir}"
        )
    else:
        z = metrics["zero_shot"]["fused"]
        console.print(
            f"[bold]pretrained[/bold]: val contrastive loss {-result.best_score:.3f} (best epoch "
            f"{result.best_epoch}); frozen fused embedding, train -> validation: centroid "
            f"accuracy {z['centroid_accuracy']:.3f}, 5-NN accuracy {z['knn5_accuracy']:.3f} "
            f"-> {run_dir}"
        )
    return metrics


@torch.no_grad()
def contrastive_loss(
    model: torch.nn.Module,
    family: Family,
    ds: TrainingDataset,
    index: np.ndarray,
    level: np.ndarray,
    device: torch.device,
    extras: extra_data.ExtraInputs,
    tc: Any,
) -> float:
    """Mean contrastive loss of ``index`` (every modality an object has, none dropped)."""
    model.eval()
    losses = []
    for start in range(0, len(index), tc.batch_size):
        pos = np.arange(start, min(start + tc.batch_size, len(index)))
        batch = make_batch(ds, index[pos], level[pos], device, extras)
        loss, _ = family.loss(model, batch, tc.objective)
        losses.append(float(loss) * len(pos))
    return sum(losses) / max(len(index), 1)


def holdout_metrics(
    model: torch.nn.Module,
    family: Family,
    ds: TrainingDataset,
    y: np.ndarray,
    labels: list[str],
    splits: tuple[np.ndarray, np.ndarray, np.ndarray],
    device: torch.device,
    extras: extra_data.ExtraInputs,
    alerts: extra_data.ExtraInputs,
) -> dict[str, Any]:
    """Validation and hold-out reports as alerts arrive (light curve, metadata, stamps), and
    on the hold-out with every extra input where objects have one when alerts lack some."""
    _, val_idx, holdout = splits
    out = {
        "validation": classification_report(
            y[val_idx], predict(model, family, ds, val_idx, device, alerts), labels
        ).to_dict()
    }
    if len(holdout):
        out["holdout"] = classification_report(
            y[holdout], predict(model, family, ds, holdout, device, alerts), labels
        ).to_dict()
        if set(extras) - set(alerts):  # spectra: what alerts do not carry
            out["holdout_with_spectra"] = classification_report(
                y[holdout], predict(model, family, ds, holdout, device, extras), labels
            ).to_dict()
    return out


def zero_shot_metrics(
    model: torch.nn.Module,
    family: Family,
    ds: TrainingDataset,
    y: np.ndarray,
    splits: tuple[np.ndarray, np.ndarray, np.ndarray],
    device: torch.device,
    extras: extra_data.ExtraInputs,
) -> dict[str, dict[str, float]]:
    """Per embedding, centroid and 5-NN quality of the frozen embeddings, train ->
    validation (an extra input's embedding: only objects that have the input)."""
    train_idx, val_idx, _ = splits
    emb_tr = embed_dataset(model, family, ds, train_idx, device, extras)
    emb_va = embed_dataset(model, family, ds, val_idx, device, extras)
    out = {}
    for name in emb_tr:
        tr, va = np.ones(len(train_idx), bool), np.ones(len(val_idx), bool)
        if name in extra_data.DATA_INPUTS:  # only objects that have one
            if name not in extras:
                continue
            tr, va = extras[name][1][train_idx], extras[name][1][val_idx]
            if tr.sum() < 2 or va.sum() < 1:
                continue
        out[name] = zero_shot(emb_tr[name][tr], y[train_idx][tr], emb_va[name][va], y[val_idx][va])
    return out


def zero_shot(
    train_emb: np.ndarray, y_train: np.ndarray, val_emb: np.ndarray, y_val: np.ndarray, k: int = 5
) -> dict[str, float]:
    """Class-centroid and k-NN (cosine) accuracy and macro recall of frozen embeddings."""
    classes = np.unique(y_train)
    centroids = np.stack([train_emb[y_train == c].mean(0) for c in classes])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-12
    pred_c = classes[np.argmax(val_emb @ centroids.T, axis=1)]
    sims = val_emb @ train_emb.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    votes = y_train[top]
    pred_k = np.array([np.bincount(v, minlength=y_train.max() + 1).argmax() for v in votes])

    def macro_recall(pred: np.ndarray) -> float:
        return float(np.mean([np.mean(pred[y_val == c] == c) for c in np.unique(y_val)]))

    return {
        "centroid_accuracy": float(np.mean(pred_c == y_val)),
        "centroid_macro_recall": macro_recall(pred_c),
        f"knn{k}_accuracy": float(np.mean(pred_k == y_val)),
        f"knn{k}_macro_recall": macro_recall(pred_k),
    }
