"""Run directory -> one ONNX model bundle, checked and compared with torch before it is kept.

Steps: rebuild the model from ``checkpoint.pt``; compute the embeddings and raw logits of its
output head (:meth:`ATAT.forward_embedding <astro_classifier.families.atat.ATAT.forward_embedding>`)
on every validation object of the run (whole light curves) and on up to
:data:`MAX_GAUSSIAN_OBJECTS` objects of its training split as training saw them (whole, or cut
at a random time with the run's truncation probability: :func:`training_calls`), and fit

- the temperature T of ``probabilities = softmax(logits / T)`` on validation (minimum mean
  NLL, see :mod:`astro_classifier.export.calibration`), stored in the graph and in
  ``calibration``;
- the out-of-distribution score :data:`OOD_SCORE` (see
  :mod:`astro_classifier.export.gaussian_ood`): class Gaussians with a tied, Ledoit-Wolf-shrunk
  covariance on the training embeddings, the distance to the nearest one and the energy each
  standardised on validation and summed; its tables are constants of the graph
  (:class:`GaussianOOD`), which computes the score as its ``ood`` output; the abstention
  threshold is the 0.95 quantile of the score on the validation objects, stored in ``ood``
  (an :class:`OODSpec` with ``min_points`` = 3 and ``fitted_on``);

export with four outputs, ``probabilities`` (calibrated), ``logits`` (raw), ``embedding`` (the
vector the head reads) and ``ood``, named inputs and dynamic batch and length axes; attach the
metadata of :class:`ModelMetadata` (with ``broad_classes`` from
:func:`astro_classifier.taxonomy.broad_mapping`); ``onnx.checker``; then run ONNX Runtime and
torch on real validation light curves of the run (through the serving buckets) and fail unless
every output agrees (fp32: max |Δp| ≤ 1e-4; max |Δ| of logits, embedding and ood ≤ 1e-4,
1e-4 and 1e-3 of the call's largest magnitude (at least 1); the same top class for every
object). ``--fp16`` converts weights and activations to float16 with float32 inputs/outputs
(the embedding's readers and the OOD score stay float32) and checks against looser bounds.

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
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import yaml

from astro_classifier import __version__
from astro_classifier.core.taxonomy import broad_mapping
from astro_classifier.evaluation.metrics import expected_calibration_error, negative_log_likelihood
from astro_classifier.export.calibration import fit_temperature, ood_threshold, softmax
from astro_classifier.export.gaussian_ood import (
    GaussianTables,
    fit_gaussians,
    gaussian_score,
    with_standardisation,
)
from astro_classifier.features.preprocess import (
    ModelInputs,
    PreprocessingSpec,
)
from astro_classifier.inference.classify import bucketed_inputs
from astro_classifier.inference.model import (
    DEFAULT_MIN_POINTS,
    EMBEDDING_OUTPUT,
    OOD_ENERGY,
    OOD_MAHALANOBIS,
    OOD_MAHALANOBIS_ENERGY,
    OOD_OUTPUT,
    OOD_RELATIVE_MAHALANOBIS,
    CalibrationSpec,
    InputSpec,
    ModelMetadata,
    OODSpec,
    default_length_buckets,
    energy_score,
)
from astro_classifier.families.atat import ATATConfig
from astro_classifier.training.config import TrainingSection
from astro_classifier.training.dataset import TrainingDataset
from astro_classifier.families.opset import OPSET
from astro_classifier.families.registry import (
    MODEL_YAML,
    WEIGHTS,
    create_model,
    get_entry,
    load_model_dir,
)

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 2e-2
FP16_MIN_TOP_AGREEMENT = 0.99
# Raw logits, embedding and ood: absolute limits, relative to max(1, largest |value|) of the call
FP32_LOGIT_TOLERANCE = 1e-4
FP16_LOGIT_TOLERANCE = 2e-2
FP32_EMBEDDING_TOLERANCE = 1e-4
FP16_EMBEDDING_TOLERANCE = 2e-2
FP32_OOD_TOLERANCE = 1e-3
FP16_OOD_TOLERANCE = 5e-2
OOD_QUANTILE = 0.95
OOD_SCORE = OOD_MAHALANOBIS_ENERGY  # what export_run fits (why: the module docstring)
MAX_GAUSSIAN_OBJECTS = 20_000  # training objects the Gaussians are fitted on, at most
GAUSSIAN_SEED = 0  # which ones, when the training split has more
CALIBRATION_BATCH = 256  # objects per torch call when computing validation logits
OUTPUT_NAMES = ["probabilities", "logits", EMBEDDING_OUTPUT]  # then OOD_OUTPUT when fitted
# The tables each graph OOD score reads (GaussianOOD buffers)
GAUSSIAN_BUFFERS = {
    OOD_MAHALANOBIS: ("transform", "means"),
    OOD_RELATIVE_MAHALANOBIS: ("transform", "means", "background_transform", "background_mean"),
    OOD_MAHALANOBIS_ENERGY: (
        "transform",
        "means",
        "distance_mean",
        "distance_std",
        "energy_mean",
        "energy_std",
    ),
}
_INPUT_DTYPES = {
    "flux": "float32",
    "flux_err": "float32",
    "time": "float32",
    "band": "int64",
    "mask": "bool",
    "tabular": "float32",
}


class ParityError(RuntimeError):
    """ONNX Runtime and torch disagree beyond tolerance: the export is not kept."""


@dataclass
class ParityReport:
    n_objects: int
    max_abs_diff: float  # probabilities
    top_class_agreement: float
    tolerance: float
    max_logit_diff: float = 0.0  # max |Δlogit| / max(1, max |logit|) per call
    logit_tolerance: float = FP32_LOGIT_TOLERANCE
    max_embedding_diff: float | None = None  # the same for the embedding; None: not compared
    embedding_tolerance: float = FP32_EMBEDDING_TOLERANCE
    max_ood_diff: float | None = None  # the same for the ood output; None: not compared
    ood_tolerance: float = FP32_OOD_TOLERANCE
    calibration: CalibrationSpec | None = None
    ood: OODSpec | None = None
    objects_from: str = "validation light curves"
    previous_graph_max_diff: float | None = None  # re-export: new graph vs the file it replaces

    @property
    def ok(self) -> bool:
        return (
            self.max_abs_diff <= self.tolerance
            and self.max_logit_diff <= self.logit_tolerance
            and (self.max_embedding_diff or 0.0) <= self.embedding_tolerance
            and (self.max_ood_diff or 0.0) <= self.ood_tolerance
        )

    def __str__(self) -> str:
        text = (
            f"{self.n_objects} {self.objects_from}: max |Δp| = {self.max_abs_diff:.2e} "
            f"(limit {self.tolerance:.0e}), max relative |Δlogit| = {self.max_logit_diff:.2e} "
            f"(limit {self.logit_tolerance:.0e}), "
        )
        if self.max_embedding_diff is not None:
            text += (
                f"max relative |Δembedding| = {self.max_embedding_diff:.2e} "
                f"(limit {self.embedding_tolerance:.0e}), "
            )
        if self.max_ood_diff is not None:
            text += (
                f"max relative |Δood| = {self.max_ood_diff:.2e} (limit {self.ood_tolerance:.0e}), "
            )
        text += f"same top class for {100 * self.top_class_agreement:.2f}%"
        if self.previous_graph_max_diff is not None:
            text += f"\nagainst the previous graph: max |Δp| = {self.previous_graph_max_diff:.2e}"
        if self.calibration is not None:
            c = self.calibration
            text += (
                f"\ncalibration: temperature {c.temperature:.3f} on {c.n_objects} validation "
                f"objects: ECE {c.ece_before:.4f} -> {c.ece_after:.4f}, "
                f"NLL {c.nll_before:.4f} -> {c.nll_after:.4f}"
            )
        if self.ood is not None:
            o = self.ood
            text += (
                f"\nabstain: {o.score} score > {o.threshold:.4f} ({o.quantile:g} quantile of "
                f"validation), or fewer than {o.min_points} points"
            )
            if o.fitted_on:
                text += f"; Gaussians fitted on {o.fitted_on}"
        return text


class GaussianOOD(torch.nn.Module):
    """The OOD score ``kind`` of :mod:`astro_classifier.export.gaussian_ood` as graph
    operations, in float32: ``ood(embedding, logits)`` (B,). Its tables are buffers, graph
    initialisers named ``ood.<buffer>`` (:data:`GAUSSIAN_BUFFERS`), each used as it is so
    that the file keeps them under their names (a re-export reads them back)."""

    def __init__(self, kind: str, buffers: dict[str, np.ndarray]) -> None:
        super().__init__()
        if kind not in GAUSSIAN_BUFFERS:
            raise ValueError(f"no graph form for the OOD score {kind!r}")
        missing = [name for name in GAUSSIAN_BUFFERS[kind] if name not in buffers]
        if missing:
            raise ValueError(f"{kind}: tables {missing} missing")
        self.kind = kind
        for name in GAUSSIAN_BUFFERS[kind]:
            self.register_buffer(name, torch.tensor(np.asarray(buffers[name]), dtype=torch.float32))

    @classmethod
    def from_tables(cls, tables: GaussianTables, kind: str) -> GaussianOOD:
        buffers = {
            "transform": tables.transform,
            "means": tables.means,
            "background_transform": tables.background_transform,
            "background_mean": tables.background_mean,
        }
        if tables.distance_scale is not None and tables.energy_scale is not None:
            buffers |= {
                "distance_mean": tables.distance_scale.mean,
                "distance_std": tables.distance_scale.std,
                "energy_mean": tables.energy_scale.mean,
                "energy_std": tables.energy_scale.std,
            }
        return cls(kind, buffers)

    def forward(self, embedding: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        z = embedding @ self.transform  # (B, D)
        distance = torch.amin(((z.unsqueeze(1) - self.means) ** 2).sum(dim=-1), dim=1)
        if self.kind == OOD_RELATIVE_MAHALANOBIS:
            background = embedding @ self.background_transform - self.background_mean
            return distance - (background**2).sum(dim=-1)
        if self.kind == OOD_MAHALANOBIS_ENERGY:
            energy = -torch.logsumexp(logits, dim=-1)
            return (distance - self.distance_mean) / self.distance_std + (
                energy - self.energy_mean
            ) / self.energy_std
        return distance


class CalibratedModel(torch.nn.Module):
    """The exported graph: softmax(logits / T), logits, the embedding the output head reads,
    and (with ``ood``) the OOD score; outputs in :attr:`output_names` order.

    ``logits`` are the raw logits of the head whose softmax the model's ``forward`` returns
    (ATAT: the mixed head); T is a constant of the graph.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        temperature: float = 1.0,
        ood: GaussianOOD | None = None,
        export_form: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.export_form = export_form  # the network computes its export form (traced graph)
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=torch.float32))
        self.ood = ood

    @property
    def output_names(self) -> list[str]:
        return OUTPUT_NAMES + ([OOD_OUTPUT] if self.ood is not None else [])

    def embedding_and_logits(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_embedding(**inputs, export_form=self.export_form)

    def logits(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.embedding_and_logits(**inputs)[1]

    def forward(
        self,
        flux: torch.Tensor,
        flux_err: torch.Tensor,
        time: torch.Tensor,
        band: torch.Tensor,
        mask: torch.Tensor,
        tabular: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        embedding, logits = self.embedding_and_logits(
            flux=flux, flux_err=flux_err, time=time, band=band, mask=mask, tabular=tabular
        )
        out = (torch.softmax(logits / self.temperature, dim=-1), logits, embedding)
        if self.ood is not None:
            out += (self.ood(embedding, logits),)
        return out


def load_checkpoint(run_dir: Path) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, run record) of a run directory.

    The model is rebuilt from ``model.yaml`` + ``weights.pt`` alone (registry,
    ``weights_only=True``); ``checkpoint.pt`` gives labels, spec, splits and export fields.
    Run directories written before model.yaml existed are rebuilt from checkpoint.pt.
    """
    path = run_dir / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: is {run_dir} a run directory of `astroclf train`?"
        )
    if (run_dir / MODEL_YAML).is_file() and (run_dir / WEIGHTS).is_file():
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        name, model = load_model_dir(run_dir)
        ckpt["model_name"] = name
        ckpt["model_config"] = yaml.safe_load((run_dir / MODEL_YAML).read_text())["config"]
        return model, ckpt
    ckpt = torch.load(path, map_location="cpu", weights_only=False)  # older run directories
    cfg = ATATConfig(**ckpt["model_config"])
    args = {
        k: v
        for k, v in ckpt["model_config"].items()
        if k not in ("n_classes", "n_bands", "n_features")
    }
    model = create_model(
        ckpt["model_name"],
        n_classes=cfg.n_classes,
        n_bands=cfg.n_bands,
        n_features=cfg.n_features,
        **args,
    )
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


def split_calls(
    ds: TrainingDataset,
    index: np.ndarray,
    labels: list[str],
    spec: PreprocessingSpec,
    batch_size: int,
    level: np.ndarray | None = None,
) -> tuple[list[tuple[np.ndarray, ModelInputs]], np.ndarray]:
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
    ckpt: dict,
    spec: PreprocessingSpec,
    limit: int | None = None,
    batch_size: int | None = None,
) -> tuple[list[tuple[np.ndarray, ModelInputs]], np.ndarray]:
    """Real validation light curves of the run (whole), padded to their serving buckets:
    (positions, inputs) per call, and the true class index of every validation object."""
    ds = TrainingDataset.load(run_dir / "dataset.h5")
    index = np.asarray(ckpt["split"]["validation"], np.int64)[:limit]
    if len(index) == 0:
        raise ValueError(f"{run_dir}: the run has no validation objects to check and calibrate on")
    return split_calls(ds, index, ckpt["labels"], spec, batch_size or len(index))


def training_index(ds: TrainingDataset, ckpt: dict) -> np.ndarray:
    """Rows of the run's training split: every row whose split group (an object and its
    augmented or rendered copies) has no validation or hold-out row. (With a
    ``label_fraction`` below 1, rows training left unlabelled are included.)"""
    groups = ds.batch.metadata.get("split_group", np.arange(len(ds), dtype=np.float64))
    held = np.concatenate(
        [np.asarray(ckpt["split"][k], np.int64) for k in ("validation", "holdout")]
    )
    return np.flatnonzero(~np.isin(groups, groups[held]))


def truncation_probability(run_dir: Path) -> float:
    """The chance that training cut a light curve at a random time (the run's config.yaml,
    ``training.truncation_probability``; the training default when absent)."""
    path = run_dir / "config.yaml"
    section = (yaml.safe_load(path.read_text()) or {}).get("training") if path.is_file() else None
    default = TrainingSection.model_fields["truncation_probability"].default
    return float((section or {}).get("truncation_probability", default))


def training_calls(
    run_dir: Path,
    ckpt: dict,
    spec: PreprocessingSpec,
    limit: int = MAX_GAUSSIAN_OBJECTS,
    batch_size: int = CALIBRATION_BATCH,
) -> tuple[list[tuple[np.ndarray, ModelInputs]], np.ndarray]:
    """Up to ``limit`` objects of the run's training split, as training saw them, in
    serving buckets, and their class indices. With :data:`GAUSSIAN_SEED`: which objects
    (when there are more), and each one's light curve: whole, or with the run's
    :func:`truncation_probability` cut at a truncation level drawn uniformly from the
    others, as training draws it."""
    ds = TrainingDataset.load(run_dir / "dataset.h5")
    index = training_index(ds, ckpt)
    if len(index) == 0:
        raise ValueError(f"{run_dir}: the run has no training objects to fit the OOD score on")
    rng = np.random.default_rng(GAUSSIAN_SEED)
    if len(index) > limit:
        index = np.sort(rng.choice(index, size=limit, replace=False))
    n_levels = len(ds.truncation_days)
    cut = rng.random(len(index)) < (truncation_probability(run_dir) if n_levels > 1 else 0.0)
    level = np.where(cut, rng.integers(0, max(n_levels - 1, 1), len(index)), n_levels - 1)
    return split_calls(ds, index, ckpt["labels"], spec, batch_size, level)


def validation_inputs(
    run_dir: Path, ckpt: dict, spec: PreprocessingSpec, limit: int
) -> list[ModelInputs]:
    """Real validation light curves of the run, padded to their serving buckets."""
    return [x for _, x in validation_calls(run_dir, ckpt, spec, limit)[0]]


def split_outputs(
    model: torch.nn.Module, calls: list[tuple[np.ndarray, ModelInputs]], n_objects: int
) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (N, D), raw logits (N, C)), float64, of the output head for every object
    of ``calls`` (torch)."""
    head = CalibratedModel(model)
    embeddings: np.ndarray | None = None
    logits: np.ndarray | None = None
    with torch.no_grad():
        for index, x in calls:
            e, z = head.embedding_and_logits(
                **{k: torch.from_numpy(v) for k, v in x.as_dict().items()}
            )
            if embeddings is None or logits is None:
                embeddings = np.empty((n_objects, e.shape[1]), np.float64)
                logits = np.empty((n_objects, z.shape[1]), np.float64)
            embeddings[index], logits[index] = e.numpy(), z.numpy()
    assert embeddings is not None and logits is not None
    return embeddings, logits


def validation_logits(
    model: torch.nn.Module, calls: list[tuple[np.ndarray, ModelInputs]], n_objects: int
) -> np.ndarray:
    """Raw logits (N, C) float64 of the output head for every validation object (torch)."""
    return split_outputs(model, calls, n_objects)[1]


def calibrate(logits: np.ndarray, y: np.ndarray, fitted_on: str) -> tuple[CalibrationSpec, OODSpec]:
    """Temperature scaling and abstention threshold from validation logits and labels."""
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


def _relative_diff(expected: np.ndarray, got: np.ndarray) -> float:
    """max |expected - got| / max(1, max |expected|)."""
    scale = max(1.0, float(np.abs(expected).max()))
    return float(np.abs(expected - got).max()) / scale


def check_parity(
    model: torch.nn.Module, onnx_path: Path, inputs: list[ModelInputs], fp16: bool
) -> ParityReport:
    """Compare every output of ``model`` (a :class:`CalibratedModel`) with the ONNX file's
    output of the same name."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    available = [o.name for o in session.get_outputs()]
    names = model.output_names
    missing = [n for n in names if n not in available]
    if missing:
        raise ParityError(f"{onnx_path}: the exported graph has no {missing} output")
    worst = dict.fromkeys(names, 0.0)
    agree, n = 0, 0
    with torch.no_grad():
        for x in inputs:
            expected = dict(
                zip(
                    names,
                    (
                        t.numpy()
                        for t in model(**{k: torch.from_numpy(v) for k, v in x.as_dict().items()})
                    ),
                    strict=True,
                )
            )
            got = dict(zip(names, session.run(names, x.as_dict()), strict=True))
            for name in names:
                diff = (
                    float(np.abs(expected[name] - got[name]).max())
                    if name == "probabilities"
                    else _relative_diff(expected[name], got[name])
                )
                worst[name] = max(worst[name], diff)
            agree += int(
                (expected["probabilities"].argmax(1) == got["probabilities"].argmax(1)).sum()
            )
            n += len(x)
    return ParityReport(
        n,
        worst["probabilities"],
        agree / n,
        FP16_TOLERANCE if fp16 else FP32_TOLERANCE,
        max_logit_diff=worst["logits"],
        logit_tolerance=FP16_LOGIT_TOLERANCE if fp16 else FP32_LOGIT_TOLERANCE,
        max_embedding_diff=worst.get(EMBEDDING_OUTPUT),
        embedding_tolerance=FP16_EMBEDDING_TOLERANCE if fp16 else FP32_EMBEDDING_TOLERANCE,
        max_ood_diff=worst.get(OOD_OUTPUT),
        ood_tolerance=FP16_OOD_TOLERANCE if fp16 else FP32_OOD_TOLERANCE,
    )


def trace_to_onnx(
    model: torch.nn.Module,
    feeds: dict[str, np.ndarray],
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> onnx.ModelProto:
    """Trace ``model`` on ``feeds`` into an ONNX graph (opset :data:`OPSET`)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of torch.export, but it handles
            # these models' dynamic axes and plain ops reliably across versions.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                tuple(torch.from_numpy(v) for v in feeds.values()),
                str(tmp_path),
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=OPSET,
                dynamo=False,
            )
        return onnx.load(str(tmp_path))


