"""Metrics against scikit-learn on random data, and a hand-computed log loss."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from astro_classifier.evaluation.metrics import (
    ClassificationMetrics,
    class_balanced_log_loss,
    classification_report,
    confusion_matrix,
)

N_CLASSES = 6
LABELS = [f"class{k}" for k in range(N_CLASSES)]


def _random_case(seed: int, n: int = 500) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, N_CLASSES, n)
    logits = rng.normal(size=(n, N_CLASSES))
    logits[np.arange(n), y_true] += 1.0  # better than chance, far from perfect
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y_true, proba


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_report_matches_sklearn(seed: int) -> None:
    y_true, proba = _random_case(seed)
    y_pred = proba.argmax(axis=1)
    report = classification_report(y_true, proba, LABELS)
    assert report.accuracy == pytest.approx(accuracy_score(y_true, y_pred))
    assert report.macro_f1 == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    recall = recall_score(y_true, y_pred, average=None, labels=range(N_CLASSES))
    precision = precision_score(y_true, y_pred, average=None, labels=range(N_CLASSES))
    f1 = f1_score(y_true, y_pred, average=None, labels=range(N_CLASSES))
    for k, label in enumerate(LABELS):
        assert report.recall[label] == pytest.approx(recall[k])
        assert report.precision[label] == pytest.approx(precision[k])
        assert report.f1[label] == pytest.approx(f1[k])
        assert report.support[label] == int((y_true == k).sum())
    assert report.n_objects == len(y_true)
    expected_cm = sk_confusion_matrix(y_true, y_pred, labels=range(N_CLASSES))
    np.testing.assert_array_equal(np.array(report.confusion_matrix), expected_cm)


def test_confusion_matrix_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 4, 200)
    y_pred = rng.integers(0, 4, 200)
    cm = confusion_matrix(y_true, y_pred, 5)  # class 4 never occurs: zero row and column
    assert cm.dtype == np.int64 and cm.shape == (5, 5)
    np.testing.assert_array_equal(cm, sk_confusion_matrix(y_true, y_pred, labels=range(5)))


def test_macro_f1_averages_over_classes_present_in_y_true() -> None:
    # Class 2 never occurs but is predicted once: it is left out of the average,
    # like sklearn given labels=present classes.
    y_true = np.array([0, 0, 1, 1, 1])
    y_pred = np.array([0, 2, 1, 1, 0])
    proba = np.eye(3)[y_pred]
    report = classification_report(y_true, proba, ["a", "b", "c"])
    expected = f1_score(y_true, y_pred, average="macro", labels=[0, 1])
    assert report.macro_f1 == pytest.approx(expected)
    assert report.support["c"] == 0
    assert report.recall["c"] == 0.0 and report.precision["c"] == 0.0


def test_class_balanced_log_loss_by_hand() -> None:
    y_true = np.array([0, 0, 0, 1])
    proba = np.array(
        [
            [0.5, 0.5],
            [0.25, 0.75],
            [1.0, 0.0],
            [0.2, 0.8],
        ]
    )
    # class 0: mean(-ln 0.5, -ln 0.25, -ln 1) = (ln 2 + ln 4) / 3 = ln 2; class 1: -ln 0.8
    expected = (math.log(2) + -math.log(0.8)) / 2
    assert class_balanced_log_loss(y_true, proba) == pytest.approx(expected, rel=1e-9)


def test_log_loss_clips_and_renormalises() -> None:
    y_true = np.array([0])
    proba = np.array([[0.0, 2.0]])  # clipped to [1e-3, 1 - 1e-3], renormalised to sum 1
    eps = 1e-3
    assert class_balanced_log_loss(y_true, proba, eps=eps) == pytest.approx(
        -math.log(eps / (eps + 1 - eps))
    )
    # Equal class weights: a rare class counts as much as a common one.
    y = np.array([0] * 9 + [1])
    p = np.tile([0.9, 0.1], (10, 1))
    assert class_balanced_log_loss(y, p) == pytest.approx((-math.log(0.9) - math.log(0.1)) / 2)


def test_report_to_dict_is_json_friendly() -> None:
    y_true, proba = _random_case(4, n=60)
    report = classification_report(y_true, proba, LABELS)
    assert isinstance(report, ClassificationMetrics)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["labels"] == LABELS
    assert data["n_objects"] == 60
    assert set(data["f1"]) == set(LABELS)
    assert sum(map(sum, data["confusion_matrix"])) == 60
    with pytest.raises(AttributeError):
        report.accuracy = 1.0  # type: ignore[misc]


def test_bad_inputs_are_rejected_with_clear_messages() -> None:
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="2 labels"):
        classification_report(np.array([0]), np.array([[0.2, 0.3, 0.5]]), ["a", "b"])
    with pytest.raises(ValueError, match="integer"):
        class_balanced_log_loss(np.array([0.5]), np.array([[0.5, 0.5]]))
