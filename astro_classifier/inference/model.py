"""Model bundles: one ONNX file carrying its labels, input contract and preprocessing.

``metadata_props`` of the graph hold one JSON value per key of :class:`ModelMetadata`
(key names prefixed ``astroclf.``). Shipped models live in ``astro_classifier/models/`` and
are addressed by name (``atat-lsst``); any other argument is a path.

Graph outputs: ``probabilities`` = softmax(logits / T), calibrated by the temperature T fitted
at export (``calibration``), and ``logits``, the raw (uncalibrated) logits of the same head.
ATAT files exported with the out-of-distribution Gaussians also have ``embedding`` (B, D)
float32, the vector the output head reads (:meth:`ATAT.forward_embedding
<astro_classifier.families.atat.ATAT.forward_embedding>`), and ``ood`` (B,) float32, the OOD
score computed inside the graph. Files written before calibration existed have only
``probabilities``; they still load, and :meth:`LoadedModel.ood_spec` then falls back to a
score computed from the probabilities. Files without ``ood`` serve the energy score.

Out-of-distribution score (``ood``; higher = less like the training data):

- ``mahalanobis_energy`` (files with an ``ood`` output; what `astroclf export` writes for ATAT):
  the graph output ``ood`` = ``(D(e) - a) / b + (E(z) - c) / d``, with ``e`` the embedding,
  ``D(e) = min_k (e - mu_k)^T S^-1 (e - mu_k)`` the squared Mahalanobis distance to the nearest
  class Gaussian (class means ``mu_k`` and one shared, Ledoit-Wolf-shrunk covariance S fitted
  on the embeddings of the training split's light curves, whole or cut at random times as
  training saw them; Lee et al. 2018), ``E(z)`` the energy below, and
  ``a, b, c, d`` the mean and standard deviation of each on the validation objects (see
  :mod:`astro_classifier.export.gaussian_ood`). ``mahalanobis`` (``D(e)`` alone) and
  ``relative_mahalanobis`` (``D(e)`` minus the distance to one Gaussian of all training
  embeddings; Ren et al. 2021) are read from the same output.
- ``energy`` (models with a ``logits`` output): ``ood_score = -logsumexp(z)
  = -log(sum_k exp(z_k))``, with ``z`` the raw logits (before the temperature), i.e. the
  free energy of Liu et al. 2020 at temperature 1.
- ``neg_log_max_prob`` (fallback, older files without logits): ``ood_score = -log(max_k p_k)``,
  threshold :data:`FALLBACK_OOD_THRESHOLD` = log 2 (abstain when the top probability is
  below 0.5) unless the metadata holds one.

The threshold of the first two is a quantile (0.95) of the scores of the run's validation
objects (whole light curves), stored in the model (``ood``).

Extra inputs: the graph inputs are the :class:`ModelInputs` arrays, in their order, followed
by the model's extra inputs, which the metadata's ``inputs`` lists after them
(:func:`extra_inputs`; written at export from the model's family): data inputs such as
``spectrum`` (B, 2, G) float32 (flux and flux error on the model's wavelength grid
``spectrum_grid``, NaN = no data) and ``image`` (B, 3, S, S) float32 (the alert's science,
template and difference stamps, normalised by :mod:`astro_classifier.formats.stamps`; S =
``image_size``), then presence flags ``has_<modality>`` (B,) bool (True = the object has it).
Serving learns them from the metadata alone: :meth:`LoadedModel.load` checks the graph's
inputs against that list, and :meth:`LoadedModel.predict` fills the extra inputs when the
caller gives only :class:`ModelInputs` (alerts and light-curve files;
:func:`default_extra_inputs`): data inputs absent (zeros), photometry present, metadata present
where any tabular value is finite. :func:`classify` feeds a model that :func:`needs_images`
the stamps its batch carries (``LightCurveBatch.cutouts``), present where they decoded.
``modalities`` lists a multimodal model's towers, ``required_modalities`` those every object
must have (photometry); its extra outputs ``embedding`` (the fused, L2-normalised embedding)
and ``embedding_<modality>`` per tower serve `astroclf embed`. A model without extra inputs
(ATAT) has exactly the ModelInputs contract.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from astro_classifier.core.errors import ModelError
from astro_classifier.core.taxonomy import broad_mapping
from astro_classifier.features.preprocess import ModelInputs, PreprocessingSpec

SHIPPED_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
METADATA_PREFIX = "astroclf."
Provider = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "fp16"]
GraphForm = Literal["auto", "gather", "dense"]


class InputSpec(BaseModel):
    name: str
    dtype: str
    shape: list[str | int]  # symbolic names mark dynamic axes


BroadClass = Literal["transient", "stochastic", "periodic"]
OOD_ENERGY = "energy"
OOD_NEG_LOG_MAX_PROB = "neg_log_max_prob"
OOD_MAHALANOBIS = "mahalanobis"
OOD_RELATIVE_MAHALANOBIS = "relative_mahalanobis"
OOD_MAHALANOBIS_ENERGY = "mahalanobis_energy"
OODScore = Literal[
    "energy", "neg_log_max_prob", "mahalanobis", "relative_mahalanobis", "mahalanobis_energy"
]
# Scores the graph computes itself, read from its ``ood`` output
GRAPH_OOD_SCORES = (OOD_MAHALANOBIS, OOD_RELATIVE_MAHALANOBIS, OOD_MAHALANOBIS_ENERGY)
OOD_OUTPUT = "ood"
EMBEDDING_OUTPUT = "embedding"
FALLBACK_OOD_THRESHOLD = float(np.log(2.0))  # -log(0.5): top probability below 0.5
DEFAULT_MIN_POINTS = 3


class CalibrationSpec(BaseModel):
    """Temperature scaling fitted at export: probabilities = softmax(logits / temperature)."""

    temperature: float
    ece_before: float  # top-label ECE (15 bins) of softmax(logits) on ``fitted_on``
    ece_after: float  # ... of softmax(logits / temperature)
    nll_before: float  # mean negative log likelihood (nats), every object weighing the same
    nll_after: float
    n_objects: int
    fitted_on: str  # which objects, e.g. "validation split of <run>, whole light curves"


class OODSpec(BaseModel):
    """How serving decides to abstain (see the module docstring for the scores)."""

    score: OODScore = OOD_ENERGY
    threshold: float  # abstain when ood_score > threshold
    quantile: float | None = None  # quantile of the validation scores the threshold is
    min_points: int = DEFAULT_MIN_POINTS  # abstain below this many points in the model's bands
    fitted_on: str | None = None  # graph scores: which objects the Gaussians were fitted on


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
    # "dense": the CUDA companion's graph (no data-dependent shapes, see cuda_companion);
    # None: the default export form
    graph_form: Literal["dense"] | None = None
    package_version: str
    created_at: str
    description: str = ""
    # Added with calibration and abstention; absent (None) in older model files.
    broad_classes: dict[str, BroadClass] | None = None  # label -> broad kind
    calibration: CalibrationSpec | None = None
    ood: OODSpec | None = None
    # Multimodal (CLIP) models only; None for ATAT (see the module docstring).
    modalities: list[str] | None = None
    required_modalities: list[str] | None = None
    spectrum_grid: list[float] | None = None  # first, last wavelength (Angstrom), bins
    image_size: int | None = None  # side of the (3, S, S) stamp input (image tower only)
    embedding_dim: int | None = None

    def broad_mapping(self) -> dict[str, str]:
        """label -> transient/stochastic/periodic: the stored mapping, else the project's."""
        if self.broad_classes is not None:
            return dict(self.broad_classes)

        return broad_mapping(self.labels)

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


