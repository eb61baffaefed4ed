"""Training of CLIP models (called by :func:`astro_classifier.training.train.train`).

- ``training.objective: contrastive``: self-supervised pretraining, no labels read for the
  loss. Gradient steps on the training split, the validation split's contrastive loss picks
  the best epoch; the hold-out fold is never seen. The run records the ids of every object
  it saw (``seen_object_ids`` in checkpoint.pt), and ``metrics.json`` reports the quality of
  the frozen embeddings (class-centroid and 5-NN accuracy, train -> validation).
- ``training.objective: classify``: a classifier head on the fused embedding, from scratch
  or from a pretrained run (``model.init_from``, ``model.freeze``), on
  ``data.label_fraction`` of the training labels. A pretrained run that saw any of this
  run's hold-out objects is refused.

Both write model.yaml + weights.pt + checkpoint.pt + metrics.json like ATAT runs.

Inputs beyond light curve and metadata travel as :data:`ExtraInputs`: per modality, the
model's input array of every dataset object and whether the object has it.

Spectra: a model with the ``spectrum`` modality gets the spectra of every source whose format
has them (:data:`~astro_classifier.formats.registry.SPECTRA_FORMATS`: ``osc``, ``slsne``), one per object, attached to the
run's dataset.h5 (:meth:`TrainingDataset.attach_spectra`) and resampled and normalised onto the
model's grid by :func:`astro_classifier.features.spectra.model_input`. Objects with one have
``spectrum`` present (modality dropout applies) in pretraining and fine-tuning; the others,
and every object of a model without the modality, train exactly as before. Validation (early
stopping) and ``holdout`` are scored as alerts arrive, without spectra; ``holdout_with_spectra``
adds the spectra where objects have one.

Images: a model with the ``image`` modality gets the stamps of each object's alert, decoded
from every source whose format carries cutouts (:func:`read_config_cutouts`) and attached to
dataset.h5 (:meth:`TrainingDataset.attach_cutouts`). Alerts carry their stamps, so unlike
spectra images are present in validation and hold-out scoring too (as they arrive).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console

from astro_classifier.core.cutouts import CutoutBatch
from astro_classifier.core.spectra import Spectra
from astro_classifier.evaluation.metrics import classification_report
from astro_classifier.evaluation.plots import plot_confusion_matrix, plot_learning_curves
from astro_classifier.features.preprocess import light_curves_to_inputs
from astro_classifier.features.spectra import model_input
from astro_classifier.formats.registry import SPECTRA_FORMATS, read_cutouts_of, read_spectra_of
from astro_classifier.families.clip import CLIP, default_presence
from astro_classifier.training.common import (
    label_seed,
    label_subset,
    length_bucketed_batches,
    predict,
    to_tensors,
)
from astro_classifier.training.config import TrainConfig
from astro_classifier.training.dataset import TrainingDataset
from astro_classifier.families.registry import (
    create_model,
    get_entry,
    load_model_dir,
    save_model_dir,
)

# (N, 2, G) float32 spectra on the model's grid (NaN: none) and (N,) bool presence
SpectrumInputs = tuple[np.ndarray, np.ndarray]
# modality ("spectrum", "image") -> (its input for every dataset object, (N,) bool presence)
ExtraInputs = dict[str, tuple[np.ndarray, np.ndarray]]
ALERT_MODALITIES = ("image",)  # extras every alert carries (scored with them)


def read_config_spectra(cfg: TrainConfig) -> Spectra:
    """Spectra of the config's sources whose format has them (none for the others)."""
    sources = [(cfg.data.format, cfg.data.light_curves)]
    sources += [(s.format, s.path) for s in cfg.data.extra_sources]
    parts = [read_spectra_of([path], fmt) for fmt, path in sources if fmt in SPECTRA_FORMATS]
    return Spectra.concat(parts)


def read_config_cutouts(cfg: TrainConfig):
    """Stamps of every alert of the config's sources (sources without any contribute none)."""
    sources = [(cfg.data.format, cfg.data.light_curves)]
    sources += [(s.format, s.path) for s in cfg.data.extra_sources]
    return CutoutBatch.concat([read_cutouts_of([path], fmt) for fmt, path in sources])


