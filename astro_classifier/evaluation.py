"""Evaluate an ONNX model on labelled light curves, whole and truncated (no torch).

Truncated evaluation cuts each light curve ``d`` days after its first detection and
classifies what is left through the same classify() as serving: the tabular features are
recomputed on the cut curve, as they would be for a young transient in the stream.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from astro_classifier.data.lightcurve import LightCurveBatch
from astro_classifier.errors import InputError
from astro_classifier.features.preprocess import truncate_for_model
from astro_classifier.inference.classify import classify
from astro_classifier.inference.model import LoadedModel
from astro_classifier.metrics import ClassificationMetrics, classification_report


@dataclass
class Evaluation:
    whole: ClassificationMetrics
    by_truncation: dict[float, ClassificationMetrics] = field(default_factory=dict)
    excluded: Counter[str] = field(default_factory=Counter)  # reason -> objects not evaluated

    def to_dict(self) -> dict[str, Any]:
        return {
            "whole": self.whole.to_dict(),
            "by_truncation": {str(d): m.to_dict() for d, m in self.by_truncation.items()},
            "excluded": dict(self.excluded),
        }


def _scored(
    batch: LightCurveBatch, model: LoadedModel, excluded: Counter[str], tag: str
) -> ClassificationMetrics:
    labels = model.metadata.labels
    result = classify(batch, model)
    for reason, count in result.skipped.items():
        excluded[f"{tag}: {reason}"] += count
    y = np.searchsorted(labels, batch.label[result.rows])
    proba = np.stack([result.table.column(f"prob_{c}").to_numpy() for c in labels], axis=1)
    return classification_report(y, proba, labels)


def evaluate(
    batch: LightCurveBatch, model: LoadedModel, truncate_days: list[float] = ()
) -> Evaluation:
    """Metrics of ``model`` on labelled ``batch``; objects whose label the model lacks are excluded."""
    if batch.label is None:
        raise InputError("evaluation data", "no labels found; expected a labelled object table")
    labels = model.metadata.labels
    if sorted(labels) != list(labels):
        raise ValueError("model labels must be sorted")  # classification_report indexes by position
    known = np.isin(batch.label, labels)
    excluded: Counter[str] = Counter()
    if not known.all():
        for label, count in Counter(batch.label[~known].tolist()).items():
            reason = (
                f"label {label!r} is not a class of {model.metadata.name}"
                if label
                else "no label (placeholder or unknown class id)"
            )
            excluded[reason] = count
        batch = batch.select(np.flatnonzero(known))
    if len(batch) == 0:
        raise InputError("evaluation data", f"no object carries one of the model's labels {labels}")
    out = Evaluation(whole=_scored(batch, model, excluded, "whole"), excluded=excluded)
    for days in truncate_days:
        out.by_truncation[days] = _scored(
            truncate_for_model(batch, model.metadata.preprocessing, days),
            model,
            excluded,
            f"{days:g} days",
        )
    return out