PRESENCE_PREFIX = "has_"  # a presence flag input: has_<modality> (B,) bool
# Presence of the modalities the ModelInputs arrays carry, by default: photometry where any
# point is real, metadata where any tabular value is finite
MODEL_INPUT_PRESENCE = {
    "photometry": lambda x: x.mask.any(axis=1),
    "metadata": lambda x: np.isfinite(x.tabular).any(axis=1),
}


def extra_inputs(metadata: ModelMetadata) -> list[InputSpec]:
    """The graph inputs after the ModelInputs ones, as the metadata lists them (none for a
    model of light curves and tabular features alone)."""
    names = set(ModelInputs.names())
    return [spec for spec in metadata.inputs if spec.name not in names]


def extra_input_names(metadata: ModelMetadata) -> list[str]:
    """Names of :func:`extra_inputs`, in graph order."""
    return [spec.name for spec in extra_inputs(metadata)]


def needs_images(metadata: ModelMetadata) -> bool:
    """Whether the model reads stamps (an ``image`` input; callers then decode the alerts'
    cutouts)."""
    return "image" in extra_input_names(metadata)


def default_extra_inputs(
    metadata: ModelMetadata,
    inputs: ModelInputs,
    presence: dict[str, np.ndarray] | None = None,
    data: dict[str, np.ndarray | None] | None = None,
) -> dict[str, np.ndarray]:
    """Feeds of the model's extra inputs (:func:`extra_inputs`) for a call on ``inputs``.

    A data input (``spectrum``, ``image``) takes ``data[name]`` when given, present where a
    row holds any finite value, else zeros, absent. A presence flag ``has_<m>`` takes
    ``presence[m]`` when given, else the default: the data input ``m``'s presence, for
    photometry and metadata :data:`MODEL_INPUT_PRESENCE`, else absent. Data for inputs the
    model does not have are ignored."""
    specs = extra_inputs(metadata)
    if not specs:
        return {}
    n = len(inputs)
    presence = dict(presence or {})
    data = data or {}
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name.startswith(PRESENCE_PREFIX):
            continue
        given = data.get(spec.name)
        if given is None:
            shape = (n, *(int(d) for d in spec.shape[1:]))
            feeds[spec.name] = np.zeros(shape, np.dtype(spec.dtype))
            presence.setdefault(spec.name, np.zeros(n, bool))
        else:
            feeds[spec.name] = np.ascontiguousarray(given, np.dtype(spec.dtype))
            rows = np.isfinite(feeds[spec.name].reshape(n, -1)).any(axis=1)
            presence.setdefault(spec.name, rows)
    for spec in specs:
        if not spec.name.startswith(PRESENCE_PREFIX):
            continue
        modality = spec.name.removeprefix(PRESENCE_PREFIX)
        flag = presence.get(modality)
        if flag is None:
            default = MODEL_INPUT_PRESENCE.get(modality)
            flag = default(inputs) if default is not None else np.zeros(n, bool)
        feeds[spec.name] = np.array(np.broadcast_to(np.asarray(flag, bool), (n,)))
    return {spec.name: feeds[spec.name] for spec in specs}


