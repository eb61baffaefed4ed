"""Run directory -> one ONNX model bundle, checked and compared with torch before it is kept.

Steps: rebuild the model from ``checkpoint.pt``; compute the raw logits of its output head
on every validation object of the run (whole light curves) and fit there

- the temperature T of ``probabilities = softmax(logits / T)`` (minimum mean NLL, see
  :mod:`astro_classifier.export.calibration`), stored in the graph and in ``calibration``;
- the abstention threshold: the 0.95 quantile of the energy score ``-logsumexp(logits)``
  of the same objects, stored in ``ood`` with ``min_points`` = 3;

export with two outputs, ``probabilities`` (calibrated) and ``logits`` (raw), named inputs and
dynamic batch and length axes; attach the metadata of :class:`ModelMetadata` (with
``broad_classes`` from :func:`astro_classifier.taxonomy.broad_mapping`); ``onnx.checker``;
then run ONNX Runtime and torch on real validation light curves of the run (through the
serving buckets) and fail unless both outputs agree (fp32: max |Δp| ≤ 1e-4, max |Δlogit|
≤ 1e-3 and the same top class for every object). ``--fp16`` converts weights and activations
to float16 with float32 inputs/outputs and checks against looser bounds.
"""

from __future__ import annotations

import contextlib
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
from astro_classifier.features.preprocess import (
    ModelInputs,
    PreprocessingSpec,
)
from astro_classifier.inference.classify import bucketed_inputs
from astro_classifier.inference.model import (
    DEFAULT_MIN_POINTS,
    OOD_ENERGY,
    CalibrationSpec,
    InputSpec,
    LoadedModel,
    ModelMetadata,
    OODSpec,
    default_length_buckets,
    energy_score,
)
from astro_classifier.training.atat import ATATConfig, fused_attention_export
from astro_classifier.training.dataset import TrainingDataset
from astro_classifier.training.opset import OPSET
from astro_classifier.training.registry import (
    MODEL_YAML,
    WEIGHTS,
    create_model,
    get_entry,
    load_model_dir,
)

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 2e-2
FP16_MIN_TOP_AGREEMENT = 0.99
# Raw logits: absolute limits, relative to max(1, largest |logit|) of the call
FP32_LOGIT_TOLERANCE = 1e-4
FP16_LOGIT_TOLERANCE = 2e-2
OOD_QUANTILE = 0.95
CALIBRATION_BATCH = 256  # objects per torch call when computing validation logits
OUTPUT_NAMES = ["probabilities", "logits"]
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
    calibration: CalibrationSpec | None = None
    ood: OODSpec | None = None
    objects_from: str = "validation light curves"
    previous_graph_max_diff: float | None = None  # re-export: new graph vs the file it replaces

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.max_logit_diff <= self.logit_tolerance

    def __str__(self) -> str:
        text = (
            f"{self.n_objects} {self.objects_from}: max |Δp| = {self.max_abs_diff:.2e} "
            f"(limit {self.tolerance:.0e}), max relative |Δlogit| = {self.max_logit_diff:.2e} "
            f"(limit {self.logit_tolerance:.0e}), same top class for "
            f"{100 * self.top_class_agreement:.2f}%"
        )
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
        return text


