"""Model bundles: one ONNX file carrying its labels, input contract and preprocessing.

``metadata_props`` of the graph hold one JSON value per key of :class:`ModelMetadata`
(key names prefixed ``astroclf.``). Shipped models live in ``astro_classifier/models/`` and
are addressed by name (``atat-lsst``); any other argument is a path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from astro_classifier.errors import ModelError
from astro_classifier.features.preprocess import ModelInputs, PreprocessingSpec

SHIPPED_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
METADATA_PREFIX = "astroclf."
Provider = Literal["auto", "cpu", "cuda"]


class InputSpec(BaseModel):
    name: str
    dtype: str
    shape: list[str | int]  # symbolic names mark dynamic axes


class ModelMetadata(BaseModel):
    """Everything serving needs to know about a model, stored inside the ONNX file."""

    model_config = ConfigDict(extra="allow")

    name: str
    version: str
    architecture: str
    architecture_config: dict[str, Any] = {}  # registry builder arguments (sizes, layers)
    labels: list[str]
    bands: list[str]
    inputs: list[InputSpec]
    outputs: list[InputSpec]
    feature_names: list[str]
    preprocessing: PreprocessingSpec
    length_buckets: list[int]
    training_data: dict[str, Any]
    metrics: dict[str, Any]
    precision: Literal["fp32", "fp16"] = "fp32"
    package_version: str
    created_at: str
    description: str = ""

    def to_props(self) -> dict[str, str]:
        return {
            METADATA_PREFIX + key: json.dumps(value)
            for key, value in self.model_dump(mode="json").items()
        }

    @classmethod
    def from_props(cls, props: dict[str, str], source: str) -> ModelMetadata:
        raw = {
            k[len(METADATA_PREFIX) :]: v for k, v in props.items() if k.startswith(METADATA_PREFIX)
        }
        if not raw:
            raise ModelError(
                f"{source}: no astroclf metadata in the ONNX file; was it written by `astroclf export`?"
            )
        try:
            return cls.model_validate({k: json.loads(v) for k, v in raw.items()})
        except ValueError as exc:
            raise ModelError(f"{source}: invalid astroclf metadata: {exc}") from exc


def default_length_buckets(max_length: int) -> list[int]:
    """Padded lengths used at serving: 8, 16, 32, 64, 128, then steps of 64, up to max_length.

    Each light curve is padded to the smallest bucket that holds it, so at most half of a
    short call and at most a third of a long one is padding (measured: benchmarks/RESULTS.md).
    """
    edges = [b for b in (8, 16, 32, 64, 128) if b < max_length]
    nxt = 192
    while nxt < max_length:
        edges.append(nxt)
        nxt += 64
    return [*edges, max_length]


def shipped_models() -> dict[str, Path]:
    return {p.stem: p for p in sorted(SHIPPED_MODELS_DIR.glob("*.onnx"))}


def resolve_model_path(model: str | Path) -> Path:
    """A shipped model's name or a path to an .onnx file -> its path."""
    shipped = shipped_models()
    if str(model) in shipped:
        return shipped[str(model)]
    path = Path(model)
    if path.is_file():
        return path
    raise ModelError(
        f"model {str(model)!r} is neither a shipped model ({', '.join(shipped) or 'none installed'}) "
        "nor an existing .onnx file"
    )


def read_metadata(model: str | Path) -> ModelMetadata:
    """Read a model's metadata without loading its weights into a session."""
    import onnx

    path = resolve_model_path(model)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for corrupt files
        raise ModelError(f"{path}: not a readable ONNX model ({exc})") from exc
    return ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props}, str(path))


def providers_for(provider: Provider) -> list[str]:
    """ONNX Runtime execution providers for ``provider`` (auto = CUDA when available)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    if provider == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ModelError(
                "provider 'cuda' asked for, but this onnxruntime has no CUDAExecutionProvider "
                f"(available: {available}); install the `gpu` extra (onnxruntime-gpu) instead of `cpu`"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return (
        ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if "CUDAExecutionProvider" in available
        else ["CPUExecutionProvider"]
    )


@dataclass
class LoadedModel:
    """An ONNX Runtime session plus the metadata that says how to feed it."""

    path: Path
    metadata: ModelMetadata
    session: Any  # onnxruntime.InferenceSession, or anything with .run(names, feeds)

    @classmethod
    def load(
        cls, model: str | Path, provider: Provider = "auto", threads: int | None = None
    ) -> LoadedModel:
        import onnxruntime as ort

        path = resolve_model_path(model)
        metadata = read_metadata(path)
        providers = providers_for(provider)
        if "CUDAExecutionProvider" in providers and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # find cuDNN/cuBLAS from the nvidia-* wheels, as torch does
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        expected = ModelInputs.names()
        got = [i.name for i in session.get_inputs()]
        if got != expected:
            raise ModelError(
                f"{path}: graph inputs {got} differ from the input contract {expected}"
            )
        return cls(path, metadata, session)

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def predict(self, inputs: ModelInputs) -> np.ndarray:
        """Class probabilities (B, n_classes) float32 for one padded call."""
        (proba,) = self.session.run(["probabilities"], inputs.as_dict())
        return np.asarray(proba, dtype=np.float32)

    def warm_up(self) -> None:
        """One call per length bucket, so first real calls do not pay for allocation."""
        n_features = len(self.metadata.feature_names)
        for length in self.metadata.length_buckets:
            self.predict(
                ModelInputs(
                    flux=np.zeros((1, length), np.float32),
                    flux_err=np.ones((1, length), np.float32),
                    time=np.zeros((1, length), np.float32),
                    band=np.zeros((1, length), np.int64),
                    mask=np.ones((1, length), bool),
                    tabular=np.full((1, n_features), np.nan, np.float32),
                )
            )
