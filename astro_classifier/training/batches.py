"""Batches of a training data set for the training loop and for scoring: model inputs as
tensors (:class:`~astro_classifier.families.base.Batch`, with the model's extra data inputs),
length-bucketed training batches, batched prediction and embedding through the model's family,
and the labelled subset of few-label runs."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from astro_classifier.families.base import Batch, Family
from astro_classifier.features.preprocess import ModelInputs, light_curves_to_inputs
from astro_classifier.training.config import TrainConfig
from astro_classifier.training.dataset import TrainingDataset
from astro_classifier.training.extras import ExtraInputs


def to_tensors(inputs: ModelInputs, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).to(device) for k, v in inputs.as_dict().items()}


def make_batch(
    ds: TrainingDataset,
    index: np.ndarray,
    level: np.ndarray,
    device: torch.device,
    extras: ExtraInputs | None = None,
    y: np.ndarray | None = None,
    class_weight: torch.Tensor | None = None,
) -> Batch:
    """Objects ``index`` of ``ds`` cut at truncation ``level`` (per object), with the extra
    inputs ``extras`` and, given ``y``, their class indices."""
    sub, feats = ds.truncated(index, level)
    inputs = to_tensors(light_curves_to_inputs(sub, ds.spec, tabular=feats), device)
    available = {}
    for name, (values, has) in (extras or {}).items():
        inputs[name] = torch.from_numpy(values[index]).to(device)
        available[name] = torch.from_numpy(has[index]).to(device)
    target = None if y is None else torch.from_numpy(y[index]).to(device)
    return Batch(inputs, available, target, class_weight)


def length_bucketed_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Shuffled batches of similar-length objects (positions into ``lengths``).

    Objects are shuffled, cut into pools of 50 batches, sorted by length inside a pool and
    batched, and the batches shuffled: padding stays small while every epoch differs.
    """
    order = rng.permutation(len(lengths))
    pool = 50 * batch_size
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return [b for b in batches if len(b) > 1]  # a batch of one breaks nothing but wastes a step


@torch.no_grad()
def predict(
    model: nn.Module,
    family: Family,
    ds: TrainingDataset,
    index: np.ndarray,
    device: torch.device,
    extras: ExtraInputs | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Probabilities (len(index), C) for whole light curves (last truncation level = inf),
    with the extra inputs ``extras`` where objects have them."""
    model.eval()
    full = np.full(len(index), len(ds.truncation_days) - 1)
    order = np.argsort(ds.batch.lengths[index], kind="stable")
    out: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        pos = order[start : start + batch_size]
        batch = make_batch(ds, index[pos], full[pos], device, extras)
        proba = family.probabilities(model, batch).float().cpu().numpy()
        if out is None:
            out = np.empty((len(index), proba.shape[1]), np.float32)
        out[pos] = proba
    assert out is not None, "no objects to predict"
    return out


@torch.no_grad()
def embed_dataset(
    model: nn.Module,
    family: Family,
    ds: TrainingDataset,
    index: np.ndarray,
    device: torch.device,
    extras: ExtraInputs | None = None,
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """The family's named embeddings (whole light curves) of ``index``, in its order (an
    extra input's: meaningful only where the object has it, see ``extras[name][1]``)."""
    model.eval()
    full = np.full(len(index), len(ds.truncation_days) - 1)
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(index), batch_size):
        pos = np.arange(start, min(start + batch_size, len(index)))
        batch = make_batch(ds, index[pos], full[pos], device, extras)
        for name, z in family.embed(model, batch).items():
            out.setdefault(name, np.empty((len(index), z.shape[1]), np.float32))[pos] = (
                z.float().cpu().numpy()
            )
    return out


def label_seed(cfg: TrainConfig) -> int:
    """Seed of the label subset: varies with training.seed (few-label experiments repeat
    over seeds) while data.seed fixes the folds, hence the hold-out."""
    return cfg.data.seed + 7919 * cfg.training.seed


def label_subset(y: np.ndarray, train_idx: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified ``fraction`` of ``train_idx`` (sorted), at least one object per class."""
    if fraction >= 1.0:
        return train_idx
    rng = np.random.default_rng(seed + 1_000_003)
    keep = []
    for c in np.unique(y[train_idx]):
        members = train_idx[y[train_idx] == c]
        n = max(1, int(np.floor(fraction * len(members) + 0.5)))
        keep.append(rng.choice(members, size=n, replace=False))
    return np.sort(np.concatenate(keep)).astype(np.int64)