def atat_graph_axes(
    output_names: list[str] = OUTPUT_NAMES,
) -> tuple[list[str], dict[str, dict[int, str]]]:
    """Input names of an ATAT graph and its dynamic axes: batch everywhere, length on the
    per-point inputs."""
    names = ModelInputs.names()
    dynamic = {n: {0: "batch", 1: "length"} for n in names if n != "tabular"}
    dynamic |= {"tabular": {0: "batch"}} | {n: {0: "batch"} for n in output_names}
    return names, dynamic


def output_specs(output_names: list[str]) -> list[InputSpec]:
    """The metadata's description of an ATAT graph's outputs."""
    shapes = {
        "probabilities": ["batch", "classes"],
        "logits": ["batch", "classes"],
        EMBEDDING_OUTPUT: ["batch", "embedding"],
        OOD_OUTPUT: ["batch"],
    }
    return [InputSpec(name=n, dtype="float32", shape=shapes[n]) for n in output_names]


def ood_only_nodes(proto: onnx.ModelProto) -> list[str]:
    """Names of the nodes that compute the ``ood`` output and nothing else."""
    producer = {out: node for node in proto.graph.node for out in node.output}

    def ancestors(output: str) -> set[str]:
        seen, todo = set(), [output]
        while todo:
            node = producer.get(todo.pop())
            if node is not None and node.name not in seen:
                seen.add(node.name)
                todo.extend(node.input)
        return seen

    others = set().union(*(ancestors(o.name) for o in proto.graph.output if o.name != OOD_OUTPUT))
    return sorted(ancestors(OOD_OUTPUT) - others)