def logsumexp(z: np.ndarray) -> np.ndarray:
    """log(sum_k exp(z[:, k])) per row, computed in float64 without overflow."""
    z = np.asarray(z, np.float64)
    top = z.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(z - top).sum(axis=1, keepdims=True)))[:, 0]


def energy_score(logits: np.ndarray) -> np.ndarray:
    """OOD score ``-logsumexp(logits)`` per row (float64); higher = less like training data."""
    return -logsumexp(logits)


def neg_log_max_prob(proba: np.ndarray) -> np.ndarray:
    """Fallback OOD score ``-log(max_k p_k)`` per row (float64); 0 for a certain answer."""
    top = np.asarray(proba, np.float64).max(axis=1)
    return -np.log(np.clip(top, 1e-30, 1.0))


@dataclass
class Prediction:
    """What one session call returns: calibrated probabilities, (newer files) raw logits and
    (files whose OOD score is computed in the graph) that score."""

    probabilities: np.ndarray  # (B, C) float32
    logits: np.ndarray | None = None  # (B, C) float32; None for a file without that output
    ood: np.ndarray | None = None  # (B,) float32, the graph's ``ood`` output when served


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


def fp16_companion(path: Path) -> Path | None:
    """The float16 form of an fp32 model file when one sits beside it, ``fp16/<file name>``
    (shipped for the shipped models; ``astroclf export MODEL.onnx --fp16 -o
    fp16/MODEL.onnx`` writes one, after its parity check). CUDA serving selects it."""
    candidate = path.parent / "fp16" / path.name
    return candidate if candidate.is_file() else None


def select_precision(path: Path, on_cuda: bool, precision: Precision = "auto") -> Path:
    """The file to serve for ``path``: its fp16 companion when ``precision`` is fp16, or
    auto on CUDA (float16 halves memory traffic there; on a CPU it only adds casts)."""
    if precision == "fp32":
        return path
    companion = fp16_companion(path)
    if companion is None:
        if precision == "fp16" and read_metadata(path).precision != "fp16":
            raise ModelError(
                f"{path}: precision fp16 asked for, but no {path.parent / 'fp16' / path.name} "
                f"(write one with `astroclf export {path} --fp16 -o {path.parent / 'fp16' / path.name} "
                "--parity-data ...`)"
            )
        return path
    if precision == "auto" and not on_cuda:
        return path
    return _checked_companion(path, companion, "float16", precision="fp16", graph_form=None)