def image_inputs(model: CLIP, ds: TrainingDataset) -> tuple[np.ndarray, np.ndarray] | None:
    """The model's image input of every object of ``ds`` (None: no image tower or none)."""
    if "image" not in model.modalities or ds.images is None:
        return None
    return ds.images, np.asarray(ds.image_ok, bool)


def extra_inputs(model: CLIP, ds: TrainingDataset) -> ExtraInputs:
    out: ExtraInputs = {}
    spectra = spectrum_inputs(model, ds)
    if spectra is not None:
        out["spectrum"] = spectra
    images = image_inputs(model, ds)
    if images is not None:
        out["image"] = images
    return out


def alert_inputs(extras: ExtraInputs) -> ExtraInputs:
    """The extras alerts carry (images), for scoring as alerts arrive."""
    return {k: v for k, v in extras.items() if k in ALERT_MODALITIES}


def spectrum_inputs(model: CLIP, ds: TrainingDataset) -> SpectrumInputs | None:
    """The model's spectrum input of every object of ``ds`` (None: the model has no spectrum
    tower or the dataset no spectra)."""
    if "spectrum" not in model.modalities or ds.spectra is None or len(ds.spectra) == 0:
        return None
    arr, usable, _ = model_input(ds.spectra, model.cfg.spectrum_grid)
    row = np.asarray(ds.spectrum_row, np.int64)
    has = row >= 0
    has[has] = usable[row[has]]
    out = np.full((len(ds), *arr.shape[1:]), np.nan, np.float32)
    out[has] = arr[row[has]]
    return out, has


def _inputs(
    ds: TrainingDataset,
    index: np.ndarray,
    level: np.ndarray,
    device: torch.device,
    extras: ExtraInputs | None = None,
):
    sub, feats = ds.truncated(index, level)
    x = to_tensors(light_curves_to_inputs(sub, ds.spec, tabular=feats), device)
    for name, (values, _) in (extras or {}).items():
        x[name] = torch.from_numpy(values[index]).to(device)
    return x


def presence_of(
    model: CLIP, x: dict[str, torch.Tensor], index: np.ndarray, extras: ExtraInputs | None
) -> dict[str, torch.Tensor]:
    """:func:`default_presence`, with each extra modality present where the object has it."""
    presence = default_presence(model, x["tabular"])
    for name, (_, has) in (extras or {}).items():
        presence[name] = torch.from_numpy(has[index]).to(x["tabular"].device)
    return presence


@torch.no_grad()
def embed_dataset(
    model: CLIP,
    ds: TrainingDataset,
    index: np.ndarray,
    device: torch.device,
    batch_size: int = 256,
    spectra: ExtraInputs | None = None,
) -> dict[str, np.ndarray]:
    """Per-modality and fused embeddings (whole light curves) of ``index``, in its order
    (an extra modality's: meaningful only where the object has it, see ``spectra[m][1]``)."""
    model.eval()
    full = np.full(len(index), len(ds.truncation_days) - 1)
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(index), batch_size):
        pos = np.arange(start, min(start + batch_size, len(index)))
        x = _inputs(ds, index[pos], full[pos], device, spectra)
        emb = model.embeddings(**x)
        emb["fused"] = model.fuse(emb, presence_of(model, x, index[pos], spectra))
        for name, z in emb.items():
            out.setdefault(name, np.empty((len(index), z.shape[1]), np.float32))[pos] = (
                z.float().cpu().numpy()
            )
    return out


@torch.no_grad()
def predict_with_extras(
    model: CLIP,
    ds: TrainingDataset,
    index: np.ndarray,
    device: torch.device,
    spectra: ExtraInputs,
    batch_size: int = 256,
) -> np.ndarray:
    """Probabilities (whole light curves) with the extra modalities (spectra, images) where
    the object has them."""
    model.eval()
    full = np.full(len(index), len(ds.truncation_days) - 1)
    out = np.empty((len(index), model.cfg.n_classes), np.float32)
    for start in range(0, len(index), batch_size):
        pos = np.arange(start, min(start + batch_size, len(index)))
        x = _inputs(ds, index[pos], full[pos], device, spectra)
        logits = model.forward_logits(**x, presence=presence_of(model, x, index[pos], spectra))
        out[pos] = torch.softmax(logits["mix"], dim=-1).float().cpu().numpy()
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


