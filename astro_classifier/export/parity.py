"""The parity check of every export: ONNX Runtime against torch, output by output.

:func:`check_parity` runs the written file and its torch reference (the
:class:`~astro_classifier.export.graph.ExportGraph` in the training form) on the same feeds and
measures, for every output of the graph, max |Δ| (``probabilities``: absolute; every other
output relative to max(1, largest |value|) of the call), the share of objects with the same top
class, and that the same input run twice gives bit-identical outputs. It fails
(:class:`ParityError`) unless each output is within its tolerance
(:func:`parity_tolerances`) and the top classes agree for every object (float16: 99 %).

The feeds (:func:`parity_feeds`) are real light curves; a model with presence-flag inputs is
checked under every non-empty combination of present modalities, with the objects' real
extra data (spectra, stamps) where the run's data set has them and synthetic data for the
others (:data:`SYNTHETIC`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from astro_classifier.families.base import PRESENCE_PREFIX
from astro_classifier.features.preprocess import ModelInputs
from astro_classifier.inference.model import (
    EMBEDDING_OUTPUT,
    OOD_OUTPUT,
    CalibrationSpec,
    ModelMetadata,
    OODSpec,
    default_extra_inputs,
    extra_inputs,
)

FP32_TOLERANCE = 1e-4  # probabilities
FP16_TOLERANCE = 2e-2
FP16_MIN_TOP_AGREEMENT = 0.99
# Raw logits, embedding and ood: absolute limits, relative to max(1, largest |value|) of the call
FP32_LOGIT_TOLERANCE = 1e-4
FP16_LOGIT_TOLERANCE = 2e-2
FP32_EMBEDDING_TOLERANCE = 1e-4  # also every further embedding output
FP16_EMBEDDING_TOLERANCE = 2e-2
FP32_OOD_TOLERANCE = 1e-3
FP16_OOD_TOLERANCE = 5e-2

# per call: (extra data input -> (values (B, ...), (B,) bool: real data for the object))
RealData = list[dict[str, tuple[np.ndarray, np.ndarray]]]
# a parity group: (which modalities are present, or None without presence flags; feeds per call)
Group = tuple[str | None, list[dict[str, np.ndarray]]]


class ParityError(RuntimeError):
    """ONNX Runtime and torch disagree beyond tolerance: the export is not kept."""


@dataclass
class ParityReport:
    n_objects: int
    diffs: dict[str, float]  # per output (see the module docstring)
    tolerances: dict[str, float]
    top_class_agreement: float  # 1 for a model without probabilities
    min_top_class_agreement: float = 1.0
    per_combination: dict[str, float] = field(default_factory=dict)  # worst diff per group
    real_inputs: dict[str, int] = field(default_factory=dict)  # rows fed real extra data
    calibration: CalibrationSpec | None = None
    ood: OODSpec | None = None
    objects_from: str = "validation light curves"
    previous_graph_max_diff: float | None = None  # re-export: new graph vs the file it replaces

    @property
    def ok(self) -> bool:
        return (
            all(self.diffs[n] <= self.tolerances[n] for n in self.diffs)
            and self.top_class_agreement >= self.min_top_class_agreement
        )

    @property
    def max_abs_diff(self) -> float:
        """max |Δp|; for a model without probabilities, its largest output difference."""
        return self.diffs.get("probabilities", max(self.diffs.values(), default=0.0))

    @property
    def tolerance(self) -> float:
        return self.tolerances.get("probabilities", max(self.tolerances.values(), default=0.0))

    @property
    def max_logit_diff(self) -> float:
        return self.diffs.get("logits", 0.0)

    @property
    def logit_tolerance(self) -> float:
        return self.tolerances.get("logits", FP32_LOGIT_TOLERANCE)

    @property
    def max_embedding_diff(self) -> float | None:
        return self.diffs.get(EMBEDDING_OUTPUT)

    @property
    def max_ood_diff(self) -> float | None:
        return self.diffs.get(OOD_OUTPUT)

    @property
    def real_spectra(self) -> int:
        return self.real_inputs.get("spectrum", 0)

    @property
    def real_images(self) -> int:
        return self.real_inputs.get("image", 0)

    def __str__(self) -> str:
        parts = []
        for name, diff in self.diffs.items():
            limit = self.tolerances[name]
            what = "|Δp|" if name == "probabilities" else f"relative |Δ{_short(name)}|"
            parts.append(f"max {what} = {diff:.2e} (limit {limit:.0e})")
        text = f"{self.n_objects} {self.objects_from}: " + ", ".join(parts)
        text += f", same top class for {100 * self.top_class_agreement:.2f}%"
        if self.per_combination:
            text += f"\nper combination of present modalities: {self.per_combination}"
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


def _short(name: str) -> str:
    return "logit" if name == "logits" else name


def parity_tolerances(
    output_names: list[str], fp16: bool, uniform: float | None = None
) -> dict[str, float]:
    """The limit of each output: ``uniform`` for all when given (a family's), else the
    float32 or float16 defaults (read when called)."""
    if uniform is not None:
        return dict.fromkeys(output_names, uniform)
    defaults = (
        {
            "probabilities": FP16_TOLERANCE,
            "logits": FP16_LOGIT_TOLERANCE,
            OOD_OUTPUT: FP16_OOD_TOLERANCE,
        }
        if fp16
        else {
            "probabilities": FP32_TOLERANCE,
            "logits": FP32_LOGIT_TOLERANCE,
            OOD_OUTPUT: FP32_OOD_TOLERANCE,
        }
    )
    embedding = FP16_EMBEDDING_TOLERANCE if fp16 else FP32_EMBEDDING_TOLERANCE
    return {name: defaults.get(name, embedding) for name in output_names}


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


# extra data input -> (rows, input shape without the batch axis, seed) -> synthetic data
SYNTHETIC: dict[str, Callable[[int, list, int], np.ndarray]] = {
    "spectrum": lambda n, shape, seed: synthetic_spectra(n, int(shape[1]), seed),
    "image": lambda n, shape, seed: synthetic_images(n, int(shape[1]), seed),
}


def combinations(modalities: list[str]) -> list[tuple[str, ...]]:
    return [c for r in range(1, len(modalities) + 1) for c in itertools.combinations(modalities, r)]


def parity_feeds(
    meta: ModelMetadata, inputs: list[ModelInputs], real: RealData | None = None
) -> list[Group]:
    """The parity check's feeds for the graph ``meta`` describes (see the module docstring):
    one group, or one per combination of present modalities. ``real[k]``: real extra data
    of call k."""
    extras = extra_inputs(meta)
    flags = [
        s.name.removeprefix(PRESENCE_PREFIX) for s in extras if s.name.startswith(PRESENCE_PREFIX)
    ]
    data = [s for s in extras if not s.name.startswith(PRESENCE_PREFIX)]
    if not flags:
        return [(None, [x.as_dict() | default_extra_inputs(meta, x) for x in inputs])]
    groups: list[Group] = []
    for combo in combinations(flags):
        feeds = []
        for k, x in enumerate(inputs):
            presence = {m: np.full(len(x), m in combo) for m in flags}
            arrays = {}
            for spec in data:
                values = SYNTHETIC[spec.name](len(x), spec.shape[1:], k)
                if real is not None and spec.name in real[k]:
                    given, has = real[k][spec.name]
                    values[has] = given[has]
                arrays[spec.name] = values
            feeds.append(x.as_dict() | default_extra_inputs(meta, x, presence, arrays))
        groups.append(("+".join(combo), feeds))
    return groups


def _relative_diff(expected: np.ndarray, got: np.ndarray) -> float:
    """max |expected - got| / max(1, max |expected|)."""
    scale = max(1.0, float(np.abs(expected).max()))
    return float(np.abs(expected - got).max()) / scale


def check_parity(
    reference: torch.nn.Module,
    output_names: list[str],
    onnx_path: Path,
    groups: list[Group],
    tolerances: dict[str, float],
    min_top_class_agreement: float = 1.0,
) -> ParityReport:
    """Compare every output of ``reference`` (called with the feeds' arrays in order) with
    the ONNX file's output of the same name (see the module docstring)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    available = [o.name for o in session.get_outputs()]
    missing = [n for n in output_names if n not in available]
    if missing:
        raise ParityError(f"{onnx_path}: the exported graph has no {missing} output")
    worst = dict.fromkeys(output_names, 0.0)
    per_group: dict[str, float] = {}
    agree = n = 0
    for label, calls in groups:
        group_worst = 0.0
        for feeds in calls:
            got = dict(zip(output_names, session.run(output_names, feeds), strict=True))
            again = session.run(output_names, feeds)
            if not all(np.array_equal(got[k], v) for k, v in zip(output_names, again, strict=True)):
                raise ParityError(f"{onnx_path}: two runs of the same input differ")
            with torch.no_grad():
                outputs = reference(*(torch.from_numpy(v) for v in feeds.values()))
            expected = {k: t.numpy() for k, t in zip(output_names, outputs, strict=True)}
            for name in output_names:
                if name == "probabilities":
                    diff = float(np.abs(expected[name] - got[name]).max())
                else:
                    diff = _relative_diff(expected[name], got[name])
                worst[name] = max(worst[name], diff)
                group_worst = max(group_worst, diff)
            rows = len(next(iter(feeds.values())))
            if "probabilities" in output_names:
                top = expected["probabilities"].argmax(1) == got["probabilities"].argmax(1)
                agree += int(top.sum())
            else:
                agree += rows
            n += rows
        if label is not None:
            per_group[label] = group_worst
    return ParityReport(
        n_objects=n // max(len(groups), 1),
        diffs=worst,
        tolerances=tolerances,
        top_class_agreement=agree / max(n, 1),
        min_top_class_agreement=min_top_class_agreement,
        per_combination=per_group,
    )
