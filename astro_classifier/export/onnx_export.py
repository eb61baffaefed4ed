"""Run directory -> one ONNX model bundle, checked and compared with torch before it is kept.

:func:`export_run` serves every model family. Steps: rebuild the model from the run record
and weights (:func:`astro_classifier.training.record.load_run`); for a classifier, compute the
family's embedding and raw logits (:class:`~astro_classifier.export.graph.ExportGraph`) on
every validation object of the run (whole light curves, fed as alerts arrive: stamps where the
model reads them, no spectra) and fit

- the temperature T of ``probabilities = softmax(logits / T)`` on validation (minimum mean
  NLL, see :mod:`astro_classifier.export.calibration`), stored in the graph and in
  ``calibration``;
- for a family with ``gaussian_ood`` (ATAT), the out-of-distribution score :data:`OOD_SCORE`
  (see :mod:`astro_classifier.export.gaussian_ood`) on the embeddings of up to
  :data:`MAX_GAUSSIAN_OBJECTS` objects of the training split as training saw them (whole, or
  cut at a random time with the run's truncation probability: :func:`training_calls`): class
  Gaussians with a tied, Ledoit-Wolf-shrunk covariance, the distance to the nearest one and the
  energy each standardised on validation and summed; its tables are constants of the graph
  (:class:`~astro_classifier.export.graph.GaussianOOD`), which computes the score as its
  ``ood`` output; the abstention threshold is the 0.95 quantile of the score on the validation
  objects, stored in ``ood`` (an :class:`OODSpec` with ``min_points`` = 3 and ``fitted_on``);
  other families abstain on the energy score, thresholded the same way;

build the metadata (:func:`build_metadata`: :class:`ModelMetadata` with the graph's inputs and
outputs, ``broad_classes`` from :func:`astro_classifier.core.taxonomy.broad_mapping_or_none`
and the family's fields), and write the graph through the one writer
(:func:`astro_classifier.export.writer.write_onnx`: the family's export form traced with named
inputs and dynamic batch and length axes, ``onnx.checker``, the parity check of
:mod:`astro_classifier.export.parity` on real validation light curves of the run through the
serving buckets, then an atomic move; nothing is written on a mismatch). ``fp16`` (families
with ``fp16``) converts weights and activations to float16 with float32 inputs/outputs (the
embedding's readers and the OOD score stay float32) and checks against looser bounds. A
pretraining without classifier head gives an embedding-only file (no labels, no
``probabilities``): `astroclf embed` and `astroclf similar` use it, `classify` refuses it.

How the OOD score was chosen: by the seven leave-one-source-out models of atat-ztf 0.3.0, each
on the source it never saw (``python -m benchmarks.ood_under_shift --loso runs/loso``; 2,824
objects, 22 % answered right), among a few standard variants, with no further tuning: the
Mahalanobis distance (Lee et al. 2018), the relative Mahalanobis distance (Ren et al. 2021),
and each plus the energy, on the head's input (the ``embedding`` output) and on its hidden
layer. With Gaussians of whole training light curves, the distance on the head's input plus
the energy had the best AUROC for wrong-vs-right answers pooled over the sources (0.70, the
distance alone 0.70, the relative distance 0.49-0.64, the hidden layer 0.63-0.65; the energy
alone 0.69) and a better mean per source than the distance alone (0.67 vs 0.64). Fitting on
training light curves cut as training cuts them instead keeps short real alerts from
abstaining for their length alone (3-point ZTF alerts: 16 % abstain, as with the energy,
instead of 90 %) and moved no source's AUROC by more than 0.04. As exported: pooled AUROC 0.69
(the energy 0.69); it abstains on 52 % of the held-out objects (the energy on 6 %), most on the
sources the model gets wrong (TDSS quasars 79 % and manyTDE 75 %, all wrong; EROS-1, 81 %
wrong, over 99 %), and the objects it answers are right for 31 % (the energy's: 23 %). No
variant reached the 0.80 target.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import torch

from astro_classifier import __version__
from astro_classifier.core.errors import ModelError
from astro_classifier.core.taxonomy import broad_mapping_or_none
from astro_classifier.evaluation.metrics import expected_calibration_error, negative_log_likelihood
from astro_classifier.export.calibration import fit_temperature, ood_threshold, softmax
from astro_classifier.export.gaussian_ood import (
    GaussianTables,
    fit_gaussians,
    gaussian_score,
    with_standardisation,
)
from astro_classifier.export.graph import ExportGraph, GaussianOOD, graph_form, to_float16
from astro_classifier.export.parity import (
    FP16_MIN_TOP_AGREEMENT,
    ParityError,
    ParityReport,
    RealData,
    check_parity,
    parity_feeds,
    parity_tolerances,
)
from astro_classifier.export.writer import write_onnx
from astro_classifier.families.registry import family_of
from astro_classifier.features.preprocess import ModelInputs, PreprocessingSpec
from astro_classifier.inference.classify import bucketed_inputs
from astro_classifier.inference.model import (
    DEFAULT_MIN_POINTS,
    OOD_ENERGY,
    OOD_MAHALANOBIS_ENERGY,
    CalibrationSpec,
    ModelMetadata,
    OODSpec,
    default_extra_inputs,
    default_length_buckets,
    energy_score,
)
from astro_classifier.training.dataset import TrainingDataset
from astro_classifier.training.extras import (
    ExtraInputs,
    alert_extras,
    data_input_names,
    dataset_extras,
)
from astro_classifier.training.record import RunRecord, load_run

OOD_QUANTILE = 0.95
OOD_SCORE = OOD_MAHALANOBIS_ENERGY  # what export_run fits (why: the module docstring)
MAX_GAUSSIAN_OBJECTS = 20_000  # training objects the Gaussians are fitted on, at most
GAUSSIAN_SEED = 0  # which ones, when the training split has more
CALIBRATION_BATCH = 256  # objects per torch call when computing validation logits

Calls = list[tuple[np.ndarray, ModelInputs]]  # (positions, padded inputs) per serving call


def split_calls(
    ds: TrainingDataset,
    index: np.ndarray,
    labels: list[str],
    spec: PreprocessingSpec,
    batch_size: int,
    level: np.ndarray | None = None,
) -> tuple[Calls, np.ndarray]:
    """Objects ``index`` of the run's dataset, whole light curves or cut at truncation
    ``level`` (per object), padded to their serving buckets: (positions, inputs) per call,
    and the class index of every object."""
    if level is None:
        level = np.full(len(index), len(ds.truncation_days) - 1)
    sub, feats = ds.truncated(index, level)
    buckets = default_length_buckets(spec.max_length)
    calls = list(bucketed_inputs(sub, spec, feats, buckets, batch_size=batch_size or len(sub)))
    return calls, np.searchsorted(labels, sub.label)


def validation_calls(
    run_dir: Path,
    record: RunRecord,
    spec: PreprocessingSpec,
    limit: int | None = None,
    batch_size: int | None = None,
) -> tuple[Calls, np.ndarray]:
    """Real validation light curves of the run (whole), padded to their serving buckets:
    (positions, inputs) per call, and the true class index of every validation object."""
    ds = TrainingDataset.load(run_dir / "dataset.h5")
    index = np.asarray(record.split.validation, np.int64)[:limit]
    if len(index) == 0:
        raise ValueError(f"{run_dir}: the run has no validation objects to check and calibrate on")
    return split_calls(ds, index, record.labels, spec, batch_size or len(index))


def validation_inputs(
    run_dir: Path, record: RunRecord, spec: PreprocessingSpec, limit: int
) -> list[ModelInputs]:
    """Real validation light curves of the run, padded to their serving buckets."""
    return [x for _, x in validation_calls(run_dir, record, spec, limit)[0]]


def training_index(ds: TrainingDataset, record: RunRecord) -> np.ndarray:
    """Rows of the run's training split: every row whose split group (an object and its
    augmented or rendered copies) has no validation or hold-out row. (With a
    ``label_fraction`` below 1, rows training left unlabelled are included.)"""
    groups = ds.batch.metadata.get("split_group", np.arange(len(ds), dtype=np.float64))
    held = np.concatenate(
        [np.asarray(rows, np.int64) for rows in (record.split.validation, record.split.holdout)]
    )
    return np.flatnonzero(~np.isin(groups, groups[held]))


def training_sample(
    ds: TrainingDataset, record: RunRecord, limit: int = MAX_GAUSSIAN_OBJECTS
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, truncation level per row): with :data:`GAUSSIAN_SEED`, up to ``limit`` rows
    of the training split, each light curve whole or, with the run's truncation
    probability, cut at a level drawn uniformly from the others, as training draws it."""
    index = training_index(ds, record)
    if len(index) == 0:
        raise ValueError("the run has no training objects to fit the OOD score on")
    rng = np.random.default_rng(GAUSSIAN_SEED)
    if len(index) > limit:
        index = np.sort(rng.choice(index, size=limit, replace=False))
    n_levels = len(ds.truncation_days)
    cut = rng.random(len(index)) < (record.truncation_probability if n_levels > 1 else 0.0)
    level = np.where(cut, rng.integers(0, max(n_levels - 1, 1), len(index)), n_levels - 1)
    return index, level