def _schedule(optimizer, tc, steps_per_epoch: int):
    total_steps = tc.epochs * steps_per_epoch
    warmup = tc.warmup_epochs * steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)


def _build(
    cfg: TrainConfig, ds: TrainingDataset, n_classes: int, train_idx: np.ndarray, holdout_ids
):
    """The model: fresh (quantile tables fitted on ``train_idx``) or from ``init_from``."""
    if cfg.model.init_from is None:
        model = create_model(
            cfg.model.name,
            n_classes=n_classes,
            n_bands=len(ds.spec.bands),
            feature_names=tuple(ds.spec.feature_names),
            **cfg.model.args,
        )
        get_entry(cfg.model.name).fit(
            model,
            torch.from_numpy(ds.features[:, train_idx].reshape(-1, ds.features.shape[-1])),
        )
        return model, None
    source = Path(cfg.model.init_from)
    _, pre = load_model_dir(source)
    if list(pre.cfg.feature_names) != list(ds.spec.feature_names) or pre.cfg.n_bands != len(
        ds.spec.bands
    ):
        raise ValueError(
            f"{source}: pretrained on features {list(pre.cfg.feature_names)} and "
            f"{pre.cfg.n_bands} bands; this config has {ds.spec.feature_names} and "
            f"{len(ds.spec.bands)} bands"
        )
    pre_ckpt = torch.load(source / "checkpoint.pt", map_location="cpu", weights_only=True)
    seen = set(pre_ckpt.get("seen_object_ids", []))
    leaked = seen & set(holdout_ids)
    if leaked:
        raise ValueError(
            f"{source} was pretrained on {len(leaked)} objects of this run's hold-out fold "
            f"(e.g. {sorted(leaked)[:3]}): use the same data, folds and seed"
        )
    model = CLIP(dataclasses.replace(pre.cfg, n_classes=n_classes))
    missing, unexpected = model.load_state_dict(pre.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("head.") for k in missing), (missing, unexpected)
    return model, str(source)


