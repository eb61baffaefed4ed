"""What the supervised training loops share (:mod:`~astro_classifier.training.train` for ATAT,
:mod:`~astro_classifier.training.clip_train` for CLIP): model inputs as tensors,
length-bucketed batches, batched prediction and the labelled subset of few-label runs."""

from __future__ import annotations

import numpy as np
import torch

from astro_classifier.features.preprocess import ModelInputs, light_curves_to_inputs
from astro_classifier.training.config import TrainConfig
from astro_classifier.training.dataset import TrainingDataset


def to_tensors(inputs: ModelInputs, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).to(device) for k, v in inputs.as_dict().items()}


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
    model: torch.nn.Module,
    ds: TrainingDataset,
    index: np.ndarray,
    device: torch.device,
    batch_size: int = 256,
) -> np.ndarray:
    """Probabilities (len(index), C) for whole light curves (last truncation level = inf)."""
    model.eval()
    full = np.full(len(index), len(ds.truncation_days) - 1)
    order = np.argsort(ds.batch.lengths[index], kind="stable")
    out = np.empty((len(index), model.cfg.n_classes), np.float32)
    for start in range(0, len(order), batch_size):
        pos = order[start : start + batch_size]
        sub, feats = ds.truncated(index[pos], full[pos])
        inputs = light_curves_to_inputs(sub, ds.spec, tabular=feats)
        out[pos] = model(**to_tensors(inputs, device)).float().cpu().numpy()
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
