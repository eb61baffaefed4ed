"""Image cutout encoder (a tiny ViT) and the model of its masked-image-modelling pretraining.

**Input** (the one form of :mod:`astro_classifier.formats.stamps`): ``images`` (B, C, H, W)
float32, C = 3 stamps (science, template, difference) of H = W = 63 pixels, each stamp
``asinh((x - median) / (1.4826 MAD))`` with invalid pixels (NaN, blanks, padding) at 0.

**Encoder** (:class:`ImageEncoder`): non-overlapping ``patch_size`` patches (7x7: a 9x9
grid on 63x63 stamps) -> linear patch embedding (a strided convolution) + learned position
embedding -> ``n_layers`` pre-norm transformer blocks (dense, deterministic attention) ->
final LayerNorm -> mean over the patch tokens: ``forward(images, patch_mask=None)`` returns
(B, ``d_model``). ``patch_mask`` (B, n_patches) bool replaces the marked patches' tokens by
a learned mask token (pretraining only; serving passes none). The same module is the image
tower a CLIP model can adopt; :func:`astro_classifier.export.image_encoder.export_image_encoder`
writes it as one ONNX file (input ``images``, output ``embedding``, dynamic batch).

**Masked image model** (:class:`MaskedImageModel`, SimMIM, Xie et al. 2022): the encoder
sees the mask token in place of the masked patches, a light decoder (one linear layer per
token, as SimMIM) predicts the patch pixels of all channels, and the loss is the mean squared
error over the masked patches' *valid* pixels only (padding and NaN pixels are not
reconstructed). Its training is :func:`astro_classifier.training.mim.pretrain_mim`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


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


@torch.no_grad()
def embed_images(encoder: ImageEncoder, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Pooled embeddings (N, d) float32 of normalised cutouts, in eval mode."""
    encoder.eval()
    out = [
        encoder(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size]))).numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, encoder.config.d_model), np.float32)


def mask_to_pixels(mask: torch.Tensor, config: ImageEncoderConfig) -> torch.Tensor:
    """(B, n_patches) patch mask -> (B, 1, H, W) float pixel mask (1 = masked), for plots."""
    p = config.patch_size
    m = mask.float()[..., None].expand(-1, -1, p * p)
    return unpatchify(m, 1, p, config.grid)


__all__ = [
    "ImageEncoder",
    "ImageEncoderConfig",
    "MaskedImageModel",
    "embed_images",
    "mask_to_pixels",
    "masked_baseline_loss",
    "patchify",
    "random_patch_mask",
    "unpatchify",
]
