"""Predictions: what classify() returns, the one representation of its results.

A :class:`Predictions` holds, for the N objects classified, arrays in one order: ``object_id``
and ``alert_id``, the (N, K) calibrated ``probabilities`` over the model's ``labels``, the
(N, 3) ``broad_probabilities`` (sums by broad kind, in :data:`BROAD_CLASSES` order; None for a
model whose labels have no broad kind), ``ood_score``, ``abstain``, and ``rows``, the position
of each object in the input batch. Beside them: the objects classify() skipped
(``skipped``/``skipped_rows``, by reason), why objects abstain (``abstained``/
``abstained_rows``), and the run's counts and timings.

Every output maps from these arrays: :meth:`Predictions.to_arrow` gives the output table of
``astroclf classify`` (columns and types of :func:`output_schema`), and the Kafka worker's
encoder (:func:`astro_classifier.stream.codecs.classification_records`) reads the same arrays
into its Avro or JSON records. The top class (``class_index``, ``classes``, ``probability``)
and the broad class follow from the probabilities.

Output table columns, in order: ``object_id``, ``alert_id``, ``model``, ``model_version``,
``class``, ``probability``, ``prob_<label>`` per class, ``broad_class``, ``prob_transient``,
``prob_stochastic``, ``prob_periodic`` (null for a model without broad kinds), ``ood_score``,
``abstain``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pyarrow as pa

from astro_classifier.core.taxonomy import BROAD_CLASSES


def output_schema(labels: list[str] | tuple[str, ...]) -> pa.Schema:
    """Arrow schema of the output table of a model with these labels."""
    return pa.schema(
        [
            ("object_id", pa.string()),
            ("alert_id", pa.string()),
            ("model", pa.string()),
            ("model_version", pa.string()),
            ("class", pa.string()),
            ("probability", pa.float32()),
            *[(f"prob_{label}", pa.float32()) for label in labels],
            ("broad_class", pa.string()),
            *[(f"prob_{kind}", pa.float32()) for kind in BROAD_CLASSES],
            ("ood_score", pa.float32()),
            ("abstain", pa.bool_()),
        ]
    )


@dataclass
class Timings:
    """Seconds spent per stage of one classify() call."""

    features: float = 0.0
    inference: float = 0.0
    total: float = 0.0


@dataclass(frozen=True, eq=False)
class Predictions:
    """classify()'s results: one entry per classified object in every array (see the module
    docstring)."""

    model: str  # model name
    model_version: str
    labels: tuple[str, ...]  # the model's classes, in probability-column order
    object_id: np.ndarray  # (N,) object array of str
    alert_id: np.ndarray | None  # (N,) object array of str or None; None: no alert ids at all
    probabilities: np.ndarray  # (N, K) float32, calibrated; rows sum to 1
    broad_probabilities: np.ndarray | None  # (N, 3) float32 in BROAD_CLASSES order, or None
    ood_score: np.ndarray  # (N,) float32, higher: less like the training data
    abstain: np.ndarray  # (N,) bool
    rows: np.ndarray  # (N,) int64: position of each object in the input batch
    # reason -> objects skipped, and their positions in the input batch (ids can repeat)
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_rows: dict[str, np.ndarray] = field(default_factory=dict)
    # reason -> classified objects that abstain for it (an object may count under several),
    # and their positions in the input batch
    abstained: Counter[str] = field(default_factory=Counter)
    abstained_rows: dict[str, np.ndarray] = field(default_factory=dict)
    # image models only: reason -> classified objects fed without stamps
    without_images: Counter[str] = field(default_factory=Counter)
    # points the readers could not use, by reason (the input batch's ``dropped``)
    dropped_points: dict[str, int] = field(default_factory=dict)
    points_outside_bands: int = 0  # points in bands the model does not use (ignored)
    real_tokens: int = 0  # points fed to the model
    padded_tokens: int = 0  # positions of all session calls (real + padding)
    timings: Timings = field(default_factory=Timings)

    def __len__(self) -> int:
        return len(self.object_id)

    @property
    def padding_efficiency(self) -> float:
        return self.real_tokens / self.padded_tokens if self.padded_tokens else 1.0

    @cached_property
    def class_index(self) -> np.ndarray:
        """(N,) index into ``labels`` of each object's most probable class."""
        return self.probabilities.argmax(axis=1)

    @property
    def classes(self) -> np.ndarray:
        """(N,) str: the most probable class of each object."""
        return np.asarray(self.labels, dtype=object)[self.class_index]

    @property
    def probability(self) -> np.ndarray:
        """(N,) float32: the probability of that class."""
        return self.probabilities[np.arange(len(self)), self.class_index]

    @property
    def broad_class(self) -> np.ndarray:
        """(N,) object: the most probable broad kind, None for a model without broad kinds."""
        if self.broad_probabilities is None:
            return np.full(len(self), None, dtype=object)
        return np.asarray(BROAD_CLASSES, dtype=object)[self.broad_probabilities.argmax(axis=1)]

    def to_arrow(self) -> pa.Table:
        """The output table (:func:`output_schema`), one row per classified object."""
        n = len(self)
        schema = output_schema(self.labels)
        broad = self.broad_probabilities
        columns = {
            "object_id": self.object_id,
            "alert_id": self.alert_id if self.alert_id is not None else [None] * n,
            "model": [self.model] * n,
            "model_version": [self.model_version] * n,
            "class": self.classes,
            "probability": self.probability,
            **{f"prob_{label}": self.probabilities[:, j] for j, label in enumerate(self.labels)},
            "broad_class": self.broad_class,
            **{
                f"prob_{kind}": broad[:, k] if broad is not None else [None] * n
                for k, kind in enumerate(BROAD_CLASSES)
            },
            "ood_score": self.ood_score,
            "abstain": self.abstain,
        }
        return pa.table(
            [pa.array(columns[name], type=schema.field(name).type) for name in schema.names],
            schema=schema,
        )
