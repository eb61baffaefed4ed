"""Fine-tuned CLIP run -> one ONNX file: every tower, the fusion, the head, the embeddings.

Inputs: the :class:`ModelInputs` arrays, then ``spectrum`` (B, 2, G) when the model has the
spectrum tower, ``image`` (B, 3, S, S) (normalised stamps, :mod:`astro_classifier.data.cutouts`)
when it has the image tower, then one presence mask ``has_<modality>`` (B,) bool per modality (see
:mod:`astro_classifier.inference.model`). Outputs: ``probabilities`` (softmax(logits / T), T
fitted on the run's validation split as for ATAT), ``logits``, ``embedding`` (fused) and
``embedding_<modality>`` per tower. Every tower runs on every row; the presence masks decide
which embeddings the fusion averages, so an alert without a spectrum is classified by its
photometry and metadata towers only.

Checks before the file is kept: ``onnx.checker``; then, for every non-empty combination of
present modalities, ONNX Runtime against torch on real validation light curves, with the
objects' real spectra and stamps where the run's dataset carries them (spectra resampled and
normalised by :func:`astro_classifier.data.spectra.model_input`) and synthetic ones for the
others where the modality is present: every output within :data:`PARITY_TOLERANCE` (1e-5;
logits relative to max(1, |logit|)) and the same top class; and the same input run twice
gives bit-identical outputs.
"""

from __future__ import annotations

import datetime as dt
import itertools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from astro_classifier import __version__
from astro_classifier.core.errors import ModelError
from astro_classifier.core.taxonomy import broad_mapping_or_none
from astro_classifier.export.onnx_export import (
    CALIBRATION_BATCH,
    ParityError,
    ParityReport,
    calibrate,
    load_checkpoint,
    trace_to_onnx,
    validation_calls,
)
from astro_classifier.features.preprocess import ModelInputs, PreprocessingSpec
from astro_classifier.inference.model import (
    InputSpec,
    LoadedModel,
    ModelMetadata,
    default_extra_inputs,
    default_length_buckets,
)
from astro_classifier.families.clip import CLIP
from astro_classifier.training.clip_train import spectrum_inputs
from astro_classifier.training.dataset import TrainingDataset

PARITY_TOLERANCE = 1e-5
OUTPUTS = ["probabilities", "logits", "embedding"]


class ClipGraph(torch.nn.Module):
    """The exported graph of a CLIP classifier (see the module docstring)."""

    def __init__(self, model: CLIP, temperature: float = 1.0, export_form: bool = False) -> None:
        super().__init__()
        self.model = model
        self.export_form = export_form  # the towers compute their export forms (traced graph)
        self.modalities = list(model.modalities)
        self.classifier = model.head is not None  # else: an embedding-only (pretrained) model
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=torch.float32))

    def forward(self, flux, flux_err, time, band, mask, tabular, *extra):
        extra = list(extra)
        spectrum = extra.pop(0) if "spectrum" in self.modalities else None
        image = extra.pop(0) if "image" in self.modalities else None
        presence = dict(zip(self.modalities, extra, strict=True))
        emb = self.model.embeddings(
            flux, flux_err, time, band, mask, tabular, spectrum, image, self.export_form
        )
        fused = self.model.fuse(emb, presence)
        if not self.classifier:
            return (fused, *[emb[m] for m in self.modalities])
        logits = self.model.head(fused)
        proba = torch.softmax(logits / self.temperature, dim=-1)
        return (proba, logits, fused, *[emb[m] for m in self.modalities])

    def output_names(self) -> list[str]:
        first = OUTPUTS if self.classifier else ["embedding"]
        return first + [f"embedding_{m}" for m in self.modalities]


def _feeds(
    meta: ModelMetadata, x: ModelInputs, presence, spectrum, image=None
) -> dict[str, np.ndarray]:
    return x.as_dict() | default_extra_inputs(meta, x, presence, spectrum, image)


def synthetic_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, 3, size, size) float32 noise stamps with a central source, for parity checks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    source = np.exp(-(xx**2 + yy**2) / 8.0)
    images = rng.normal(0, 1, (n, 3, size, size)) + rng.uniform(0, 5, (n, 3, 1, 1)) * source
    return np.arcsinh(images).astype(np.float32)


