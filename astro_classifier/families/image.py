"""Image cutout encoder (a tiny ViT) and its masked-image-modelling (SimMIM) pretraining.

**Input** (the one form of :mod:`astro_classifier.formats.stamps`): ``images`` (B, C, H, W)
float32, C = 3 stamps (science, template, difference) of H = W = 63 pixels, each stamp
``asinh((x - median) / (1.4826 MAD))`` with invalid pixels (NaN, blanks, padding) at 0.

**Encoder** (:class:`ImageEncoder`): non-overlapping ``patch_size`` patches (7x7: a 9x9
grid on 63x63 stamps) -> linear patch embedding (a strided convolution) + learned position
embedding -> ``n_layers`` pre-norm transformer blocks (dense, deterministic attention) ->
final LayerNorm -> mean over the patch tokens: ``forward(images, patch_mask=None)`` returns
(B, ``d_model``). ``patch_mask`` (B, n_patches) bool replaces the marked patches' tokens by
a learned mask token (pretraining only; serving passes none). The same module is the image
tower a CLIP model can adopt; :func:`export_image_encoder` writes it as one ONNX file
(input ``images``, output ``embedding``, dynamic batch).

**Pretraining** (:func:`pretrain_mim`, SimMIM, Xie et al. 2022): for every image a random
``mask_ratio`` of the patches is masked, the encoder sees the mask token in their place, a
light decoder (one linear layer per token, as SimMIM) predicts the patch pixels of all
channels, and the loss is the mean squared error over the masked patches' *valid* pixels
only (padding and NaN pixels are not reconstructed). Random flips and 90-degree rotations
augment the stamps (the sky has no preferred orientation). The encoder is kept; the decoder
is thrown away.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from astro_classifier.families.opset import OPSET


@dataclass(frozen=True)
class ImageEncoderConfig:
    in_channels: int = 3  # science, template, difference
    image_size: int = 63  # cutouts.STAMP_SIZE
    patch_size: int = 7
    d_model: int = 64  # output dimension
    n_layers: int = 3
    n_heads: int = 4
    ff_mult: int = 2
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of n_heads {self.n_heads}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def n_patches(self) -> int:
        return self.grid**2


class _Block(nn.Module):
    """Pre-norm transformer block with explicit (exportable, deterministic) attention."""

    def __init__(self, d: int, heads: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.width = heads, d
        self.scale = 1.0 / math.sqrt(d // heads)
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(
            nn.Linear(d, ff_mult * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_mult * d, d)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # patches and width are fixed; the batch stays dynamic (-1) so that an exported
        # graph takes any batch size
        n, d, h = x.shape[1], self.width, self.heads
        qkv = self.qkv(self.norm1(x)).reshape(-1, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q @ k.transpose(-2, -1)) * self.scale
        attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(-1, n, d)
        x = x + self.drop(self.proj(attn))
        return x + self.drop(self.ff(self.norm2(x)))


class ImageEncoder(nn.Module):
    """Tiny ViT over cutout stamps: ``forward(images (B, C, H, W), patch_mask=None) -> (B, d)``."""

    def __init__(self, config: ImageEncoderConfig | None = None) -> None:
        super().__init__()
        cfg = config or ImageEncoderConfig()
        self.config = cfg
        self.patch = nn.Conv2d(cfg.in_channels, cfg.d_model, cfg.patch_size, cfg.patch_size)
        self.pos = nn.Parameter(torch.zeros(1, cfg.n_patches, cfg.d_model))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.blocks = nn.ModuleList(
            _Block(cfg.d_model, cfg.n_heads, cfg.ff_mult, cfg.dropout) for _ in range(cfg.n_layers)
        )
        self.norm = nn.LayerNorm(cfg.d_model)
        nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def tokens(self, images: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-patch outputs (B, n_patches, d) after the final norm."""
        cfg = self.config
        if not torch.jit.is_tracing() and tuple(images.shape[1:]) != (
            cfg.in_channels,
            cfg.image_size,
            cfg.image_size,
        ):
            raise ValueError(
                f"images of shape {tuple(images.shape)}; expected (B, {cfg.in_channels}, "
                f"{cfg.image_size}, {cfg.image_size}) normalised cutouts"
            )
        x = self.patch(images).flatten(2).transpose(1, 2)  # (B, P, d), row-major patches
        if patch_mask is not None:
            x = torch.where(patch_mask[..., None], self.mask_token.to(x.dtype), x)
        x = x + self.pos
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, images: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.tokens(images, patch_mask).mean(dim=1)


# -- masked image modelling -----------------------------------------------------------------
def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, n_patches, C * p * p), patches in the encoder's row-major order."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(x: torch.Tensor, c: int, p: int, grid: int) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    b = x.shape[0]
    x = x.reshape(b, grid, grid, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, grid * p, grid * p)


