"""Evaluate an ONNX model on labelled light curves, whole and truncated (no torch).

Truncated evaluation cuts each light curve ``d`` days after its first detection and
classifies what is left through the same classify() as serving: the tabular features are
recomputed on the cut curve, as they would be for a young transient in the stream.

Besides the fine-class metrics (objects whose label is one of the model's classes) it reports
how far the model can be trusted (:class:`TrustMetrics`): the top-label calibration error
(ECE, 15 bins) and reliability curve, the broad-class accuracy (transient / stochastic /
periodic; every object whose true label has a known broad kind counts, also when the model
lacks its fine class), the share of objects the model abstains on, and the accuracy on the
objects it keeps.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import LightCurveBatch
from astro_classifier.core.taxonomy import broad_class_of
from astro_classifier.evaluation.metrics import (
    ClassificationMetrics,
    ReliabilityCurve,
    classification_report,
    reliability_curve,
)
from astro_classifier.features.preprocess import truncate_for_model
from astro_classifier.inference.classify import classify
from astro_classifier.inference.model import LoadedModel

ECE_BINS = 15


@dataclass
class TrustMetrics:
    """Calibration, broad kind and abstention of one evaluation (see the module docstring)."""

    ece: float  # top-label expected calibration error, ECE_BINS bins, fine-class objects
    reliability: ReliabilityCurve
    broad_accuracy: float | None  # None when no object has a known broad kind
    n_broad: int  # objects with a known broad kind (classified)
    abstain_rate: float  # among the fine-class objects
    n_kept: int  # fine-class objects not abstained on
    accuracy_kept: float | None  # fine accuracy on them (None when all abstained)
    broad_accuracy_kept: float | None  # broad accuracy on the broad objects kept
    abstained: Counter[str] = field(default_factory=Counter)  # reason -> fine-class objects

    def to_dict(self) -> dict[str, Any]:
        return {
            "ece": self.ece,
            "ece_bins": len(self.reliability.counts),
            "reliability": self.reliability.to_dict(),
            "broad_accuracy": self.broad_accuracy,
            "n_broad": self.n_broad,
            "abstain_rate": self.abstain_rate,
            "n_kept": self.n_kept,
            "accuracy_kept": self.accuracy_kept,
            "broad_accuracy_kept": self.broad_accuracy_kept,
            "abstained": dict(self.abstained),
        }


@dataclass
class Evaluation:
    whole: ClassificationMetrics
    by_truncation: dict[float, ClassificationMetrics] = field(default_factory=dict)
    excluded: Counter[str] = field(default_factory=Counter)  # reason -> objects not evaluated
    trust: TrustMetrics | None = None  # of the whole light curves
    trust_by_truncation: dict[float, TrustMetrics] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def merged(m: ClassificationMetrics, t: TrustMetrics | None) -> dict[str, Any]:
            return {**m.to_dict(), **(t.to_dict() if t is not None else {})}

        return {
            "whole": merged(self.whole, self.trust),
            "by_truncation": {
                str(d): merged(m, self.trust_by_truncation.get(d))
                for d, m in self.by_truncation.items()
            },
            "excluded": dict(self.excluded),
        }


def _mean_or_none(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def _scored(
    batch: LightCurveBatch,
    fine: np.ndarray,
    model: LoadedModel,
    excluded: Counter[str],
    tag: str,
) -> tuple[ClassificationMetrics, TrustMetrics]:
    """Classify ``batch``; fine metrics on the objects where ``fine`` is True, broad-class
    accuracy on every object whose label has a known broad kind."""
    labels = model.metadata.labels
    result = classify(batch, model)
    for reason, positions in result.skipped_rows.items():
        n_fine = int(fine[positions].sum())
        if n_fine:
            excluded[f"{tag}: {reason}"] += n_fine
    rows = result.rows
    proba = result.probabilities
    abstain = result.abstain
    is_fine = fine[rows]
    if not is_fine.any():
        raise InputError("evaluation data", f"{tag}: no object of the model's classes classified")
    y = np.searchsorted(labels, batch.label[rows[is_fine]])
    p = proba[is_fine]
    metrics = classification_report(y, p, labels)
    curve = reliability_curve(p, y, ECE_BINS)
    correct = p.argmax(axis=1) == y
    kept = ~abstain[is_fine]

    truth_broad = np.array([broad_class_of(label) or "" for label in batch.label[rows]])
    has_broad = truth_broad != ""
    predicted_broad = result.broad_class.astype(str)
    broad_ok = predicted_broad[has_broad] == truth_broad[has_broad]

    abstained: Counter[str] = Counter()  # among the fine-class objects
    for reason, positions in result.abstained_rows.items():
        n_fine = int(fine[positions].sum())
        if n_fine:
            abstained[reason] = n_fine
    trust = TrustMetrics(
        ece=curve.ece,
        reliability=curve,
        broad_accuracy=_mean_or_none(broad_ok),
        n_broad=int(has_broad.sum()),
        abstain_rate=float(1.0 - kept.mean()),
        n_kept=int(kept.sum()),
        accuracy_kept=_mean_or_none(correct[kept]),
        broad_accuracy_kept=_mean_or_none(broad_ok[~abstain[has_broad]]),
        abstained=abstained,
    )
    return metrics, trust


def evaluate(
    batch: LightCurveBatch, model: LoadedModel, truncate_days: list[float] = ()
) -> Evaluation:
    """Metrics of ``model`` on labelled ``batch``. Fine-class metrics leave out objects whose
    label the model lacks (counted in ``excluded``); the broad-class accuracy keeps them when
    their broad kind is known."""
    if batch.label is None:
        raise InputError("evaluation data", "no labels found; expected a labelled object table")
    labels = model.metadata.labels
    if sorted(labels) != list(labels):
        raise ValueError("model labels must be sorted")  # classification_report indexes by position
    known = np.isin(batch.label, labels)
    broad_known = np.array([broad_class_of(label) is not None for label in batch.label], bool)
    excluded: Counter[str] = Counter()
    if not known.all():
        for label, count in Counter(batch.label[~known].tolist()).items():
            reason = (
                f"label {label!r} is not a class of {model.metadata.name}"
                if label
                else "no label (placeholder or unknown class id)"
            )
            excluded[reason] = count
    if not known.any():
        raise InputError("evaluation data", f"no object carries one of the model's labels {labels}")
    keep = np.flatnonzero(known | broad_known)
    batch = batch.select(keep)
    fine = known[keep]
    whole, trust = _scored(batch, fine, model, excluded, "whole")
    out = Evaluation(whole=whole, excluded=excluded, trust=trust)
    for days in truncate_days:
        cut = truncate_for_model(batch, model.metadata.preprocessing, days)
        out.by_truncation[days], out.trust_by_truncation[days] = _scored(
            cut, fine, model, excluded, f"{days:g} days"
        )
    return out
