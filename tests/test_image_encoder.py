"""The cutout image encoder (tiny ViT), its ONNX export and masked-image-modelling
pretraining on real alert stamps."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from astro_classifier.export.image_encoder import export_image_encoder
from astro_classifier.families.image import (
    ImageEncoder,
    ImageEncoderConfig,
    MaskedImageModel,
    patchify,
    random_patch_mask,
    unpatchify,
)
from astro_classifier.formats.registry import read_cutouts
from astro_classifier.training.mim import MIMConfig, evaluate_mim, pretrain_mim

TINY = ImageEncoderConfig(d_model=32, n_layers=1, n_heads=2)


@pytest.fixture(scope="module")
def ztf_stamps(shared_data):
    """The usable stamps of the 57 alerts of two small real ZTF folders."""
    batches = [
        read_cutouts(shared_data / "alerts/ztf" / f) for f in ("ztf-avro-alert", "fink-v3.3")
    ]
    images = np.concatenate([b.images[b.ok] for b in batches])
    valid = np.concatenate([b.valid[b.ok] for b in batches])
    assert len(images) == 57
    return images, valid


def test_encoder_interface():
    torch.manual_seed(0)
    encoder = ImageEncoder(TINY).eval()
    x = torch.randn(5, 3, 63, 63)
    out = encoder(x)
    assert out.shape == (5, 32) and out.dtype == torch.float32
    mask = random_patch_mask(5, TINY.n_patches, 0.5)
    assert not torch.allclose(encoder(x, mask), out)  # masked patches are replaced
    assert torch.equal(encoder(x[:2]), encoder(x[:2]))  # deterministic
    torch.testing.assert_close(encoder(x[:2]), out[:2], atol=1e-6, rtol=0)  # per-row
    with pytest.raises(ValueError, match=r"expected \(B, 3, 63, 63\)"):
        encoder(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        ImageEncoderConfig(image_size=63, patch_size=8)


def test_patches_round_trip_and_masks_are_exact():
    x = torch.randn(2, 3, 63, 63)
    p = patchify(x, 7)
    assert p.shape == (2, 81, 3 * 49)
    torch.testing.assert_close(unpatchify(p, 3, 7, 9), x, atol=0, rtol=0)
    # patch 10 (row 1, column 1) is pixels 7..13 x 7..13
    torch.testing.assert_close(p[:, 10].reshape(2, 3, 7, 7), x[:, :, 7:14, 7:14], atol=0, rtol=0)
    mask = random_patch_mask(4, 81, 0.6, torch.Generator().manual_seed(0))
    assert (mask.sum(1) == round(0.6 * 81)).all()


@torch.no_grad()
def test_loss_counts_only_masked_valid_pixels():
    torch.manual_seed(0)
    model = MaskedImageModel(TINY)
    x = torch.randn(3, 3, 63, 63)
    mask = random_patch_mask(3, TINY.n_patches, 0.6)
    assert float(model.loss(x, torch.zeros_like(x, dtype=torch.bool), mask)) == 0.0
    valid = torch.ones_like(x, dtype=torch.bool)
    full = float(model.loss(x, valid, mask))
    # the same loss computed by hand over the masked patches
    pred = model.decoder(model.encoder.tokens(x, mask))
    err = ((pred - patchify(x, 7)) ** 2)[mask]
    assert full == pytest.approx(float(err.mean()), rel=1e-5)


@pytest.mark.slow
def test_onnx_export_matches_torch(tmp_path):
    torch.manual_seed(1)
    encoder = ImageEncoder(ImageEncoderConfig()).eval()
    path = export_image_encoder(encoder, tmp_path / "image.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["image_encoder_config"])["d_model"] == 64
    x = np.random.default_rng(0).standard_normal((7, 3, 63, 63)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    got = session.run(["embedding"], {"images": x})[0]  # batch 7: the batch axis is dynamic
    with torch.no_grad():
        ref = encoder(torch.from_numpy(x)).numpy()
    assert got.shape == (7, 64)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_mim_loss_decreases_on_real_stamps(ztf_stamps):
    images, valid = ztf_stamps
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 busy cores: one thread is much faster
    try:
        _check_mim_loss_decreases(images, valid)
    finally:
        torch.set_num_threads(threads)


def _check_mim_loss_decreases(images: np.ndarray, valid: np.ndarray) -> None:
    cfg = MIMConfig(
        encoder=TINY, epochs=12, batch_size=16, lr=3e-3, warmup_epochs=1, val_fraction=0.0
    )
    gen = torch.Generator().manual_seed(123)
    mask = random_patch_mask(len(images), TINY.n_patches, cfg.mask_ratio, gen)
    x, v = torch.from_numpy(images), torch.from_numpy(valid)
    torch.manual_seed(cfg.seed)
    before = evaluate_mim(MaskedImageModel(TINY), x, v, mask)  # same init as pretrain_mim
    result = pretrain_mim(images, valid, cfg)
    after = evaluate_mim(result.model, x, v, mask)
    assert len(result.train_loss) == 12 and result.n_train == 57
    assert result.train_loss[-1] < result.train_loss[0]
    assert after < 0.9 * before, (before, after)