def synthetic_spectra(n: int, bins: int, seed: int = 0) -> np.ndarray:
    """(n, 2, bins) float32 positive smooth spectra with errors, for parity checks."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0, 1, bins)
    flux = np.exp(rng.normal(0, 1, (n, 1))) * (
        1 + 0.5 * np.sin(6 * grid + rng.normal(0, 1, (n, 1)))
    )
    flux = flux * 1e-16 + rng.normal(0, 1e-18, (n, bins))
    return np.stack([flux, np.full_like(flux, 1e-18)], axis=1).astype(np.float32)


def combinations(modalities: list[str]) -> list[tuple[str, ...]]:
    return [c for r in range(1, len(modalities) + 1) for c in itertools.combinations(modalities, r)]


def check_parity(
    graph: ClipGraph,
    meta: ModelMetadata,
    path: Path,
    inputs: list[ModelInputs],
    real_spectra: list[np.ndarray | None] | None = None,
    real_images: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[float, float, float, dict[str, float]]:
    """(max |Δ| over probabilities and embeddings, max relative |Δlogit|, top-class agreement,
    max |Δ| per combination) over every combination of present modalities.

    ``real_spectra[k]``: (len(inputs[k]), 2, G) spectra of call k, NaN rows where the object
    has none (those get a synthetic one); ``real_images[k]``: (images, ok) of call k, rows
    not ok get synthetic stamps."""
    session = LoadedModel.load(path, provider="cpu")
    names = graph.output_names()
    worst, worst_logit, agree, n = 0.0, 0.0, 0, 0
    per_combo: dict[str, float] = {}
    for combo in combinations(graph.modalities):
        combo_worst = 0.0
        for k, x in enumerate(inputs):
            presence = {m: np.full(len(x), m in combo) for m in graph.modalities}
            spectrum = (
                synthetic_spectra(len(x), int(meta.spectrum_grid[2]), seed=k)
                if "spectrum" in graph.modalities
                else None
            )
            if spectrum is not None and real_spectra is not None and real_spectra[k] is not None:
                real = real_spectra[k]
                has = np.isfinite(real).any(axis=(1, 2))
                spectrum[has] = real[has]
            image = None
            if "image" in graph.modalities:
                image = synthetic_images(len(x), int(meta.image_size or 63), seed=k)
                if real_images is not None:
                    real, ok = real_images[k]
                    image[ok] = real[ok]
            feeds = _feeds(meta, x, presence, spectrum, image)
            got = session.session.run(names, feeds)
            again = session.session.run(names, feeds)
            for a, b in zip(got, again, strict=True):
                if not np.array_equal(a, b):
                    raise ParityError(f"{path}: two runs of the same input differ")
            with torch.no_grad():
                expected = graph(*[torch.from_numpy(v) for v in feeds.values()])
            for name, e, g in zip(names, expected, got, strict=True):
                e = e.numpy()
                diff = float(np.abs(e - g).max())
                if name == "logits":
                    worst_logit = max(worst_logit, diff / max(1.0, float(np.abs(e).max())))
                else:
                    worst = max(worst, diff)
                    combo_worst = max(combo_worst, diff)
            if graph.classifier:
                agree += int((expected[0].numpy().argmax(1) == got[0].argmax(1)).sum())
            else:
                agree += len(x)
            n += len(x)
        per_combo["+".join(combo)] = combo_worst
    return worst, worst_logit, agree / max(n, 1), per_combo


def _real_spectra(
    run_dir: Path, ckpt: dict, model: CLIP, calls, limit: int
) -> list[np.ndarray | None] | None:
    """Per parity call, the model-grid spectra of its validation objects (NaN rows: none)."""
    if "spectrum" not in model.modalities:
        return None

    ds = TrainingDataset.load(run_dir / "dataset.h5")
    spectra = spectrum_inputs(model, ds)
    if spectra is None:
        return None
    index = np.asarray(ckpt["split"]["validation"], np.int64)[:limit]
    out = []
    for positions, x in calls:
        rows = np.full((len(x), *spectra[0].shape[1:]), np.nan, np.float32)
        rows[: len(positions)] = spectra[0][index[positions]]  # padding rows: none
        out.append(rows)
    return out


def _real_images(
    run_dir: Path, model: CLIP, calls, index: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Per call, the stamps of its objects (``index``: dataset rows of the calls' positions)
    and whether they are usable (padding rows: not)."""
    if "image" not in model.modalities:
        return None
    ds = TrainingDataset.load(run_dir / "dataset.h5")
    if ds.images is None:
        return None
    size = model.cfg.image_size
    out = []
    for positions, x in calls:
        images = np.zeros((len(x), 3, size, size), np.float32)
        ok = np.zeros(len(x), bool)
        images[: len(positions)] = ds.images[index[positions]]
        ok[: len(positions)] = ds.image_ok[index[positions]]
        out.append((images, ok))
    return out