def random_patch_mask(
    batch: int, n_patches: int, ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(batch, n_patches) bool, exactly ``round(ratio * n_patches)`` True per row."""
    n_mask = max(1, round(ratio * n_patches))
    order = torch.rand(batch, n_patches, generator=generator).argsort(dim=1)
    mask = torch.zeros(batch, n_patches, dtype=torch.bool)
    mask.scatter_(1, order[:, :n_mask], True)
    return mask


class MaskedImageModel(nn.Module):
    """Encoder + light decoder (one linear layer per token -> the patch's pixels)."""

    def __init__(self, config: ImageEncoderConfig | None = None) -> None:
        super().__init__()
        self.encoder = ImageEncoder(config)
        cfg = self.encoder.config
        self.decoder = nn.Linear(cfg.d_model, cfg.in_channels * cfg.patch_size**2)

    def reconstruct(self, images: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        """Predicted images (B, C, H, W) for every patch (only the masked ones are trained)."""
        cfg = self.encoder.config
        pred = self.decoder(self.encoder.tokens(images, patch_mask))
        return unpatchify(pred, cfg.in_channels, cfg.patch_size, cfg.grid)

    def loss(
        self, images: torch.Tensor, valid: torch.Tensor, patch_mask: torch.Tensor
    ) -> torch.Tensor:
        """Mean squared error over the valid pixels of the masked patches."""
        cfg = self.encoder.config
        pred = self.decoder(self.encoder.tokens(images, patch_mask))
        target = patchify(images, cfg.patch_size)
        weight = patchify(valid.to(images.dtype), cfg.patch_size) * patch_mask[..., None]
        return ((pred - target) ** 2 * weight).sum() / weight.sum().clamp_min(1.0)


def masked_baseline_loss(images: np.ndarray, valid: np.ndarray, mask: np.ndarray, p: int) -> float:
    """The loss of predicting 0 (each stamp's median) at every masked valid pixel: the
    reference a reconstruction must beat."""
    x = patchify(torch.from_numpy(images), p)
    w = patchify(torch.from_numpy(valid).float(), p) * torch.from_numpy(mask)[..., None]
    return float((x**2 * w).sum() / w.sum().clamp_min(1.0))


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
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_idx) / cfg.batch_size))
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch

    def lr_at(step: int) -> float:  # linear warm-up, then cosine to 0
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    train_loss: list[float] = []
    val_loss: list[float] = []
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(train_idx), generator=gen)
        total_loss, seen = 0.0, 0
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            x, v = x_tr[idx], v_tr[idx]
            if cfg.augment:
                x, v = _augment(x, v, gen)
            mask = random_patch_mask(len(idx), enc.n_patches, cfg.mask_ratio, gen)
            loss = model.loss(x, v, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * len(idx)
            seen += len(idx)
        train_loss.append(total_loss / seen)
        if n_val:
            val_loss.append(evaluate_mim(model, x_va, v_va, val_mask))
        if log:
            extra = f", val {val_loss[-1]:.4f} (median baseline {baseline:.4f})" if n_val else ""
            log(f"MIM epoch {epoch + 1}/{cfg.epochs}: train {train_loss[-1]:.4f}{extra}")
    model.eval()
    return MIMResult(
        model=model,
        train_loss=train_loss,
        val_loss=val_loss,
        val_baseline=baseline,
        n_train=len(train_idx),
        n_val=n_val,
        seconds=time.perf_counter() - start,
        val_index=val_idx,
        config={**asdict(cfg), "encoder": asdict(enc)},
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


@torch.no_grad()
def embed_images(encoder: ImageEncoder, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Pooled embeddings (N, d) float32 of normalised cutouts, in eval mode."""
    encoder.eval()
    out = [
        encoder(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size]))).numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, encoder.config.d_model), np.float32)


def export_image_encoder(encoder: ImageEncoder, path: str | Path) -> Path:
    """Write the encoder as an ONNX file: input ``images`` (batch, C, H, W) float32, output
    ``embedding`` (batch, d_model); the project's opset; config in the metadata."""
    import json
    import warnings

    import onnx

    cfg = encoder.config
    path = Path(path)
    encoder = encoder.eval()
    example = torch.zeros(2, cfg.in_channels, cfg.image_size, cfg.image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # shapes read in forward (head split, scale) are constants of the config
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            encoder,
            (example,),
            str(path),
            input_names=["images"],
            output_names=["embedding"],
            dynamic_axes={"images": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    meta = proto.metadata_props.add()
    meta.key, meta.value = "image_encoder_config", json.dumps(asdict(cfg))
    onnx.save(proto, str(path))
    return path


def mask_to_pixels(mask: torch.Tensor, config: ImageEncoderConfig) -> torch.Tensor:
    """(B, n_patches) patch mask -> (B, 1, H, W) float pixel mask (1 = masked), for plots."""
    p = config.patch_size
    m = mask.float()[..., None].expand(-1, -1, p * p)
    return unpatchify(m, 1, p, config.grid)


__all__ = [
    "ImageEncoder",
    "ImageEncoderConfig",
    "MIMConfig",
    "MIMResult",
    "MaskedImageModel",
    "embed_images",
    "export_image_encoder",
    "mask_to_pixels",
    "patchify",
    "pretrain_mim",
    "random_patch_mask",
    "unpatchify",
]