def to_float16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The ATAT graph (traced with decomposed attention) in float16, inputs and outputs
    float32; the feature tokenizer, the calibration and the OOD score stay float32."""
    from onnxconverter_common import float16

    # The quantile tables hold raw feature values up to ~1e8 (fluxes in nJy), beyond
    # float16's range: the feature tokenizer stays float32.
    keep_fp32 = [n.name for n in proto.graph.node if n.name.startswith("/tab_tokens/")]
    # The calibration (logits / T, softmax) reads the graph output `logits`, which stays
    # float32: it runs in float32 too (a float16 T next to it fails the checker).
    keep_fp32 += [
        n.name for n in proto.graph.node if "logits" in n.input or "probabilities" in n.output
    ]
    # Likewise the graph output `embedding` stays float32, and so does what reads it: the
    # head's first layer and the OOD score (squared distances through a precision matrix:
    # large entries, sums of squares), which reads the float32 logits too.
    keep_fp32 += [n.name for n in proto.graph.node if EMBEDDING_OUTPUT in n.input]
    keep_fp32 += ood_only_nodes(proto)
    with warnings.catch_warnings():  # it reports every constant it rounds, e.g. -1e4
        warnings.filterwarnings("ignore", message="the float32 number")
        return float16.convert_float_to_float16(
            proto, keep_io_types=True, node_block_list=keep_fp32
        )


def export_run(
    run_dir: Path, out: Path, fp16: bool = False, parity_objects: int = 512
) -> ParityReport:
    """Export the run in ``run_dir`` to ``out``; raise ParityError (writing nothing) on mismatch.

    CLIP runs go through :func:`astro_classifier.export.clip_export.export_clip_run`."""
    model, ckpt = load_checkpoint(run_dir)
    if get_entry(ckpt["model_name"]).family == "clip":
        from astro_classifier.export.clip_export import export_clip_run

        return export_clip_run(run_dir, out, fp16=fp16, parity_objects=parity_objects)
    spec = PreprocessingSpec.model_validate(ckpt["spec"])
    calls, y = validation_calls(run_dir, ckpt, spec, batch_size=CALIBRATION_BATCH)
    val_embeddings, val_logits = split_outputs(model, calls, len(y))
    calibration, _ = calibrate(
        val_logits,
        y,
        fitted_on=f"validation split of run {run_dir.name}: {len(y)} objects, whole light curves",
    )
    train_calls, train_y = training_calls(run_dir, ckpt, spec)
    train_embeddings, _ = split_outputs(model, train_calls, len(train_y))
    tables, ood = fit_ood(
        train_embeddings,
        train_y,
        len(ckpt["labels"]),
        val_embeddings,
        val_logits,
        fitted_on=f"training split of run {run_dir.name}: {len(train_y)} objects, whole or "
        "cut at random times as training draws them; standardised and thresholded on its "
        "validation split, whole light curves",
    )
    model = CalibratedModel(
        model, calibration.temperature, GaussianOOD.from_tables(tables, ood.score)
    ).eval()
    inputs = validation_inputs(run_dir, ckpt, spec, parity_objects)
    example = inputs[0].take(np.arange(min(2, len(inputs[0]))))
    output_names = model.output_names
    names, dynamic = atat_graph_axes(output_names)
    # fp32: the export form (ONNX Runtime's fused attention kernel); fp16 keeps the training
    # form's decomposed ops, which the float16 converter knows
    traced = CalibratedModel(
        model.model, calibration.temperature, model.ood, export_form=not fp16
    ).eval()
    proto = trace_to_onnx(traced, example.as_dict(), names, output_names, dynamic)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        if fp16:
            proto = to_float16(proto)
        exp = ckpt["export"]
        metadata = ModelMetadata(
            name=exp["name"],
            version=exp["version"],
            description=exp.get("description", ""),
            architecture=ckpt["model_name"],
            architecture_config=ckpt["model_config"],
            labels=ckpt["labels"],
            bands=list(spec.bands),
            inputs=[
                InputSpec(
                    name=n,
                    dtype=_INPUT_DTYPES[n],
                    shape=["batch", "features"] if n == "tabular" else ["batch", "length"],
                )
                for n in names
            ],
            outputs=output_specs(output_names),
            feature_names=spec.feature_names,
            preprocessing=spec,
            length_buckets=default_length_buckets(spec.max_length),
            training_data=ckpt["dataset"],
            metrics=ckpt["metrics"],
            precision="fp16" if fp16 else "fp32",
            package_version=__version__,
            created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            broad_classes=broad_mapping(ckpt["labels"]),
            calibration=calibration,
            ood=ood,
        )
        for key, value in metadata.to_props().items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "astroclf"
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp_path))

        report = check_parity(model, tmp_path, inputs, fp16)
        report.calibration, report.ood = calibration, ood
        bad_top = report.top_class_agreement < (FP16_MIN_TOP_AGREEMENT if fp16 else 1.0)
        if not report.ok or bad_top:
            raise ParityError(f"ONNX Runtime and torch disagree: {report}; {out} not written")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp_path), out)
    return report