class CalibratedModel(torch.nn.Module):
    """The exported graph: (softmax(logits / T), logits) of the model's output head.

    ``logits`` are the raw logits of the head whose softmax the model's ``forward`` returns
    (ATAT: the mixed head); T is a constant of the graph.
    """

    def __init__(self, model: torch.nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=torch.float32))

    def logits(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.model.forward_logits(**inputs)["mix"]

    def forward(
        self,
        flux: torch.Tensor,
        flux_err: torch.Tensor,
        time: torch.Tensor,
        band: torch.Tensor,
        mask: torch.Tensor,
        tabular: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(
            flux=flux, flux_err=flux_err, time=time, band=band, mask=mask, tabular=tabular
        )
        return torch.softmax(logits / self.temperature, dim=-1), logits


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
    sub, feats = ds.truncated(index, np.full(len(index), len(ds.truncation_days) - 1))
    buckets = default_length_buckets(spec.max_length)
    calls = list(bucketed_inputs(sub, spec, feats, buckets, batch_size=batch_size or len(sub)))
    y = np.searchsorted(ckpt["labels"], sub.label)
    return calls, y


def validation_inputs(
    run_dir: Path, ckpt: dict, spec: PreprocessingSpec, limit: int
) -> list[ModelInputs]:
    """Real validation light curves of the run, padded to their serving buckets."""
    return [x for _, x in validation_calls(run_dir, ckpt, spec, limit)[0]]


def validation_logits(
    model: torch.nn.Module, calls: list[tuple[np.ndarray, ModelInputs]], n_objects: int
) -> np.ndarray:
    """Raw logits (N, C) float64 of the output head for every validation object (torch)."""
    head = CalibratedModel(model)
    out: np.ndarray | None = None
    with torch.no_grad():
        for index, x in calls:
            z = head.logits(**{k: torch.from_numpy(v) for k, v in x.as_dict().items()}).numpy()
            if out is None:
                out = np.empty((n_objects, z.shape[1]), np.float64)
            out[index] = z
    assert out is not None
    return out


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


def check_parity(
    model: torch.nn.Module, onnx_path: Path, inputs: list[ModelInputs], fp16: bool
) -> ParityReport:
    """Compare both outputs of the ONNX file with ``model`` (a :class:`CalibratedModel`)."""
    session = LoadedModel.load(onnx_path, provider="cpu")
    diffs, logit_diffs, agree, n = [], [], 0, 0
    with torch.no_grad():
        for x in inputs:
            proba, logits = model(**{k: torch.from_numpy(v) for k, v in x.as_dict().items()})
            expected, expected_logits = proba.numpy(), logits.numpy()
            got = session.predict(x)
            if got.logits is None:
                raise ParityError(f"{onnx_path}: the exported graph has no 'logits' output")
            diffs.append(float(np.abs(expected - got.probabilities).max()))
            scale = max(1.0, float(np.abs(expected_logits).max()))
            logit_diffs.append(float(np.abs(expected_logits - got.logits).max()) / scale)
            agree += int((expected.argmax(1) == got.probabilities.argmax(1)).sum())
            n += len(x)
    return ParityReport(
        n,
        max(diffs),
        agree / n,
        FP16_TOLERANCE if fp16 else FP32_TOLERANCE,
        max_logit_diff=max(logit_diffs),
        logit_tolerance=FP16_LOGIT_TOLERANCE if fp16 else FP32_LOGIT_TOLERANCE,
    )


def trace_to_onnx(
    model: torch.nn.Module,
    feeds: dict[str, np.ndarray],
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    fused_attention: bool = True,
) -> onnx.ModelProto:
    """Trace ``model`` on ``feeds`` into an ONNX graph (opset :data:`OPSET`); with
    ``fused_attention``, transformer attention becomes ONNX Runtime's fused kernel."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of torch.export, but it handles
            # these models' dynamic axes and plain ops reliably across versions.
            warnings.simplefilter("ignore", DeprecationWarning)
            fused = fused_attention_export() if fused_attention else contextlib.nullcontext()
            with fused:
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


def atat_graph_axes() -> tuple[list[str], dict[str, dict[int, str]]]:
    """Input names of an ATAT graph and its dynamic axes: batch everywhere, length on the
    per-point inputs."""
    names = ModelInputs.names()
    dynamic = {n: {0: "batch", 1: "length"} for n in names if n != "tabular"}
    dynamic |= {"tabular": {0: "batch"}} | {n: {0: "batch"} for n in OUTPUT_NAMES}
    return names, dynamic


def to_float16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The ATAT graph (traced with decomposed attention) in float16, inputs and outputs
    float32; the feature tokenizer and the calibration stay float32."""
    from onnxconverter_common import float16

    # The quantile tables hold raw feature values up to ~1e8 (fluxes in nJy), beyond
    # float16's range: the feature tokenizer stays float32.
    keep_fp32 = [n.name for n in proto.graph.node if n.name.startswith("/tab_tokens/")]
    # The calibration (logits / T, softmax) reads the graph output `logits`, which stays
    # float32: it runs in float32 too (a float16 T next to it fails the checker).
    keep_fp32 += [
        n.name for n in proto.graph.node if "logits" in n.input or "probabilities" in n.output
    ]
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
    calibration, ood = calibrate(
        validation_logits(model, calls, len(y)),
        y,
        fitted_on=f"validation split of run {run_dir.name}: {len(y)} objects, whole light curves",
    )
    model = CalibratedModel(model, calibration.temperature).eval()
    inputs = validation_inputs(run_dir, ckpt, spec, parity_objects)
    example = inputs[0].take(np.arange(min(2, len(inputs[0]))))
    names, dynamic = atat_graph_axes()
    # fp32: ONNX Runtime's fused attention kernel; fp16 keeps the decomposed ops, which the
    # float16 converter knows.
    proto = trace_to_onnx(
        model, example.as_dict(), names, OUTPUT_NAMES, dynamic, fused_attention=not fp16
    )
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
            outputs=[
                InputSpec(name=n, dtype="float32", shape=["batch", "classes"]) for n in OUTPUT_NAMES
            ],
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
