"""The image encoder as its own ONNX file (input ``images``, output ``embedding``).

:func:`export_image_encoder` writes a :class:`~astro_classifier.families.image.ImageEncoder`
through the one writer (:func:`astro_classifier.export.writer.write_onnx`): traced with a
dynamic batch axis, its config in the metadata (``image_encoder_config``, JSON),
``onnx.checker``, then kept only if ONNX Runtime matches torch within :data:`TOLERANCE` on a
batch of random stamps.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from astro_classifier.export.parity import ParityError
from astro_classifier.export.writer import write_onnx
from astro_classifier.families.image import ImageEncoder

TOLERANCE = 1e-5  # max |Δ| of the embedding, relative to max(1, largest |value|)
PARITY_IMAGES = 7  # random stamps the parity check runs (a batch size traced with 2)


def export_image_encoder(encoder: ImageEncoder, path: str | Path) -> Path:
    """Write the encoder as an ONNX file: input ``images`` (batch, C, H, W) float32, output
    ``embedding`` (batch, d_model); the project's opset; config in the metadata."""
    import onnxruntime as ort

    cfg = encoder.config
    path = Path(path)
    encoder = encoder.eval()
    example = {"images": np.zeros((2, cfg.in_channels, cfg.image_size, cfg.image_size), np.float32)}
    rng = np.random.default_rng(0)
    probe = rng.standard_normal(
        (PARITY_IMAGES, cfg.in_channels, cfg.image_size, cfg.image_size)
    ).astype(np.float32)

    def check(tmp: Path) -> float:
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(["embedding"], {"images": probe})[0]
        with torch.no_grad():
            expected = encoder(torch.from_numpy(probe)).numpy()
        diff = float(np.abs(got - expected).max()) / max(1.0, float(np.abs(expected).max()))
        if diff > TOLERANCE:
            raise ParityError(f"ONNX Runtime and torch disagree: {diff:.1e}; {path} not written")
        return diff

    write_onnx(
        encoder,
        example,
        ["embedding"],
        {"images": {0: "batch"}, "embedding": {0: "batch"}},
        path,
        {"image_encoder_config": json.dumps(asdict(cfg))},
        check,
    )
    return path
