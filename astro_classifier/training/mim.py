"""Masked-image-modelling (SimMIM) pretraining of the image encoder on alert stamps.

:func:`pretrain_mim` trains a :class:`~astro_classifier.families.image.MaskedImageModel` on
normalised cutouts through the one training loop (:mod:`astro_classifier.training.loop`): for
every image a random ``mask_ratio`` of the patches is masked and the masked patches' valid
pixels are reconstructed; random flips and 90-degree rotations augment the stamps (the sky has
no preferred orientation). A ``val_fraction`` of the images is held out with fixed masks: its
loss is the validation score (the best epoch's weights are kept); without held-out images the
training loss is. The encoder is kept (``MIMResult.encoder``); the decoder is thrown away.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from astro_classifier.families.image import (
    ImageEncoder,
    ImageEncoderConfig,
    MaskedImageModel,
    masked_baseline_loss,
    patchify,
    random_patch_mask,
)
from astro_classifier.training.loop import Schedule, Step, Validation, run_epochs


def _augment(x: torch.Tensor, v: torch.Tensor, gen: torch.Generator):
    """One random dihedral transform (flip + 0-3 quarter turns) per batch."""
    k = int(torch.randint(0, 4, (1,), generator=gen))
    flip = bool(torch.randint(0, 2, (1,), generator=gen))
    if flip:
        x, v = x.flip(-1), v.flip(-1)
    return torch.rot90(x, k, (-2, -1)), torch.rot90(v, k, (-2, -1))


@dataclass
class MIMConfig:
    encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    mask_ratio: float = 0.6
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    val_fraction: float = 0.1  # held-out images, fixed masks: the validation loss
    augment: bool = True
    seed: int = 0


@dataclass
class MIMResult:
    model: MaskedImageModel
    train_loss: list[float]  # mean per epoch
    val_loss: list[float]  # per epoch, fixed masks (empty when val_fraction == 0)
    val_baseline: float  # predict-the-median loss on the same held-out masked pixels
    n_train: int
    n_val: int
    seconds: float
    val_index: np.ndarray  # rows of the input held out for the validation loss
    config: dict
    best_epoch: int = 0  # whose weights the model holds

    @property
    def encoder(self) -> ImageEncoder:
        return self.model.encoder


def pretrain_mim(
    images: np.ndarray,
    valid: np.ndarray,
    config: MIMConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> MIMResult:
    """SimMIM pretraining on normalised cutouts ``images`` (N, C, H, W) float32 with their
    validity mask ``valid`` (same shape, bool); returns the model and the loss curves."""
    cfg = config or MIMConfig()
    images = np.asarray(images, np.float32)
    valid = np.asarray(valid, bool)
    enc = cfg.encoder
    expected = (enc.in_channels, enc.image_size, enc.image_size)
    if images.ndim != 4 or images.shape[1:] != expected or valid.shape != images.shape:
        raise ValueError(
            f"images {images.shape} / valid {valid.shape}; expected (N, *{expected}) each"
        )
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(images)
    order = torch.randperm(n, generator=gen).numpy()
    n_val = int(round(cfg.val_fraction * n)) if n > 10 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    x_tr, v_tr = torch.from_numpy(images[train_idx]), torch.from_numpy(valid[train_idx])
    x_va, v_va = torch.from_numpy(images[val_idx]), torch.from_numpy(valid[val_idx])
    val_mask = random_patch_mask(n_val, enc.n_patches, cfg.mask_ratio, gen)
    baseline = (
        masked_baseline_loss(images[val_idx], valid[val_idx], val_mask.numpy(), enc.patch_size)
        if n_val
        else float("nan")
    )
    model = MaskedImageModel(enc)
    train_loss: list[float] = []
    val_loss: list[float] = []

    def batches() -> list[torch.Tensor]:
        perm = torch.randperm(len(train_idx), generator=gen)
        return [perm[i : i + cfg.batch_size] for i in range(0, len(perm), cfg.batch_size)]

    def step(idx: torch.Tensor) -> Step:
        x, v = x_tr[idx], v_tr[idx]
        if cfg.augment:
            x, v = _augment(x, v, gen)
        mask = random_patch_mask(len(idx), enc.n_patches, cfg.mask_ratio, gen)
        loss = model.loss(x, v, mask)
        return Step(loss, float(loss.detach()), len(idx))

    def validate() -> Validation:
        if not n_val:
            return Validation({}, None, "")
        val_loss.append(evaluate_mim(model, x_va, v_va, val_mask))
        text = f"val {val_loss[-1]:.4f} (median baseline {baseline:.4f})"
        return Validation({"val_loss": val_loss[-1]}, -val_loss[-1], text)

    result = run_epochs(
        model,
        list(model.parameters()),
        Schedule(cfg.epochs, cfg.lr, cfg.weight_decay, cfg.warmup_epochs),
        max(1, math.ceil(len(train_idx) / cfg.batch_size)),
        batches,
        step,
        validate,
        log=(lambda line: log(f"MIM {line}")) if log else (lambda _: None),
        metric="validation loss",
    )
    train_loss = [row["train_loss"] for row in result.history]
    model.eval()
    return MIMResult(
        model=model,
        train_loss=train_loss,
        val_loss=val_loss,
        val_baseline=baseline,
        n_train=len(train_idx),
        n_val=n_val,
        seconds=result.seconds,
        val_index=val_idx,
        config={**asdict(cfg), "encoder": asdict(enc)},
        best_epoch=result.best_epoch,
    )


@torch.no_grad()
def evaluate_mim(
    model: MaskedImageModel,
    images: torch.Tensor,
    valid: torch.Tensor,
    mask: torch.Tensor,
    batch_size: int = 256,
) -> float:
    """Masked-pixel MSE over a set (weighted by masked valid pixels), in eval mode."""
    was_training = model.training
    model.eval()
    cfg = model.encoder.config
    num = den = 0.0
    for i in range(0, len(images), batch_size):
        x, v, m = images[i : i + batch_size], valid[i : i + batch_size], mask[i : i + batch_size]
        pred = model.decoder(model.encoder.tokens(x, m))
        target = patchify(x, cfg.patch_size)
        w = patchify(v.float(), cfg.patch_size) * m[..., None]
        num += float(((pred - target) ** 2 * w).sum())
        den += float(w.sum())
    model.train(was_training)
    return num / max(den, 1.0)