def _checked_companion(
    path: Path, companion: Path, what: str, precision: str, graph_form: str | None
) -> Path:
    """``companion`` after checking it is ``path``'s model in another form: same name,
    version and labels, and the ``precision`` and ``graph_form`` that form has (a stale
    companion left beside a newer model would otherwise serve other weights)."""
    main, other = read_metadata(path), read_metadata(companion)
    if (other.name, other.version, other.labels, other.precision, other.graph_form) != (
        main.name,
        main.version,
        main.labels,
        precision,
        graph_form,
    ):
        raise ModelError(
            f"{companion}: not the {what} form of {path} (name, version, labels, precision or "
            f"graph form differ: {other.name} {other.version} {other.precision} "
            f"{other.graph_form} vs {main.name} {main.version})"
        )
    return companion


def cuda_companion(path: Path) -> Path | None:
    """The CUDA form of an fp32 model file when one sits beside it, ``cuda/<file name>``:
    the same weights, metadata, labels and outputs, traced in the export form without
    data-dependent shapes (``graph_form`` "dense": ATAT's light-curve tokens in their one-hot
    form instead of gathering each band's points with NonZero and ScatterND). The gathered
    form is the faster one on a CPU; on CUDA each NonZero makes ONNX Runtime wait for the
    device to learn an output size (a host-device synchronisation per band and call) and
    rules out CUDA graphs, while the one-hot form's extra multiply-adds cost a GPU little.
    ``python -m astro_classifier.export.companions`` writes them, after a parity check."""
    candidate = path.parent / "cuda" / path.name
    return candidate if candidate.is_file() else None


def select_graph(
    path: Path, on_cuda: bool, precision: Precision = "auto", form: GraphForm = "auto"
) -> Path:
    """The file to serve for ``path``: first by ``precision`` (:func:`select_precision`;
    the float16 companion is traced in the training form, whose tokens are one-hot
    already), then, for float32, by ``form``: ``dense`` = the CUDA companion
    (:func:`cuda_companion`), ``gather`` = ``path`` itself, ``auto`` = the CUDA companion
    on CUDA when one ships, ``path`` otherwise."""
    chosen = select_precision(path, on_cuda, precision)
    if chosen != path or form == "gather":
        return chosen
    companion = cuda_companion(path)
    if companion is None:
        if form == "dense" and read_metadata(path).graph_form != "dense":
            raise ModelError(
                f"{path}: the dense graph form asked for, but no {path.parent / 'cuda' / path.name} "
                f"(write one with `astroclf export {path} --form dense -o "
                f"{path.parent / 'cuda' / path.name} --parity-data ...`)"
            )
        return path
    if form == "auto" and not on_cuda:
        return path
    return _checked_companion(path, companion, "dense (CUDA)", precision="fp32", graph_form="dense")


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


def cuda_provider_options(tf32: bool = False, cuda_graph: bool = False) -> dict[str, str]:
    """Options of ONNX Runtime's CUDA provider for serving.

    ``use_tf32``: off unless asked for. On Ampere and later GPUs ONNX Runtime lets float32
    MatMul/Gemm run on TF32 tensor cores by default (10-bit mantissa), which moves the
    probabilities by ~1e-3 from the CPU's (the H200 run of 2026-12: max |dp| 1.2e-3 for
    atat-ztf, 2.1e-3 for atat-lsst, all with TF32 on); the float32 graph promises float32
    results (its export parity budget is 1e-4), and these 64-wide layers are bound by memory
    traffic rather than multiply-adds, so TF32 buys little. Whoever wants the speed over the
    parity asks for it (``tf32=True``), or for the float16 companion, which is faster still
    and checked against its own budget. ``benchmarks/cuda_parity.py`` measures both.

    ``enable_cuda_graph``: see :class:`CudaGraphCalls`, whose sessions (one per call shape,
    each with its own memory arena) also grow their arenas by what they need rather than by
    powers of two (``arena_extend_strategy``), which would double their sum."""
    options = {"use_tf32": "1" if tf32 else "0"}
    if cuda_graph:
        options |= {"enable_cuda_graph": "1", "arena_extend_strategy": "kSameAsRequested"}
    return options