def training_calls(
    run_dir: Path,
    record: RunRecord,
    spec: PreprocessingSpec,
    limit: int = MAX_GAUSSIAN_OBJECTS,
    batch_size: int = CALIBRATION_BATCH,
) -> tuple[Calls, np.ndarray]:
    """The objects of :func:`training_sample` as training saw them, in serving buckets,
    and their class indices."""
    ds = TrainingDataset.load(run_dir / "dataset.h5")
    index, level = training_sample(ds, record, limit)
    return split_calls(ds, index, record.labels, spec, batch_size, level)


def call_data(calls: Calls, rows: np.ndarray, extras: ExtraInputs) -> RealData:
    """Per call, the extra data of its objects (``rows``: dataset rows of the calls'
    positions); padding rows have none."""
    out: RealData = []
    for positions, x in calls:
        per_call = {}
        for name, (values, has) in extras.items():
            given = np.zeros((len(x), *values.shape[1:]), values.dtype)
            ok = np.zeros(len(x), bool)
            given[: len(positions)] = values[rows[positions]]
            ok[: len(positions)] = has[rows[positions]]
            per_call[name] = (given, ok)
        out.append(per_call)
    return out


def alert_feeds(
    meta: ModelMetadata, calls: Calls, data: RealData
) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """(positions, feeds) per call: the inputs with the extra data ``data`` present where
    objects have it, every other extra input absent."""
    out = []
    for (positions, x), given in zip(calls, data, strict=True):
        presence = {name: has for name, (_, has) in given.items()}
        arrays = {name: values for name, (values, _) in given.items()}
        out.append((positions, x.as_dict() | default_extra_inputs(meta, x, presence, arrays)))
    return out