def train_clip(
    cfg: TrainConfig,
    run_dir: Path,
    console: Console,
    ds: TrainingDataset,
    labels: list[str],
    y: np.ndarray,
    splits: tuple[np.ndarray, np.ndarray, np.ndarray],
    device: torch.device,
) -> dict[str, Any]:
    tc = cfg.training
    train_idx, val_idx, holdout = splits
    contrastive = tc.objective == "contrastive"
    holdout_ids = ds.batch.object_id[holdout].tolist()
    if contrastive:
        model, source = _build(cfg, ds, 0, train_idx, holdout_ids)
        fit_idx = train_idx
    else:
        fit_idx = label_subset(y, train_idx, cfg.data.label_fraction, label_seed(cfg))
        model, source = _build(cfg, ds, len(labels), fit_idx, holdout_ids)
        console.print(
            f"label_fraction {cfg.data.label_fraction}: {len(fit_idx)} labelled training objects"
            + (f"; from {source}" + (" (frozen)" if cfg.model.freeze else "") if source else "")
        )
    if "spectrum" in model.modalities and ds.spectra is None:
        ds.attach_spectra(read_config_spectra(cfg))
        ds.save(run_dir / "dataset.h5")  # export checks parity on these spectra
    if "image" in model.modalities and ds.images is None:
        ds.attach_cutouts(read_config_cutouts(cfg))
        ds.save(run_dir / "dataset.h5")
    spectra = extra_inputs(model, ds)  # spectra and images, where objects have them
    alerts = alert_inputs(spectra)
    if "spectrum" in spectra:
        console.print(
            f"spectra: {int(spectra['spectrum'][1].sum())} of {len(ds)} objects have one on "
            f"the model grid (refused by the readers: {ds.spectra.dropped})"
        )
    if "image" in spectra:
        failed = dict(Counter(f.split(":")[0] for f in ds.image_failure[~ds.image_ok]))
        console.print(
            f"images: {int(ds.image_ok.sum())} of {len(ds)} objects have usable stamps"
            + (f" (not: {failed})" if failed else "")
        )
    model.to(device)
    if cfg.model.freeze:
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("head.")
    params = [p for p in model.parameters() if p.requires_grad]

    counts = np.bincount(y[fit_idx], minlength=len(labels)).astype(np.float64)
    class_weight = (
        torch.tensor(
            counts.sum() / (len(labels) * np.maximum(counts, 1)), dtype=torch.float32, device=device
        )
        if tc.class_balance == "weights"
        else None
    )
    optimizer = torch.optim.AdamW(params, lr=tc.learning_rate, weight_decay=tc.weight_decay)
    rng = np.random.default_rng(tc.seed)
    gen = torch.Generator(device=device).manual_seed(tc.seed)
    steps_per_epoch = max(1, math.ceil(len(fit_idx) / tc.batch_size))
    scheduler = _schedule(optimizer, tc, steps_per_epoch)
    n_levels = len(ds.truncation_days)
    full_val = np.full(len(val_idx), n_levels - 1)
    history: list[dict[str, float]] = []
    best, best_state, best_epoch, since_best = -math.inf, None, 0, 0
    started = time.perf_counter()

    def set_train_mode() -> None:
        model.train()
        if cfg.model.freeze:  # frozen towers: no dropout either
            for name, module in model.named_children():
                if name != "head":
                    module.eval()

    def alert_proba(index: np.ndarray) -> np.ndarray:
        """Probabilities as alerts arrive: light curve, metadata and images, no spectra."""
        if alerts:
            return predict_with_extras(model, ds, index, device, alerts)
        return predict(model, ds, index, device)

    @torch.no_grad()
    def val_contrastive() -> float:
        model.eval()
        losses = []
        for start in range(0, len(val_idx), tc.batch_size):
            pos = np.arange(start, min(start + tc.batch_size, len(val_idx)))
            x = _inputs(ds, val_idx[pos], full_val[pos], device, spectra)
            loss, _ = model.contrastive_loss(
                model.embeddings(**x), presence_of(model, x, val_idx[pos], spectra)
            )
            losses.append(float(loss) * len(pos))
        return sum(losses) / max(len(val_idx), 1)

    for epoch in range(1, tc.epochs + 1):
        set_train_mode()
        losses = []
        for pos in length_bucketed_batches(ds.batch.lengths[fit_idx], tc.batch_size, rng):
            index = fit_idx[pos]
            cut = rng.random(len(index)) < (tc.truncation_probability if n_levels > 1 else 0)
            level = np.where(cut, rng.integers(0, max(n_levels - 1, 1), len(index)), n_levels - 1)
            x = _inputs(ds, index, level, device, spectra)
            presence = model.drop_modalities(presence_of(model, x, index, spectra), gen)
            if contrastive:
                loss, _ = model.contrastive_loss(model.embeddings(**x), presence)
            else:
                logits = model.forward_logits(**x, presence=presence)["mix"]
                target = torch.from_numpy(y[index]).to(device)
                loss = F.cross_entropy(logits, target, weight=class_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        row: dict[str, float] = {"epoch": epoch, "train_loss": float(np.mean(losses))}
        if contrastive:
            row["val_loss"] = val_contrastive()
            score = -row["val_loss"]
            row["temperatures"] = (1.0 / model.scales().detach().cpu()).tolist()
            text = f"val contrastive loss {row['val_loss']:.3f}"
        else:
            proba = alert_proba(val_idx)
            report = classification_report(y[val_idx], proba, labels)
            row["val_loss"] = float(
                F.nll_loss(
                    torch.log(torch.from_numpy(proba).clamp_min(1e-15)),
                    torch.from_numpy(y[val_idx]),
                )
            )
            row["val_macro_f1"], row["val_accuracy"] = report.macro_f1, report.accuracy
            score = report.macro_f1
            text = f"val macro F1 {report.macro_f1:.3f}  acc {report.accuracy:.3f}"
        history.append(row)
        improved = score > best
        console.print(
            f"epoch {epoch:3d}  train loss {row['train_loss']:.3f}  {text}"
            + ("  *" if improved else "")
        )
        if improved:
            best, best_epoch, since_best = score, epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            since_best += 1
            if since_best >= tc.patience:
                console.print(f"early stop: no better validation score for {tc.patience} epochs")
                break
        if tc.time_limit_minutes and time.perf_counter() - started > 60 * tc.time_limit_minutes:
            console.print(f"stopping: time limit of {tc.time_limit_minutes} minutes reached")
            break

    model.load_state_dict(best_state)
    model.eval()
    metrics: dict[str, Any] = {
        "objective": tc.objective,
        "init_from": source,
        "freeze": cfg.model.freeze,
        "best_epoch": best_epoch,
        "train_seconds": round(time.perf_counter() - started, 1),
        "n_train": len(fit_idx),
        "n_validation": len(val_idx),
        "n_holdout": len(holdout),
        "history": history,
    }
    shown = None
    if contrastive:
        metrics["validation"] = {"contrastive_loss": -best}
        emb_tr = embed_dataset(model, ds, train_idx, device, spectra=spectra)
        emb_va = embed_dataset(model, ds, val_idx, device, spectra=spectra)
        metrics["zero_shot"] = {}
        for name in emb_tr:
            tr, va = np.ones(len(train_idx), bool), np.ones(len(val_idx), bool)
            if name in ("spectrum", "image"):  # only objects that have one
                if name not in spectra:
                    continue
                tr, va = spectra[name][1][train_idx], spectra[name][1][val_idx]
                if tr.sum() < 2 or va.sum() < 1:
                    continue
            metrics["zero_shot"][name] = zero_shot(
                emb_tr[name][tr], y[train_idx][tr], emb_va[name][va], y[val_idx][va]
            )
        seen = ds.batch.object_id[np.concatenate([train_idx, val_idx])].tolist()
    else:
        metrics["validation"] = classification_report(
            y[val_idx], alert_proba(val_idx), labels
        ).to_dict()
        shown, title = "validation", "validation set"
        if len(holdout):
            metrics["holdout"] = classification_report(
                y[holdout], alert_proba(holdout), labels
            ).to_dict()
            shown, title = "holdout", f"hold-out fold {cfg.data.holdout_fold}"
            if "spectrum" in spectra:
                metrics["holdout_with_spectra"] = classification_report(
                    y[holdout], predict_with_extras(model, ds, holdout, device, spectra), labels
                ).to_dict()
        seen = ds.batch.object_id[np.concatenate([fit_idx, val_idx])].tolist()
    torch.save(
        {
            "model_name": cfg.model.name,
            "model_config": json.loads(json.dumps(dataclasses.asdict(model.cfg))),
            "state_dict": best_state,
            "labels": labels,
            "spec": ds.spec.model_dump(mode="json"),
            "dataset": {"source": ds.source, "content_hash": ds.content_hash, "n_objects": len(ds)},
            "split": {"validation": val_idx.tolist(), "holdout": holdout.tolist()},
            "seen_object_ids": seen,
            "export": cfg.export.model_dump(),
            "metrics": {k: metrics[k] for k in ("validation", "holdout") if k in metrics},
        },
        run_dir / "checkpoint.pt",
    )
    save_model_dir(run_dir, cfg.model.name, model, best_state)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_learning_curves(history, run_dir / "learning_curves.png")
    if shown is not None:
        plot_confusion_matrix(
            np.asarray(metrics[shown]["confusion_matrix"]),
            labels,
            run_dir / "confusion_matrix.png",
            title=f"{cfg.export.name}: {title}",
        )
        m = metrics[shown]
        console.print(
            f"[bold]{title}[/bold]: macro F1 {m['macro_f1']:.3f}, accuracy {m['accuracy']:.3f} "
            f"(best epoch {best_epoch}) -> {run_dir}"
        )
    else:
        z = metrics["zero_shot"]["fused"]
        console.print(
            f"[bold]pretrained[/bold]: val contrastive loss {-best:.3f} (best epoch {best_epoch}); "
            f"frozen fused embedding, train -> validation: centroid accuracy "
            f"{z['centroid_accuracy']:.3f}, 5-NN accuracy {z['knn5_accuracy']:.3f} -> {run_dir}"
        )
    return metrics