def with_provider_options(providers: list[str], cuda_options: dict[str, str]) -> list[Any]:
    """``providers`` (names) with the CUDA provider's options attached, as ONNX Runtime
    takes them: ``(name, options)`` for CUDA, the name alone for the others."""
    return [
        (name, dict(cuda_options)) if name == "CUDAExecutionProvider" else name
        for name in providers
    ]


def _on_cuda(session: Any) -> bool:
    return session.get_providers()[0] == "CUDAExecutionProvider"


class BoundCalls:
    """Session calls through ONNX Runtime's IOBinding with device buffers kept per call shape.

    On a GPU, ``session.run`` allocates device memory for every input and output of every
    call and copies through pageable host memory. Serving repeats a handful of shapes (one
    per length bucket and batch size), so this keeps, per shape, the input and output
    ``OrtValue`` buffers on ``device`` and one binding: a call copies the inputs into their
    buffers (``update_inplace``), runs, and copies the outputs back, all of them in one
    ``copy_outputs_to_cpu`` after the run (the run's one wait for the device; each output
    is fetched once, into memory of its own). The results are those of ``session.run``
    (tested on the CPU device). At most :attr:`MAX_SHAPES` shapes are kept (the least
    recently used dropped).
    """

    MAX_SHAPES = 64

    def __init__(self, session: Any, device: str = "cuda", device_id: int = 0) -> None:
        self.session, self.device, self.device_id = session, device, device_id
        # per shape: (session, binding, input buffers, output buffers)
        self._calls: dict[tuple, tuple[Any, Any, dict[str, Any], dict[str, Any]]] = {}

    def session_for(self, feeds: dict[str, np.ndarray]) -> Any:
        """The session that runs calls of ``feeds``' shape (here: the one session)."""
        return self.session

    def bind_outputs(
        self, session: Any, binding: Any, names: list[str], feeds: dict[str, np.ndarray]
    ) -> dict[str, Any]:
        """Bind the outputs ``names`` of a new shape: here to the device, allocated by the
        first run (their shapes are known only then) and kept bound by :meth:`run` after
        it; returns the buffers bound now (none)."""
        for name in names:
            binding.bind_output(name, self.device, self.device_id)
        return {}

    def _prepare(self, names: list[str], feeds: dict[str, np.ndarray]):
        import onnxruntime as ort

        key = (tuple(names), *((k, v.shape, v.dtype.str) for k, v in feeds.items()))
        entry = self._calls.pop(key, None)
        if entry is None:
            session = self.session_for(feeds)
            binding = session.io_binding()
            inputs = {}
            for name, value in feeds.items():
                buffer = ort.OrtValue.ortvalue_from_numpy(
                    np.ascontiguousarray(value), self.device, self.device_id
                )
                binding.bind_ortvalue_input(name, buffer)
                inputs[name] = buffer
            entry = (session, binding, inputs, self.bind_outputs(session, binding, names, feeds))
        self._calls[key] = entry  # most recently used last
        while len(self._calls) > self.MAX_SHAPES:
            self._calls.pop(next(iter(self._calls)))
        return entry

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        session, binding, inputs, outputs = self._prepare(names, feeds)
        for name, value in feeds.items():
            inputs[name].update_inplace(np.ascontiguousarray(value))
        session.run_with_iobinding(binding)
        if not outputs:  # first call of this shape: keep the allocated outputs bound
            for name, value in zip(names, binding.get_outputs(), strict=True):
                outputs[name] = value
                binding.bind_ortvalue_output(name, value)
        return list(binding.copy_outputs_to_cpu())  # in binding order: ``names``


