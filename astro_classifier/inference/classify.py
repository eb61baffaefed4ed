"""classify(): light curves -> classifications, the same function for batch files and stream.

Steps: keep the model's bands; skip (and count) objects with no usable point; compute the
tabular features once for all objects; group objects into length buckets; one session call
per bucket chunk; assemble the output table (the README's output contract).

Output columns, in order: ``object_id``, ``alert_id``, ``model``, ``model_version``, ``class``,
``probability``, ``prob_<label>`` per class (calibrated), ``broad_class``, ``prob_transient``,
``prob_stochastic``, ``prob_periodic`` (sums of the fine probabilities by the model's
``broad_classes``), ``ood_score`` (see :mod:`astro_classifier.inference.model`) and
``abstain``: True when the ood score is above the model's threshold, when the object has fewer
than ``ood.min_points`` points in the model's bands, or when it is a known solar-system object
(metadata ``solar_system`` == 1). Abstaining objects keep their row and probabilities: a broker
decides what to do with them; ``ClassifyResult.abstained`` counts them per reason. A model whose
labels have no broad kind (``broad_classes`` empty, e.g. a real/bogus model) leaves the four
broad columns null.

Models with an image tower get the stamps the batch carries (``batch.cutouts``, decoded by the
caller only for such models); objects whose stamps are missing or unusable are classified
without the image tower (``has_image`` False) and counted in ``ClassifyResult.without_images``
by reason.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from astro_classifier.core.cutouts import CutoutBatch
from astro_classifier.core.errors import ModelError
from astro_classifier.core.lightcurve import SOLAR_SYSTEM, LightCurveBatch
from astro_classifier.core.taxonomy import BROAD_CLASSES
from astro_classifier.features.preprocess import (
    InputLayout,
    ModelInputs,
    PreprocessingSpec,
    keep_model_bands,
    tabular_features,
)
from astro_classifier.inference.model import LoadedModel

SKIP_NO_USABLE_POINT = "no usable point (every point dropped, or none given)"
SKIP_NO_POINTS = "no points in the model's bands"
SKIP_NON_FINITE = "NaN or infinite time, flux or flux error"
# Reasons to abstain (an object can have several; each is counted).
ABSTAIN_OOD = "OOD score above the model's threshold"
ABSTAIN_FEW_POINTS = "too few points in the model's bands"
ABSTAIN_SOLAR_SYSTEM = "known solar-system object"


@dataclass
class Timings:
    """Seconds spent per stage of one classify() call."""

    features: float = 0.0
    inference: float = 0.0
    total: float = 0.0


@dataclass
class ClassifyResult:
    table: pa.Table  # one row per classified object (output contract)
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> objects skipped
    # reason -> row positions (in the input batch) of the skipped objects; ids can repeat
    skipped_rows: dict[str, np.ndarray] = field(default_factory=dict)
    # row position in the input batch of each row of ``table``
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # points the readers could not use, by reason (the input batch's ``dropped``)
    dropped_points: dict[str, int] = field(default_factory=dict)
    points_outside_bands: int = 0  # points in bands the model does not use (ignored)
    real_tokens: int = 0  # points fed to the model
    padded_tokens: int = 0  # positions of all session calls (real + padding)
    timings: Timings = field(default_factory=Timings)
    # reason -> classified objects that abstain for it (an object may count under several)
    abstained: Counter[str] = field(default_factory=Counter)
    # reason -> row positions (in the input batch) of those objects
    abstained_rows: dict[str, np.ndarray] = field(default_factory=dict)
    # image models only: reason -> classified objects fed without stamps
    without_images: Counter[str] = field(default_factory=Counter)

    @property
    def padding_efficiency(self) -> float:
        return self.real_tokens / self.padded_tokens if self.padded_tokens else 1.0


def output_schema(labels: list[str]) -> pa.Schema:
    """Arrow schema of classify()'s output for a model with these labels."""
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


def broad_probabilities(
    proba: np.ndarray, labels: list[str], mapping: dict[str, str]
) -> np.ndarray:
    """(N, 3) float32 sums of the fine probabilities per broad kind, in BROAD_CLASSES order."""
    member = np.zeros((len(labels), len(BROAD_CLASSES)), np.float64)
    for j, label in enumerate(labels):
        member[j, BROAD_CLASSES.index(mapping[label])] = 1.0
    return (np.asarray(proba, np.float64) @ member).astype(np.float32)


def bucket_for(lengths: np.ndarray, buckets: list[int]) -> np.ndarray:
    """Index of the smallest bucket holding each length (lengths already cut to the maximum)."""
    return np.searchsorted(np.asarray(buckets), lengths, side="left")


def bucketed_inputs(
    batch: LightCurveBatch,
    spec: PreprocessingSpec,
    tabular: np.ndarray,
    buckets: list[int],
    batch_size: int,
) -> Iterator[tuple[np.ndarray, ModelInputs]]:
    """(object positions, inputs) per session call: objects grouped by length bucket, each
    group cut into calls of at most ``batch_size`` objects padded to the bucket's length."""
    layout = InputLayout(batch, spec)  # once per batch; each call is a gather + scatter
    which = bucket_for(layout.lengths, buckets)
    for b in np.unique(which):
        members = np.flatnonzero(which == b)
        for start in range(0, len(members), batch_size):
            index = members[start : start + batch_size]
            yield index, layout.inputs(index, tabular[index], width=buckets[b])


