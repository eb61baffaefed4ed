"""Contrastive pretraining on renderings (astro_classifier.training.contrastive)."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rich.console import Console  # noqa: E402

from astro_classifier.core.lightcurve import LightCurveBatch  # noqa: E402
from astro_classifier.families.registry import ATAT_FAMILY, create_model  # noqa: E402
from astro_classifier.features.preprocess import PreprocessingSpec  # noqa: E402
from astro_classifier.training.contrastive import (  # noqa: E402
    nt_xent,
    pretrain_on_renderings,
    pretraining_rows,
)


def test_nt_xent_known_answers() -> None:
    eye = torch.eye(4)
    # each vector's partner is itself and every other vector is orthogonal: the loss is
    # -log(e^{1/t} / (e^{1/t} + 6 e^0)) for 2B - 2 = 6 negatives
    t = 0.5
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 6))
    assert nt_xent(eye, eye, t).item() == pytest.approx(expected, rel=1e-6)
    # partners of rows 0 and 1 swapped: those four anchors find a negative identical to
    # themselves and an orthogonal partner, -log(e^0 / (e^{1/t} + 6)); the other four as before
    swapped = math.log(math.exp(1 / t) + 6)
    got = nt_xent(eye, eye[[1, 0, 2, 3]], t).item()
    assert got == pytest.approx((4 * swapped + 4 * expected) / 8, rel=1e-6)


def test_pretraining_rows_are_objects_as_read() -> None:
    batch = LightCurveBatch.from_points(
        object_id=np.array(["a", "b", "c", "d"]),
        time=np.arange(4.0),
        band=np.zeros(4, np.int64),
        flux=np.ones(4),
        flux_err=np.ones(4),
        detected=np.ones(4, bool),
        objects=np.array(["a", "b", "c", "d"]),
        metadata={"processing": np.array([-1.0, -1.0, 2.0, -1.0])},
    )
    assert pretraining_rows(batch, np.array([1, 2, 3])).tolist() == [1, 3]
    del batch.metadata["processing"]
    assert pretraining_rows(batch, np.array([1, 2, 3])).tolist() == [1, 2, 3]


def _light_curves(n: int = 48, seed: int = 0) -> LightCurveBatch:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, 40, n)
    obj = np.repeat(np.arange(n), lengths)
    p = len(obj)
    t = 59000.3 + np.sort(rng.uniform(0, 300, p))
    err = rng.uniform(5, 20, p)
    return LightCurveBatch.from_points(
        object_id=obj.astype(str),
        time=t,
        band=rng.integers(1, 3, p),
        flux=rng.normal(0, 1, p) * err + 300.0 * np.sin(t / 20.0) ** 2,
        flux_err=err,
        detected=rng.random(p) < 0.6,
        objects=np.arange(n).astype(str),
        label=np.array(["SNIa", "RRL", "AGN"] * (n // 3)),
    )


@pytest.mark.slow  # trains: two epochs of contrastive pretraining
def test_pretraining_moves_the_encoders_and_reports_a_finite_loss() -> None:
    torch.manual_seed(0)
    spec = PreprocessingSpec(bands=("g", "r"), max_length=64, nightly_bin=True)
    model = create_model("atat_tiny", n_classes=3, n_bands=2, n_features=len(spec.feature_names))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = _light_curves()
    history = pretrain_on_renderings(
        model,
        ATAT_FAMILY,
        batch,
        np.arange(len(batch)),
        spec,
        epochs=2,
        processings=["as-read", "alert", "sparse"],
        temperature=0.2,
        learning_rate=1e-3,
        batch_size=16,
        seed=0,
        device=torch.device("cpu"),
        console=Console(quiet=True),
    )
    assert len(history) == 2 and all(np.isfinite(history))
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("lc_encoder.") for k in changed)
    assert not any(k.startswith(("lc_head.", "mix_head.")) for k in changed)
