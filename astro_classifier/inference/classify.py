"""classify(): light curves -> classifications, the same function for batch files and stream.

Steps: keep the model's bands; skip (and count) objects with no usable point; compute the
tabular features once for all objects; group objects into length buckets; one session call
per bucket chunk; gather the results.

It returns a :class:`Predictions` (:mod:`astro_classifier.inference.predictions`): arrays of
the classified objects from which the output table (the README's output contract) and the
stream's messages are both written. Probabilities are calibrated; the broad probabilities are
sums of the fine ones by the model's ``broad_classes`` (none for a model whose labels have no
broad kind, e.g. a real/bogus model); ``ood_score`` is the model's
(:mod:`astro_classifier.inference.model`). ``abstain`` is True when the ood score is above the
model's threshold, when the object has fewer than ``ood.min_points`` points in the model's
bands, or when it is a known solar-system object (metadata ``solar_system`` == 1). Abstaining
objects keep their row and probabilities: a broker decides what to do with them;
``Predictions.abstained`` counts them per reason.

Models with an image tower get the stamps the batch carries (``batch.cutouts``, decoded by the
caller only for such models); objects whose stamps are missing or unusable are classified
without the image tower (``has_image`` False) and counted in ``Predictions.without_images``
by reason.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np

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
from astro_classifier.inference.predictions import (  # noqa: F401  (output_schema: re-exported)
    Predictions,
    Timings,
    output_schema,
)

SKIP_NO_USABLE_POINT = "no usable point (every point dropped, or none given)"
SKIP_NO_POINTS = "no points in the model's bands"
SKIP_NON_FINITE = "NaN or infinite time, flux or flux error"
# Reasons to abstain (an object can have several; each is counted).
ABSTAIN_OOD = "OOD score above the model's threshold"
ABSTAIN_FEW_POINTS = "too few points in the model's bands"
ABSTAIN_SOLAR_SYSTEM = "known solar-system object"


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
    prepared: bool = False,
) -> Iterator[tuple[np.ndarray, ModelInputs]]:
    """(object positions, inputs) per session call: objects grouped by length bucket, each
    group cut into calls of at most ``batch_size`` objects padded to the bucket's length.
    ``prepared``: ``batch`` is already in the model's view (:func:`keep_model_bands`)."""
    layout = InputLayout(batch, spec, prepared)  # once per batch; each call: gather + scatter
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
) -> Predictions:
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
    timings = Timings()
    dropped_points = dict(batch.dropped)
    had_points = batch.lengths > 0
    batch, points_outside_bands = keep_model_bands(batch, spec)
    finite = np.isfinite(batch.time) & np.isfinite(batch.flux) & np.isfinite(batch.flux_err)
    object_ok = np.bincount(batch.point_object_index()[~finite], minlength=len(batch)) == 0
    skipped: Counter[str] = Counter()
    skipped_rows: dict[str, np.ndarray] = {}
    for reason, bad in (
        (SKIP_NON_FINITE, ~object_ok),
        (SKIP_NO_USABLE_POINT, object_ok & ~had_points),
        (SKIP_NO_POINTS, object_ok & had_points & (batch.lengths == 0)),
    ):
        if bad.any():
            skipped[reason] = int(bad.sum())
            skipped_rows[reason] = np.flatnonzero(bad)
    usable = object_ok & (batch.lengths > 0)
    rows = np.flatnonzero(usable)
    if not usable.all():
        batch = batch.select(rows)
    n = len(batch)
    proba = np.empty((n, len(meta.labels)), np.float32)
    ood_score = np.empty(n, np.float64)
    without_images: Counter[str] = Counter()
    real_tokens = padded_tokens = 0
    if n:
        t0 = time.perf_counter()
        tabular = tabular_features(batch, spec, n_jobs=n_jobs)
        timings.features = time.perf_counter() - t0

        cutouts = None
        if model.needs_images:
            cutouts = _model_cutouts(batch, int(meta.image_size or 63), model)
            for failure in cutouts.failure[~cutouts.ok]:
                without_images[str(failure).split(":")[0] or "no stamps"] += 1

        done = 0
        calls = bucketed_inputs(
            batch, spec, tabular, meta.length_buckets, batch_size, prepared=True
        )
        for index, inputs in calls:
            t0 = time.perf_counter()
            if cutouts is None:
                prediction = model.predict(inputs)
            else:
                prediction = model.predict(
                    inputs, presence={"image": cutouts.ok[index]}, image=cutouts.images[index]
                )
            proba[index] = prediction.probabilities
            ood_score[index] = model.ood_scores(prediction)
            timings.inference += time.perf_counter() - t0
            real_tokens += int(inputs.mask.sum())
            padded_tokens += inputs.mask.size
            done += len(index)
            if progress is not None:
                progress(done)

    ood_score = ood_score.astype(np.float32)
    solar = batch.metadata.get(SOLAR_SYSTEM)
    reasons = {
        ABSTAIN_OOD: ood_score > ood.threshold,
        ABSTAIN_FEW_POINTS: batch.lengths < ood.min_points,
        ABSTAIN_SOLAR_SYSTEM: (
            np.zeros(n, bool) if solar is None else np.asarray(solar, np.float64) == 1.0
        ),
    }
    abstain = np.zeros(n, bool)
    abstained: Counter[str] = Counter()
    abstained_rows: dict[str, np.ndarray] = {}
    for reason, hit in reasons.items():
        abstain |= hit
        if hit.any():
            abstained[reason] = int(hit.sum())
            abstained_rows[reason] = rows[hit]
    timings.total = time.perf_counter() - started
    return Predictions(
        model=meta.name,
        model_version=meta.version,
        labels=tuple(meta.labels),
        object_id=batch.object_id,
        alert_id=batch.alert_id,
        probabilities=proba,
        broad_probabilities=(
            broad_probabilities(proba, meta.labels, broad_map) if broad_map else None
        ),
        ood_score=ood_score,
        abstain=abstain,
        rows=rows,
        skipped=skipped,
        skipped_rows=skipped_rows,
        abstained=abstained,
        abstained_rows=abstained_rows,
        without_images=without_images,
        dropped_points=dropped_points,
        points_outside_bands=points_outside_bands,
        real_tokens=real_tokens,
        padded_tokens=padded_tokens,
        timings=timings,
    )
