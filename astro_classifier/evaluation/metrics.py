"""Classification metrics in numpy only (they run on the inference path: no sklearn, no torch).

Conventions, shared by every function here:

- classes are integer indices ``0 .. C-1``; ``labels[k]`` names class ``k``;
- ``proba`` is (N, C) float, row ``i`` the predicted distribution of object ``i``;
- a metric averaged "over classes" averages over the classes **present in** ``y_true``
  (a class with no true object has no recall and no per-class loss to average).

Undefined ratios follow scikit-learn's ``zero_division=0``: precision of a class that is
never predicted is 0, recall of a class that never occurs is 0 (its ``support`` is 0, so
it is easy to tell apart), and F1 is ``2 TP / (2 TP + FP + FN)``, 0 when that is 0 / 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


def _check_labels(y: np.ndarray, n_classes: int, name: str) -> np.ndarray:
    """``y`` as a 1-d int64 array of class indices in ``0 .. n_classes-1``."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {y.shape}")
    if y.size and y.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(
            f"{name} holds class indices outside 0..{n_classes - 1} (min {y.min()}, max {y.max()})"
        )
    return y


def _check_proba(y_true: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated (y_true (N,) int64, proba (N, C) float64)."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2:
        raise ValueError(f"proba must be (N, C), got shape {proba.shape}")
    y_true = _check_labels(y_true, proba.shape[1], "y_true")
    if len(y_true) != proba.shape[0]:
        raise ValueError(f"y_true has {len(y_true)} rows, proba has {proba.shape[0]}")
    if not np.isfinite(proba).all():
        raise ValueError("proba holds NaN or infinite values")
    return y_true, proba


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) int64 counts: row = true class, column = predicted class."""
    y_true = _check_labels(y_true, n_classes, "y_true")
    y_pred = _check_labels(y_pred, n_classes, "y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} rows, y_pred has {len(y_pred)}")
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes).astype(np.int64)


def class_balanced_log_loss(y_true: np.ndarray, proba: np.ndarray, eps: float = 1e-15) -> float:
    """PLAsTiCC-style log loss with equal weight per class (nats).

    Probabilities are clipped to ``[eps, 1 - eps]`` and each row renormalised to sum to 1;
    then, for every class present in ``y_true``, the mean of ``-log p(true class)`` over
    its objects is taken, and these per-class means are averaged with equal weights.
    """
    y_true, proba = _check_proba(y_true, proba)
    if len(y_true) == 0:
        raise ValueError("log loss of zero objects is undefined")
    p = np.clip(proba, eps, 1.0 - eps)
    p /= p.sum(axis=1, keepdims=True)
    nll = -np.log(p[np.arange(len(y_true)), y_true])  # (N,)
    n_classes = proba.shape[1]
    counts = np.bincount(y_true, minlength=n_classes)
    sums = np.bincount(y_true, weights=nll, minlength=n_classes)
    present = counts > 0
    return float(np.mean(sums[present] / counts[present]))


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0 where den is 0."""
    num = num.astype(np.float64)
    den = den.astype(np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


@dataclass(frozen=True)
class ClassificationMetrics:
    """Summary of a classifier on N objects; ``to_dict()`` gives plain JSON types.

    ``per-class`` dicts are keyed by label and hold every label, present or not (check
    ``support``). ``confusion_matrix[i][j]`` counts objects of true class ``labels[i]``
    predicted as ``labels[j]``.
    """

    labels: tuple[str, ...]
    n_objects: int
    accuracy: float
    macro_f1: float  # mean F1 over classes present in y_true
    log_loss: float  # class-balanced, see class_balanced_log_loss
    recall: dict[str, float] = field(default_factory=dict)
    precision: dict[str, float] = field(default_factory=dict)
    f1: dict[str, float] = field(default_factory=dict)
    support: dict[str, int] = field(default_factory=dict)
    confusion_matrix: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The metrics as a JSON-serialisable dict (lists, dicts, floats, ints, strings)."""
        out = asdict(self)
        out["labels"] = list(self.labels)
        return out


def classification_report(
    y_true: np.ndarray, proba: np.ndarray, labels: Sequence[str]
) -> ClassificationMetrics:
    """Accuracy, macro F1, class-balanced log loss and per-class scores.

    ``y_true`` (N,) int class indices, ``proba`` (N, C) predicted probabilities with
    ``C == len(labels)``; the predicted class is the argmax of each row.
    """
    labels = tuple(str(label) for label in labels)
    y_true, proba = _check_proba(y_true, proba)
    n_classes = len(labels)
    if proba.shape[1] != n_classes:
        raise ValueError(f"proba has {proba.shape[1]} columns but {n_classes} labels were given")
    if len(y_true) == 0:
        raise ValueError("cannot report on zero objects")
    y_pred = np.argmax(proba, axis=1)
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(cm)
    support = cm.sum(axis=1)  # true objects per class
    predicted = cm.sum(axis=0)  # predicted objects per class
    recall = _safe_ratio(tp, support)
    precision = _safe_ratio(tp, predicted)
    f1 = _safe_ratio(2 * tp, support + predicted)  # = 2 TP / (2 TP + FP + FN)
    present = support > 0
    return ClassificationMetrics(
        labels=labels,
        n_objects=int(len(y_true)),
        accuracy=float(tp.sum() / len(y_true)),
        macro_f1=float(f1[present].mean()),
        log_loss=class_balanced_log_loss(y_true, proba),
        recall={lab: float(v) for lab, v in zip(labels, recall, strict=True)},
        precision={lab: float(v) for lab, v in zip(labels, precision, strict=True)},
        f1={lab: float(v) for lab, v in zip(labels, f1, strict=True)},
        support={lab: int(v) for lab, v in zip(labels, support, strict=True)},
        confusion_matrix=cm.tolist(),
    )


# -- calibration -------------------------------------------------------------------------


@dataclass(frozen=True)
class ReliabilityCurve:
    """Top-label reliability over ``n_bins`` equal-width confidence bins of [0, 1].

    Bin ``b`` holds the objects whose confidence (top probability) lies in
    ``(edges[b], edges[b + 1]]`` (the first bin also holds a confidence of exactly 0).
    ``confidence[b]`` and ``accuracy[b]`` are the mean top probability and the fraction of
    correct top labels of its objects (NaN for an empty bin), ``counts[b]`` their number.
    """

    edges: np.ndarray  # (n_bins + 1,)
    confidence: np.ndarray  # (n_bins,)
    accuracy: np.ndarray  # (n_bins,)
    counts: np.ndarray  # (n_bins,) int64

    @property
    def ece(self) -> float:
        """Expected calibration error: sum over bins of (count / N) |accuracy - confidence|."""
        n = int(self.counts.sum())
        if n == 0:
            raise ValueError("calibration error of zero objects is undefined")
        used = self.counts > 0
        gap = np.abs(self.accuracy[used] - self.confidence[used])
        return float(np.sum(self.counts[used] * gap) / n)

    def to_dict(self) -> dict[str, Any]:
        nan_to_none = lambda a: [None if not np.isfinite(v) else float(v) for v in a]  # noqa: E731
        return {
            "edges": [float(v) for v in self.edges],
            "confidence": nan_to_none(self.confidence),
            "accuracy": nan_to_none(self.accuracy),
            "counts": [int(v) for v in self.counts],
        }


def reliability_curve(proba: np.ndarray, y: np.ndarray, n_bins: int = 15) -> ReliabilityCurve:
    """Top-label reliability curve of ``proba`` (N, C) against true class indices ``y`` (N,)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    y, proba = _check_proba(y, proba)
    confidence = proba.max(axis=1) if len(y) else np.zeros(0)
    correct = (proba.argmax(axis=1) == y).astype(np.float64) if len(y) else np.zeros(0)
    which = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins).astype(np.int64)
    conf_sum = np.bincount(which, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(which, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(counts > 0, conf_sum / counts, np.nan)
        mean_acc = np.where(counts > 0, acc_sum / counts, np.nan)
    return ReliabilityCurve(np.linspace(0.0, 1.0, n_bins + 1), mean_conf, mean_acc, counts)


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Top-label expected calibration error (ECE) with ``n_bins`` equal-width bins.

    ECE = sum_b (n_b / N) |acc_b - conf_b|, where bin b holds the objects whose top probability
    lies in ((b - 1) / n_bins, b / n_bins] (Guo et al. 2017; 15 bins is their default).
    ``proba`` (N, C), ``y`` (N,) true class indices. 0 = perfectly calibrated.
    """
    return reliability_curve(proba, y, n_bins).ece


def negative_log_likelihood(proba: np.ndarray, y: np.ndarray, eps: float = 1e-15) -> float:
    """Mean of ``-log p(true class)`` over objects (nats; every object weighs the same)."""
    y, proba = _check_proba(y, proba)
    if len(y) == 0:
        raise ValueError("log likelihood of zero objects is undefined")
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], eps, 1.0))))
