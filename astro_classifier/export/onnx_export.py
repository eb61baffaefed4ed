"""Run directory -> one ONNX model bundle, checked and compared with torch before it is kept.

Steps: rebuild the model from ``checkpoint.pt``; export with named inputs and dynamic batch
and length axes; attach the metadata of :class:`ModelMetadata`; ``onnx.checker``; then run
ONNX Runtime and torch on real validation light curves of the run (through the serving
buckets) and fail unless the probabilities agree (fp32: max |Δp| ≤ 1e-4 and the same top
class for every object). ``--fp16`` converts weights and activations to float16 with float32
inputs/outputs and checks against looser bounds.
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

from astro_classifier import __version__
from astro_classifier.data.dataset import TrainingDataset
from astro_classifier.features.preprocess import (
    ModelInputs,
    PreprocessingSpec,
)
from astro_classifier.inference.classify import bucketed_inputs
from astro_classifier.inference.model import (
    InputSpec,
    LoadedModel,
    ModelMetadata,
    default_length_buckets,
)
from astro_classifier.training.atat import ATATConfig
from astro_classifier.training.registry import create_model

OPSET = 17
FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 2e-2
FP16_MIN_TOP_AGREEMENT = 0.99
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
    max_abs_diff: float
    top_class_agreement: float
    tolerance: float

    def __str__(self) -> str:
        return (
            f"{self.n_objects} validation light curves: max |Δp| = {self.max_abs_diff:.2e} "
            f"(limit {self.tolerance:.0e}), same top class for {100 * self.top_class_agreement:.2f}%"
        )


def load_checkpoint(run_dir: Path) -> tuple[torch.nn.Module, dict]:
    path = run_dir / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: is {run_dir} a run directory of `astroclf train`?"
        )
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
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


def validation_inputs(
    run_dir: Path, ckpt: dict, spec: PreprocessingSpec, limit: int
) -> list[ModelInputs]:
    """Real validation light curves of the run, padded to their serving buckets."""
    ds = TrainingDataset.load(run_dir / "dataset.h5")
    index = np.asarray(ckpt["split"]["validation"], np.int64)[:limit]
    sub, feats = ds.truncated(index, np.full(len(index), len(ds.truncation_days) - 1))
    buckets = default_length_buckets(spec.max_length)
    return [x for _, x in bucketed_inputs(sub, spec, feats, buckets, batch_size=len(sub))]


def check_parity(
    model: torch.nn.Module, onnx_path: Path, inputs: list[ModelInputs], fp16: bool
) -> ParityReport:
    session = LoadedModel.load(onnx_path, provider="cpu")
    diffs, agree, n = [], 0, 0
    with torch.no_grad():
        for x in inputs:
            expected = model(**{k: torch.from_numpy(v) for k, v in x.as_dict().items()}).numpy()
            got = session.predict(x)
            diffs.append(float(np.abs(expected - got).max()))
            agree += int((expected.argmax(1) == got.argmax(1)).sum())
            n += len(x)
    return ParityReport(n, max(diffs), agree / n, FP16_TOLERANCE if fp16 else FP32_TOLERANCE)


def export_run(
    run_dir: Path, out: Path, fp16: bool = False, parity_objects: int = 512
) -> ParityReport:
    """Export the run in ``run_dir`` to ``out``; raise ParityError (writing nothing) on mismatch."""
    model, ckpt = load_checkpoint(run_dir)
    spec = PreprocessingSpec.model_validate(ckpt["spec"])
    inputs = validation_inputs(run_dir, ckpt, spec, parity_objects)
    example = inputs[0].take(np.arange(min(2, len(inputs[0]))))
    names = ModelInputs.names()
    dynamic = {n: {0: "batch", 1: "length"} for n in names if n != "tabular"}
    dynamic |= {"tabular": {0: "batch"}, "probabilities": {0: "batch"}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of torch.export, but it handles
            # this model's dynamic axes and plain ops reliably across versions.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                tuple(torch.from_numpy(v) for v in example.as_dict().values()),
                str(tmp_path),
                input_names=names,
                output_names=["probabilities"],
                dynamic_axes=dynamic,
                opset_version=OPSET,
                dynamo=False,
            )
        proto = onnx.load(str(tmp_path))
        if fp16:
            from onnxconverter_common import float16

            # The quantile tables hold raw feature values up to ~1e8 (fluxes in nJy), beyond
            # float16's range: the feature tokenizer stays float32.
            keep_fp32 = [n.name for n in proto.graph.node if n.name.startswith("/tab_tokens/")]
            with warnings.catch_warnings():  # it reports every constant it rounds, e.g. -1e4
                warnings.filterwarnings("ignore", message="the float32 number")
                proto = float16.convert_float_to_float16(
                    proto, keep_io_types=True, node_block_list=keep_fp32
                )
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
            outputs=[InputSpec(name="probabilities", dtype="float32", shape=["batch", "classes"])],
            feature_names=spec.feature_names,
            preprocessing=spec,
            length_buckets=default_length_buckets(spec.max_length),
            training_data=ckpt["dataset"],
            metrics=ckpt["metrics"],
            precision="fp16" if fp16 else "fp32",
            package_version=__version__,
            created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        )
        for key, value in metadata.to_props().items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "astroclf"
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp_path))

        report = check_parity(model, tmp_path, inputs, fp16)
        bad_top = report.top_class_agreement < (FP16_MIN_TOP_AGREEMENT if fp16 else 1.0)
        if report.max_abs_diff > report.tolerance or bad_top:
            raise ParityError(f"ONNX Runtime and torch disagree: {report}; {out} not written")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp_path), out)
    return report