class CudaGraphCalls(BoundCalls):
    """:class:`BoundCalls` captured as CUDA graphs: one ONNX Runtime session per call shape.

    Opt-in (``LoadedModel.load(..., cuda_graph=True)``), measured only on a GPU machine
    (``benchmarks/gpu_suite.sh``). ONNX Runtime's CUDA provider with ``enable_cuda_graph``
    records a call's kernel launches once (on one of the first runs of a shape) and then
    replays them in one launch, which for a small model at a large batch removes most
    of the per-kernel launch cost. It needs, per captured graph, fixed shapes and fixed
    device addresses of every input and output (what the bound buffers are), every compute
    node on CUDA, and no data-dependent shape: the dense companion (:func:`cuda_companion`)
    or the float16 one, never the gathered form (``NonZero``; :func:`data_dependent_ops`).
    So each call shape (batch, length) gets a session of its own whose free dimensions are
    fixed when it is created (``add_free_dimension_override_by_name``: ONNX Runtime folds
    every shape computation into constants, and nothing is left to run on the host), with
    its own buffers and binding. A call's batch is padded up to a power of two (at least
    :attr:`MIN_BATCH`; the padding rows repeat its first object, their outputs are dropped),
    so that the remainders of a stream of calls reuse a few captured shapes rather than each
    creating a session. At most :attr:`MAX_SHAPES` sessions are kept (each holds its own
    device memory arena; the least recently used is dropped).

    ``make_session(batch, length)`` builds the session of a shape; with a CPU session and
    device the same per-shape machinery runs without the capture (the tests).
    """

    MAX_SHAPES = 48
    MIN_BATCH = 32

    def __init__(self, make_session: Any, device: str = "cuda", device_id: int = 0) -> None:
        super().__init__(None, device, device_id)
        self.make_session = make_session

    def padded_batch(self, n: int) -> int:
        """The batch size a call of ``n`` objects runs at."""
        return max(self.MIN_BATCH, 1 << max(n - 1, 0).bit_length())

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        n = len(feeds["flux"])
        size = self.padded_batch(n)
        if size != n:
            feeds = {
                k: np.concatenate([v, np.repeat(v[:1], size - n, axis=0)]) for k, v in feeds.items()
            }
        return [out[:n] for out in super().run(names, feeds)]

    def session_for(self, feeds: dict[str, np.ndarray]) -> Any:
        batch, length = feeds["flux"].shape
        return self.make_session(int(batch), int(length))

    def bind_outputs(
        self, session: Any, binding: Any, names: list[str], feeds: dict[str, np.ndarray]
    ) -> dict[str, Any]:
        """Output buffers allocated before the first run, so that the graph is captured
        writing where later calls read (every output of these models is (batch, ...) with
        its other dimensions fixed); an output of another shape is left to
        :meth:`BoundCalls.bind_outputs`."""
        import onnxruntime as ort

        batch = len(feeds["flux"])
        dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
        specs = {o.name: o for o in session.get_outputs()}
        shapes = {n: [batch, *specs[n].shape[1:]] for n in names}
        if not all(isinstance(d, int) for n in names for d in shapes[n]) or not all(
            specs[n].type in dtypes for n in names
        ):
            return super().bind_outputs(session, binding, names, feeds)
        outputs = {}
        for name in names:
            outputs[name] = ort.OrtValue.ortvalue_from_shape_and_type(
                shapes[name], dtypes[specs[name].type], self.device, self.device_id
            )
            binding.bind_ortvalue_output(name, outputs[name])
        return outputs


def fixed_shape_sessions(path: Path, threads: int | None, providers: list[Any]) -> Any:
    """``(batch, length) -> session`` of ``path`` with both free dimensions fixed (see
    :class:`CudaGraphCalls`)."""

    def make_session(batch: int, length: int) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.add_free_dimension_override_by_name("batch", batch)
        options.add_free_dimension_override_by_name("length", length)
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)

    return make_session


# Operators whose output size depends on the data (or that hold subgraphs): on CUDA each
# makes ONNX Runtime wait for the device, and a graph holding one cannot be a CUDA graph.
DATA_DEPENDENT_OPS = frozenset({"NonZero", "ScatterND", "Unique", "Compress", "If", "Loop", "Scan"})


