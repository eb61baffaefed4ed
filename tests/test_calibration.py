"""Calibration: ECE and reliability curve, temperature fitting, evaluate's reliability diagram."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from astro_classifier.cli.app import app
from astro_classifier.evaluation.evaluate import evaluate
from astro_classifier.evaluation.metrics import (
    expected_calibration_error,
    negative_log_likelihood,
    reliability_curve,
)
from astro_classifier.export.calibration import fit_temperature, nll_at, softmax
from astro_classifier.formats.plasticc import read_plasticc
from astro_classifier.inference.model import LoadedModel
from tests.conftest import PROJECT_ROOT

EXAMPLE = PROJECT_ROOT / "examples" / "plasticc"


def _synthetic(n: int = 20_000, c: int = 6, over: float = 3.0, seed: int = 0):
    """Labels drawn from softmax(z); the 'model' reports z * over (over-confident)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, (n, c))
    p = softmax(z)
    y = (rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    return z * over, np.minimum(y, c - 1)


def test_ece_of_hand_made_cases() -> None:
    # every object at confidence 0.8, 80 % right: calibrated
    proba = np.tile([0.8, 0.2], (10, 1))
    y = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(proba, y) == pytest.approx(0.0, abs=1e-12)
    # always sure (1.0) and right half the time: ECE 0.5
    proba = np.tile([1.0, 0.0], (4, 1))
    assert expected_calibration_error(proba, np.array([0, 0, 1, 1])) == pytest.approx(0.5)
    # two bins: 0.9 x4 all right (gap 0.1), 0.6 x4 half right (gap 0.1) -> 0.1
    proba = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 4)
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    assert expected_calibration_error(proba, y) == pytest.approx(0.1)


def test_reliability_curve_bins() -> None:
    proba = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 4 + [[0.5, 0.5]])
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 0])
    curve = reliability_curve(proba, y, n_bins=10)
    assert len(curve.edges) == 11 and curve.counts.sum() == len(y)
    assert curve.counts[8] == 4 and curve.counts[5] == 4 and curve.counts[4] == 1  # (0.4, 0.5]
    assert curve.accuracy[8] == 1.0 and curve.confidence[8] == pytest.approx(0.9)
    assert np.isnan(curve.accuracy[0])  # empty bin
    d = curve.to_dict()
    assert d["accuracy"][0] is None and d["counts"][8] == 4
    json.dumps(d)


def test_temperature_fit_recovers_over_confidence_and_lowers_ece() -> None:
    logits, y = _synthetic(over=3.0)
    t = fit_temperature(logits, y)
    assert t == pytest.approx(3.0, rel=0.08)
    before, after = softmax(logits), softmax(logits, t)
    ece_before, ece_after = (
        expected_calibration_error(before, y),
        expected_calibration_error(after, y),
    )
    assert ece_after < 0.02 < ece_before
    assert negative_log_likelihood(after, y) < negative_log_likelihood(before, y)
    # it is the minimum: nearby temperatures are not better
    assert nll_at(logits, y, t) <= min(nll_at(logits, y, t * 0.9), nll_at(logits, y, t * 1.1))


def test_temperature_fit_on_under_confident_and_calibrated_logits() -> None:
    logits, y = _synthetic(over=0.5, seed=1)
    assert fit_temperature(logits, y) == pytest.approx(0.5, rel=0.08)
    logits, y = _synthetic(over=1.0, seed=2)
    assert fit_temperature(logits, y) == pytest.approx(1.0, rel=0.08)


def test_temperature_fit_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((0, 3)), np.zeros(0, int))
    with pytest.raises(ValueError):
        fit_temperature(np.array([[np.nan, 0.0]]), np.array([0]))


def test_evaluate_counts_broad_kind_of_classes_the_model_lacks() -> None:
    model = LoadedModel.load("atat-lsst", provider="cpu")
    batch = read_plasticc(EXAMPLE / "lightcurves.csv", EXAMPLE / "metadata.csv")
    # three RR Lyrae relabelled as Cepheids: not a class of the model, but periodic
    rrl = np.flatnonzero(batch.label == "RRL")
    batch.label = batch.label.copy()
    batch.label[rrl] = "Cepheid"
    result = evaluate(batch, model)
    assert result.whole.n_objects == len(batch) - len(rrl)
    assert result.trust is not None and result.trust.n_broad == len(batch)
    assert result.excluded["label 'Cepheid' is not a class of atat-lsst"] == len(rrl)
    assert 0.0 <= result.trust.broad_accuracy <= 1.0
    assert 0.0 <= result.trust.ece <= 1.0


def test_evaluate_writes_reliability_diagram_and_trust_metrics(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "atat-lsst",
            str(EXAMPLE / "lightcurves.csv"),
            "--metadata",
            str(EXAMPLE / "metadata.csv"),
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    whole = json.loads((out / "metrics.json").read_text())["whole"]
    for key in ("ece", "broad_accuracy", "abstain_rate", "accuracy_kept", "reliability"):
        assert key in whole, key
    assert whole["ece_bins"] == 15 and sum(whole["reliability"]["counts"]) == whole["n_objects"]
    assert 0 <= whole["ece"] <= 1 and 0 <= whole["abstain_rate"] <= 1
    assert "ECE" in result.output and "abstain" in result.output