def export_clip_run(
    run_dir: Path, out: Path, fp16: bool = False, parity_objects: int = 512
) -> ParityReport:
    """Export a CLIP run to ``out``; ParityError (writing nothing) on mismatch.

    A pretraining run (no classifier head) gives an embedding-only file (no labels, no
    ``probabilities``): `astroclf embed` and `astroclf similar` use it, `classify` refuses it.
    """
    model, ckpt = load_checkpoint(run_dir)
    if not isinstance(model, CLIP):
        raise ModelError(f"{run_dir} holds a {type(model).__name__}, not a CLIP model")
    classifier = model.head is not None
    if fp16:
        raise ModelError("--fp16 is not supported for CLIP models yet")
    spec = PreprocessingSpec.model_validate(ckpt["spec"])
    modalities = [m for m in model.modalities]
    exp = ckpt["export"]
    meta = ModelMetadata(
        name=exp["name"],
        version=exp["version"],
        description=exp.get("description", ""),
        architecture=ckpt["model_name"],
        architecture_config=ckpt["model_config"],
        labels=ckpt["labels"] if classifier else [],
        bands=list(spec.bands),
        inputs=[],
        outputs=[],
        feature_names=spec.feature_names,
        preprocessing=spec,
        length_buckets=default_length_buckets(spec.max_length),
        training_data=ckpt["dataset"],
        # a pretraining's validation holds a contrastive loss, not classification metrics
        metrics=ckpt["metrics"] if classifier else {"pretraining": ckpt["metrics"]},
        precision="fp32",
        package_version=__version__,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        broad_classes=broad_mapping_or_none(ckpt["labels"]) if classifier else {},
        modalities=modalities,
        required_modalities=["photometry"],
        spectrum_grid=list(model.cfg.spectrum_grid) if "spectrum" in modalities else None,
        image_size=model.cfg.image_size if "image" in modalities else None,
        embedding_dim=model.cfg.embed_dim,
    )
    calibration = ood = None
    validation = np.asarray(ckpt["split"]["validation"], np.int64)
    if classifier:  # calibration on the validation split as alerts arrive: stamps, no spectrum
        calls, y = validation_calls(run_dir, ckpt, spec, batch_size=CALIBRATION_BATCH)
        images = _real_images(run_dir, model, calls, validation)
        graph = ClipGraph(model).eval()
        logits = np.empty((len(y), len(ckpt["labels"])), np.float64)
        with torch.no_grad():
            for k, (index, x) in enumerate(calls):
                image, has = images[k] if images else (None, None)
                presence = None if has is None else {"image": has}
                feeds = _feeds(meta, x, presence, None, image)
                logits[index] = graph(*[torch.from_numpy(v) for v in feeds.values()])[1].numpy()
        calibration, ood = calibrate(
            logits,
            y,
            fitted_on=f"validation split of run {run_dir.name}: {len(y)} objects, whole light "
            "curves, photometry + metadata" + (" + images" if images else ""),
        )
        meta.calibration, meta.ood = calibration, ood
    graph_temperature = calibration.temperature if calibration else 1.0
    graph = ClipGraph(model, graph_temperature).eval()

    parity_calls, _ = validation_calls(run_dir, ckpt, spec, limit=parity_objects)
    inputs = [x for _, x in parity_calls]
    real_spectra = _real_spectra(run_dir, ckpt, model, parity_calls, parity_objects)
    real_images = _real_images(run_dir, model, parity_calls, validation[:parity_objects])
    example = inputs[0].take(np.arange(min(2, len(inputs[0]))))
    feeds = _feeds(meta, example, None, None)
    names = list(feeds)
    outputs = graph.output_names()
    dynamic = {n: {0: "batch", 1: "length"} for n in ModelInputs.names() if n != "tabular"}
    dynamic |= {n: {0: "batch"} for n in names if n not in dynamic}
    dynamic |= {n: {0: "batch"} for n in outputs}
    meta.inputs = [
        InputSpec(
            name=n,
            dtype=str(v.dtype),
            shape=(
                ["batch", "features"]
                if n == "tabular"
                else ["batch", 2, int(v.shape[2])]
                if n == "spectrum"
                else ["batch", 3, int(v.shape[2]), int(v.shape[3])]
                if n == "image"
                else ["batch"]
                if n.startswith("has_")
                else ["batch", "length"]
            ),
        )
        for n, v in feeds.items()
    ]
    meta.outputs = [
        InputSpec(
            name=n,
            dtype="float32",
            shape=["batch", "classes" if n in ("probabilities", "logits") else model.cfg.embed_dim],
        )
        for n in outputs
    ]
    # The transformer towers' attention as ONNX Runtime's fused kernel (see atat.py).
    traced = ClipGraph(model, graph_temperature, export_form=True).eval()
    proto = trace_to_onnx(traced, feeds, names, outputs, dynamic)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        for key, value in meta.to_props().items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "astroclf"
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp_path))

        worst, worst_logit, agreement, per_combo = check_parity(
            graph, meta, tmp_path, inputs, real_spectra, real_images
        )
        report = ParityReport(
            sum(len(x) for x in inputs),
            worst,
            agreement,
            PARITY_TOLERANCE,
            max_logit_diff=worst_logit,
            logit_tolerance=PARITY_TOLERANCE,
            calibration=calibration,
            ood=ood,
        )
        report.per_combination = per_combo  # type: ignore[attr-defined]
        report.real_spectra = sum(  # type: ignore[attr-defined]
            int(np.isfinite(r).any(axis=(1, 2)).sum()) for r in real_spectra or [] if r is not None
        )
        report.real_images = sum(  # type: ignore[attr-defined]
            int(ok.sum()) for _, ok in real_images or []
        )
        if not report.ok or agreement < 1.0:
            raise ParityError(
                f"ONNX Runtime and torch disagree: {report}; per modality combination "
                f"{per_combo}; {out} not written"
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp_path), out)
    return report