def data_dependent_ops(path: Path) -> list[str]:
    """The operators of :data:`DATA_DEPENDENT_OPS` in the graph of ``path`` (sorted)."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    return sorted({n.op_type for n in nodes} & DATA_DEPENDENT_OPS)


@dataclass
class LoadedModel:
    """An ONNX Runtime session plus the metadata that says how to feed it.

    On CUDA, calls go through :class:`BoundCalls` (IOBinding with per-shape device buffers)
    unless ``io_binding=False`` at load, or :class:`CudaGraphCalls` with ``cuda_graph=True``;
    on the CPU through ``session.run``.
    """

    path: Path
    metadata: ModelMetadata
    session: Any  # onnxruntime.InferenceSession, or anything with .run(names, feeds)
    bound: BoundCalls | None = None  # IOBinding calls (CUDA), else None

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One session call (through the IOBinding buffers where there are any)."""
        if self.bound is not None:
            return self.bound.run(names, feeds)
        return self.session.run(names, feeds)

    @classmethod
    def load(
        cls,
        model: str | Path,
        provider: Provider = "auto",
        threads: int | None = None,
        io_binding: bool | None = None,
        precision: Precision = "auto",
        form: GraphForm = "auto",
        cuda_graph: bool = False,
        tf32: bool = False,
    ) -> LoadedModel:
        """``io_binding``: None = on CUDA only; True also on the CPU (same results: tests).
        ``precision``: auto = the fp16 companion on CUDA when there is one, fp32 on a CPU;
        ``form``: auto = for float32, the dense (CUDA) companion on CUDA when there is one
        (:func:`select_graph`). ``cuda_graph``: calls captured as CUDA graphs
        (:class:`CudaGraphCalls`; CUDA only, a graph without data-dependent shapes).
        ``tf32``: let CUDA run float32 matrix products in TF32 (off: see
        :func:`cuda_provider_options`)."""
        import onnxruntime as ort

        providers = providers_for(provider)
        if cuda_graph and "CUDAExecutionProvider" not in providers:
            raise ModelError("cuda_graph=True needs the CUDA provider (provider 'cuda' or 'auto')")
        main = resolve_model_path(model)
        path = select_graph(main, providers[0] == "CUDAExecutionProvider", precision, form)
        # chosen for CUDA rather than asked for: back to the main file if CUDA is not created
        automatic = path != main and (
            precision == "auto" if path == fp16_companion(main) else form == "auto"
        )
        if "CUDAExecutionProvider" in providers and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # find cuDNN/cuBLAS from the nvidia-* wheels, as torch does
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        configured = with_provider_options(providers, cuda_provider_options(tf32))
        session = ort.InferenceSession(str(path), sess_options=options, providers=configured)
        if automatic and not _on_cuda(session):
            # CUDA asked for but not created (no device, driver too old): ONNX Runtime fell
            # back to the CPU, where the float32 gathered graph is the one to serve
            path = main
            session = ort.InferenceSession(str(path), sess_options=options, providers=configured)
        if cuda_graph:
            if not _on_cuda(session):
                raise ModelError(f"{path}: cuda_graph=True, but no CUDA session was created")
            blocking = data_dependent_ops(path)
            if blocking:
                raise ModelError(
                    f"{path}: cuda_graph=True needs a graph without data-dependent shapes; this "
                    f"one has {blocking} (serve its dense companion: form='dense')"
                )
        metadata = read_metadata(path)
        expected = ModelInputs.names() + extra_input_names(metadata)
        got = [i.name for i in session.get_inputs()]
        if got != expected:
            raise ModelError(
                f"{path}: graph inputs {got} differ from the input contract {expected}"
            )
        outputs = [o.name for o in session.get_outputs()]
        embedding_only = (
            bool(metadata.modalities) and not metadata.labels and "embedding" in outputs
        )
        if "probabilities" not in outputs and not embedding_only:
            raise ModelError(f"{path}: graph outputs {outputs} lack 'probabilities'")
        if (
            metadata.ood is not None
            and metadata.ood.score == OOD_ENERGY
            and "logits" not in outputs
        ):
            raise ModelError(
                f"{path}: the metadata asks for the energy OOD score, but the graph has no "
                f"'logits' output (outputs: {outputs})"
            )
        if (
            metadata.ood is not None
            and metadata.ood.score in GRAPH_OOD_SCORES
            and OOD_OUTPUT not in outputs
        ):
            raise ModelError(
                f"{path}: the metadata asks for the {metadata.ood.score} OOD score, but the "
                f"graph has no {OOD_OUTPUT!r} output (outputs: {outputs})"
            )
        on_cuda = _on_cuda(session)
        bound: BoundCalls | None = None
        if cuda_graph:
            graph_providers = with_provider_options(
                providers, cuda_provider_options(tf32, cuda_graph=True)
            )
            bound = CudaGraphCalls(fixed_shape_sessions(path, threads, graph_providers))
        elif io_binding or (io_binding is None and on_cuda):
            bound = BoundCalls(session, "cuda" if on_cuda else "cpu")
        return cls(path, metadata, session, bound)

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    @property
    def has_logits(self) -> bool:
        """Whether the graph has the raw ``logits`` output (files exported with calibration)."""
        if not hasattr(self, "_has_logits"):
            outputs = getattr(self.session, "get_outputs", list)()
            self._has_logits = "logits" in [o.name for o in outputs]
        return self._has_logits

    def ood_spec(self) -> OODSpec:
        """The model's abstention rule; for files without one, the documented fallback
        (``neg_log_max_prob`` with :data:`FALLBACK_OOD_THRESHOLD`)."""
        if self.metadata.ood is not None:
            return self.metadata.ood
        return OODSpec(
            score=OOD_NEG_LOG_MAX_PROB,
            threshold=FALLBACK_OOD_THRESHOLD,
            quantile=None,
            min_points=DEFAULT_MIN_POINTS,
        )

    @property
    def ood_in_graph(self) -> bool:
        """Whether the model's OOD score is the graph's ``ood`` output."""
        return self.ood_spec().score in GRAPH_OOD_SCORES

    def ood_scores(self, prediction: Prediction) -> np.ndarray:
        """Per-object OOD score (float64) by the model's rule (see the module docstring)."""
        if self.ood_in_graph:
            if prediction.ood is None:
                raise ModelError(
                    f"{self.path}: the {self.ood_spec().score} OOD score needs "
                    f"the {OOD_OUTPUT!r} output"
                )
            return np.asarray(prediction.ood, np.float64)
        if self.ood_spec().score == OOD_ENERGY:
            if prediction.logits is None:
                raise ModelError(f"{self.path}: energy OOD score needs the 'logits' output")
            return energy_score(prediction.logits)
        return neg_log_max_prob(prediction.probabilities)

    def feeds(
        self,
        inputs: ModelInputs,
        presence: dict[str, np.ndarray] | None = None,
        **data: np.ndarray | None,
    ) -> dict[str, np.ndarray]:
        """Session feeds: the ModelInputs arrays plus the model's extra inputs
        (:func:`default_extra_inputs`; ``data``: arrays of its data inputs by name)."""
        return inputs.as_dict() | default_extra_inputs(self.metadata, inputs, presence, data)

    @property
    def needs_images(self) -> bool:
        return needs_images(self.metadata)

    def predict(
        self,
        inputs: ModelInputs,
        presence: dict[str, np.ndarray] | None = None,
        **data: np.ndarray | None,
    ) -> Prediction:
        """Probabilities (B, n_classes) float32 for one padded call, the raw logits when the
        graph has them, and the graph's OOD score when the model's rule reads it.
        ``presence`` and ``data`` (``spectrum=``, ``image=``): models with extra inputs only
        (see :meth:`feeds`)."""
        if self.metadata.modalities and not self.metadata.labels:
            raise ModelError(
                f"{self.path}: {self.metadata.name} is an embedding-only model (a CLIP "
                "pretraining without classifier head): use `astroclf embed`, or fine-tune it"
            )
        names = ["probabilities", "logits"] if self.has_logits else ["probabilities"]
        if self.ood_in_graph:
            names.append(OOD_OUTPUT)
        out = dict(zip(names, self.run(names, self.feeds(inputs, presence, **data)), strict=True))
        return Prediction(
            probabilities=np.asarray(out["probabilities"], dtype=np.float32),
            logits=np.asarray(out["logits"], dtype=np.float32) if "logits" in out else None,
            ood=np.asarray(out[OOD_OUTPUT], dtype=np.float32) if OOD_OUTPUT in out else None,
        )

    def embed(
        self,
        inputs: ModelInputs,
        modality: str | None = None,
        presence: dict[str, np.ndarray] | None = None,
        **data: np.ndarray | None,
    ) -> np.ndarray:
        """(B, D) float32 L2-normalised embeddings: of one tower (``modality``) or the fused
        one (None) of a multimodal model."""
        if not self.metadata.modalities:
            raise ModelError(f"{self.path}: {self.metadata.name} is not a multimodal (CLIP) model")
        if modality is not None and modality not in self.metadata.modalities:
            raise ModelError(
                f"{self.path}: no {modality!r} tower; the model has {self.metadata.modalities}"
            )
        name = "embedding" if modality is None else f"embedding_{modality}"
        outputs = [o.name for o in self.session.get_outputs()]
        if name not in outputs:
            raise ModelError(f"{self.path}: the graph has no {name!r} output ({outputs})")
        out = self.run([name], self.feeds(inputs, presence, **data))
        return np.asarray(out[0], np.float32)

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