def _model_cutouts(batch: LightCurveBatch, size: int, model: LoadedModel):
    """The batch's stamps (rows marked missing where it carries none) at the model's size."""
    cutouts = batch.cutouts if batch.cutouts is not None else CutoutBatch.missing(len(batch), size)
    if cutouts.images.shape[-1] != size:
        raise ModelError(
            f"{model.path}: the model takes {size}x{size} stamps; the batch carries "
            f"{cutouts.images.shape[-1]}x{cutouts.images.shape[-1]}"
        )
    return cutouts


def classify(
    batch: LightCurveBatch,
    model: LoadedModel,
    batch_size: int = 512,
    n_jobs: int = -1,
    progress: Callable[[int], None] | None = None,
) -> ClassifyResult:
    """Classify every object of ``batch`` that has at least one point in the model's bands.

    ``progress`` is called with the number of objects finished after each session call.
    ``n_jobs`` threads compute the light-curve features (-1: one per core).
    """
    started = time.perf_counter()
    meta = model.metadata
    spec = meta.preprocessing
    try:
        broad_map = meta.broad_mapping()
    except ValueError as exc:
        raise ModelError(f"{model.path}: {exc}") from exc
    ood = model.ood_spec()
    result = ClassifyResult(
        table=output_schema(meta.labels).empty_table(), dropped_points=dict(batch.dropped)
    )
    had_points = batch.lengths > 0
    batch, result.points_outside_bands = keep_model_bands(batch, spec)
    finite = np.isfinite(batch.time) & np.isfinite(batch.flux) & np.isfinite(batch.flux_err)
    object_ok = np.bincount(batch.point_object_index()[~finite], minlength=len(batch)) == 0
    for reason, bad in (
        (SKIP_NON_FINITE, ~object_ok),
        (SKIP_NO_USABLE_POINT, object_ok & ~had_points),
        (SKIP_NO_POINTS, object_ok & had_points & (batch.lengths == 0)),
    ):
        if bad.any():
            result.skipped[reason] = int(bad.sum())
            result.skipped_rows[reason] = np.flatnonzero(bad)
    usable = object_ok & (batch.lengths > 0)
    result.rows = np.flatnonzero(usable)
    if not usable.all():
        batch = batch.select(result.rows)
    if len(batch) == 0:
        result.timings.total = time.perf_counter() - started
        return result

    t0 = time.perf_counter()
    tabular = tabular_features(batch, spec, n_jobs=n_jobs)
    result.timings.features = time.perf_counter() - t0

    cutouts = None
    if model.needs_images:
        cutouts = _model_cutouts(batch, int(meta.image_size or 63), model)
        for failure in cutouts.failure[~cutouts.ok]:
            result.without_images[str(failure).split(":")[0] or "no stamps"] += 1

    proba = np.empty((len(batch), len(meta.labels)), np.float32)
    ood_score = np.empty(len(batch), np.float64)
    done = 0
    for index, inputs in bucketed_inputs(batch, spec, tabular, meta.length_buckets, batch_size):
        t0 = time.perf_counter()
        if cutouts is None:
            prediction = model.predict(inputs)
        else:
            prediction = model.predict(
                inputs, presence={"image": cutouts.ok[index]}, image=cutouts.images[index]
            )
        proba[index] = prediction.probabilities
        ood_score[index] = model.ood_scores(prediction)
        result.timings.inference += time.perf_counter() - t0
        result.real_tokens += int(inputs.mask.sum())
        result.padded_tokens += inputs.mask.size
        done += len(index)
        if progress is not None:
            progress(done)

    top = proba.argmax(axis=1)
    labels = np.asarray(meta.labels)
    broad = (
        broad_probabilities(proba, meta.labels, broad_map)
        if broad_map
        else np.full((len(batch), len(BROAD_CLASSES)), np.nan, np.float32)
    )
    ood_score = ood_score.astype(np.float32)
    solar = batch.metadata.get(SOLAR_SYSTEM)
    reasons = {
        ABSTAIN_OOD: ood_score > ood.threshold,
        ABSTAIN_FEW_POINTS: batch.lengths < ood.min_points,
        ABSTAIN_SOLAR_SYSTEM: (
            np.zeros(len(batch), bool) if solar is None else np.asarray(solar, np.float64) == 1.0
        ),
    }
    abstain = np.zeros(len(batch), bool)
    for reason, hit in reasons.items():
        abstain |= hit
        if hit.any():
            result.abstained[reason] = int(hit.sum())
            result.abstained_rows[reason] = result.rows[hit]
    columns = {
        "object_id": batch.object_id,
        "alert_id": batch.alert_id if batch.alert_id is not None else [None] * len(batch),
        "model": np.full(len(batch), meta.name),
        "model_version": np.full(len(batch), meta.version),
        "class": labels[top],
        "probability": proba[np.arange(len(batch)), top],
        **{f"prob_{label}": proba[:, j] for j, label in enumerate(meta.labels)},
        "broad_class": (
            np.asarray(BROAD_CLASSES, dtype=object)[broad.argmax(axis=1)]
            if broad_map
            else np.full(len(batch), None, dtype=object)
        ),
        **{
            f"prob_{kind}": broad[:, k] if broad_map else [None] * len(batch)
            for k, kind in enumerate(BROAD_CLASSES)
        },
        "ood_score": ood_score,
        "abstain": abstain,
    }
    schema = output_schema(meta.labels)
    result.table = pa.table(
        {name: pa.array(columns[name], type=schema.field(name).type) for name in schema.names},
        schema=schema,
    )
    result.timings.total = time.perf_counter() - started
    return result