def split_outputs(
    graph: ExportGraph, calls: list[tuple[np.ndarray, dict[str, np.ndarray]]], n_objects: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """(embeddings (N, D), raw logits (N, C) or None), float64, of every object of
    ``calls`` ((positions, feeds) per call; torch, the training form)."""
    embeddings: np.ndarray | None = None
    logits: np.ndarray | None = None
    with torch.no_grad():
        for index, feeds in calls:
            out = graph.outputs(**{k: torch.from_numpy(v) for k, v in feeds.items()})
            if embeddings is None:
                embeddings = np.empty((n_objects, out.embedding.shape[1]), np.float64)
                if out.logits is not None:
                    logits = np.empty((n_objects, out.logits.shape[1]), np.float64)
            embeddings[index] = out.embedding.numpy()
            if logits is not None:
                logits[index] = out.logits.numpy()
    assert embeddings is not None
    return embeddings, logits


def calibrate(logits: np.ndarray, y: np.ndarray, fitted_on: str) -> tuple[CalibrationSpec, OODSpec]:
    """Temperature scaling and the energy score's abstention threshold from validation
    logits and labels."""
    temperature = fit_temperature(logits, y)
    before, after = softmax(logits), softmax(logits, temperature)
    calibration = CalibrationSpec(
        temperature=temperature,
        ece_before=expected_calibration_error(before, y),
        ece_after=expected_calibration_error(after, y),
        nll_before=negative_log_likelihood(before, y),
        nll_after=negative_log_likelihood(after, y),
        n_objects=len(y),
        fitted_on=fitted_on,
    )
    ood = OODSpec(
        score=OOD_ENERGY,
        threshold=ood_threshold(energy_score(logits), OOD_QUANTILE),
        quantile=OOD_QUANTILE,
        min_points=DEFAULT_MIN_POINTS,
    )
    return calibration, ood


def fit_ood(
    train_embeddings: np.ndarray,
    train_y: np.ndarray,
    n_classes: int,
    val_embeddings: np.ndarray,
    val_logits: np.ndarray,
    fitted_on: str,
    kind: str = OOD_SCORE,
) -> tuple[GaussianTables, OODSpec]:
    """Gaussians on the training embeddings and the abstention threshold of ``kind``: its
    :data:`OOD_QUANTILE` on the validation objects."""
    tables = fit_gaussians(train_embeddings, train_y, n_classes)
    tables = with_standardisation(tables, val_embeddings, val_logits)
    scores = gaussian_score(tables, val_embeddings, kind, logits=val_logits)
    spec = OODSpec(
        score=kind,
        threshold=ood_threshold(scores, OOD_QUANTILE),
        quantile=OOD_QUANTILE,
        min_points=DEFAULT_MIN_POINTS,
        fitted_on=fitted_on,
    )
    return tables, spec


def build_metadata(
    record: RunRecord,
    graph: ExportGraph,
    fp16: bool = False,
    calibration: CalibrationSpec | None = None,
    ood: OODSpec | None = None,
) -> ModelMetadata:
    """The metadata of the run's exported ``graph``: what serving needs, nothing else."""
    spec, exp = record.spec, record.export
    classifier = graph.classifier
    return ModelMetadata(
        name=exp.name,
        version=exp.version,
        description=exp.description,
        architecture=record.model_name,
        architecture_config=record.architecture,
        labels=record.labels if classifier else [],
        bands=list(spec.bands),
        inputs=graph.input_specs(),
        outputs=graph.output_specs(),
        feature_names=spec.feature_names,
        preprocessing=spec,
        length_buckets=default_length_buckets(spec.max_length),
        training_data=record.dataset.model_dump(),
        # a pretraining's validation holds a contrastive loss, not classification metrics
        metrics=record.metrics if classifier else {"pretraining": record.metrics},
        precision="fp16" if fp16 else "fp32",
        package_version=__version__,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        broad_classes=broad_mapping_or_none(record.labels) if classifier else {},
        calibration=calibration,
        ood=ood,
        **graph.family.metadata_extras(graph.model),
    )


def export_run(
    run_dir: Path,
    out: Path,
    fp16: bool = False,
    parity_objects: int = 512,
    form: bool | str = True,
) -> ParityReport:
    """Export the run in ``run_dir`` to ``out`` (see the module docstring); raise
    :class:`ParityError` (writing nothing) on a mismatch. ``form``: the float32 export form
    traced (True: the family's default; or one it names, e.g. ATAT's ``DENSE_FORM`` for the
    CUDA companion), recorded as the metadata's ``graph_form``."""
    run_dir = Path(run_dir)
    model, record = load_run(run_dir)
    family = family_of(record.model_name)
    if fp16 and not family.fp16:
        raise ModelError(f"--fp16 is not supported for {family.name} models yet")
    spec = record.spec
    graph = ExportGraph(model, family).eval()
    names = data_input_names(family.extra_inputs(model))
    ds = TrainingDataset.load(run_dir / "dataset.h5") if names else None
    extras = dataset_extras(ds, names, family.metadata_extras(model)) if ds is not None else {}
    alerts = alert_extras(extras)
    validation = np.asarray(record.split.validation, np.int64)
    draft = build_metadata(record, graph, fp16)  # the graph's inputs, for the feeds
    calibration = ood = None
    if graph.classifier:
        calls, y = validation_calls(run_dir, record, spec, batch_size=CALIBRATION_BATCH)
        feeds = alert_feeds(draft, calls, call_data(calls, validation, alerts))
        val_embeddings, val_logits = split_outputs(graph, feeds, len(y))
        calibration, ood = calibrate(
            val_logits,
            y,
            fitted_on=f"validation split of run {run_dir.name}: {len(y)} objects, whole light "
            "curves" + family.calibration_note(model, list(alerts)),
        )
        gaussians = None
        if family.gaussian_ood:
            ds = ds or TrainingDataset.load(run_dir / "dataset.h5")
            rows, level = training_sample(ds, record)
            train_calls, train_y = split_calls(
                ds, rows, record.labels, spec, CALIBRATION_BATCH, level
            )
            train_feeds = alert_feeds(draft, train_calls, call_data(train_calls, rows, alerts))
            train_embeddings, _ = split_outputs(graph, train_feeds, len(train_y))
            tables, ood = fit_ood(
                train_embeddings,
                train_y,
                len(record.labels),
                val_embeddings,
                val_logits,
                fitted_on=f"training split of run {run_dir.name}: {len(train_y)} objects, whole "
                "or cut at random times as training draws them; standardised and thresholded on "
                "its validation split, whole light curves",
            )
            gaussians = GaussianOOD.from_tables(tables, ood.score)
        graph = ExportGraph(model, family, calibration.temperature, gaussians).eval()
    meta = build_metadata(record, graph, fp16, calibration, ood)
    meta.graph_form = graph_form(fp16, form)

    parity_calls, _ = validation_calls(run_dir, record, spec, limit=parity_objects)
    inputs = [x for _, x in parity_calls]
    real = call_data(parity_calls, validation[:parity_objects], extras)
    groups = parity_feeds(meta, inputs, real)
    example = inputs[0].take(np.arange(min(2, len(inputs[0]))))
    example_feeds = example.as_dict() | default_extra_inputs(meta, example)
    tolerances = parity_tolerances(graph.output_names, fp16, family.parity_tolerance)
    min_agreement = FP16_MIN_TOP_AGREEMENT if fp16 else 1.0

    def check(path: Path) -> ParityReport:
        report = check_parity(graph, graph.output_names, path, groups, tolerances, min_agreement)
        report.calibration, report.ood = calibration, ood
        report.real_inputs = {
            name: sum(int(given[name][1].sum()) for given in real) for name in extras
        }
        if not report.ok:
            raise ParityError(f"ONNX Runtime and torch disagree: {report}; {out} not written")
        return report

    # fp32: the family's export form (ONNX Runtime's fused attention kernel); fp16 traces the
    # training form, whose decomposed ops the float16 converter knows
    return write_onnx(
        graph if fp16 else graph.traced(form),
        example_feeds,
        graph.output_names,
        graph.dynamic_axes(),
        out,
        meta.to_props(),
        check,
        convert=to_float16 if fp16 else None,
    )
