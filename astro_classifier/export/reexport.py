"""Re-export a shipped model in the current graph form, from the .onnx file alone.

An exported model is the only artefact that ships; its run directory may be gone. When the
export form improves (a fused kernel, less work in the graph) the shipped files should get
the improvement without retraining: :func:`reexport_onnx` reads the weights back from the
graph (:mod:`astro_classifier.training.warm_start`; families with ``onnx_warm_start``: ATAT)
and the tables of its OOD score where the graph computes one (initialisers ``ood.<name>``,
:func:`gaussian_ood_from_onnx`), traces them again in the family's export form, copies the
model's metadata (labels, preprocessing tables, calibration, OOD rule and threshold, metrics:
nothing about the model changes; the list of outputs is the new graph's) and writes the new
file through the one writer (:func:`astro_classifier.export.writer.write_onnx`) only if

- the new graph matches torch on the given light curves (the export parity check), and
- the new graph matches the old graph (ONNX Runtime, both) within the fp32 tolerance, with
  the same top class for every object (and, where the old graph has one, the same ``ood``
  within the OOD tolerance).

A file without OOD tables (exported before them) gets the ``embedding`` output and keeps its
energy score: fitting the Gaussians needs the run's training data (`astroclf export RUN_DIR`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from astro_classifier import __version__
from astro_classifier.core.errors import ModelError
from astro_classifier.export.graph import (
    GAUSSIAN_BUFFERS,
    ExportGraph,
    GaussianOOD,
    graph_form,
    to_float16,
)
from astro_classifier.export.parity import (
    FP16_MIN_TOP_AGREEMENT,
    FP16_OOD_TOLERANCE,
    FP16_TOLERANCE,
    FP32_OOD_TOLERANCE,
    FP32_TOLERANCE,
    ParityError,
    ParityReport,
    check_parity,
    parity_feeds,
    parity_tolerances,
)
from astro_classifier.export.writer import write_onnx
from astro_classifier.families.registry import create_model, family_of
from astro_classifier.features.preprocess import ModelInputs, keep_model_bands, tabular_features
from astro_classifier.formats.registry import read_light_curves
from astro_classifier.inference.classify import bucketed_inputs
from astro_classifier.inference.model import (
    GRAPH_OOD_SCORES,
    LoadedModel,
    ModelMetadata,
    read_metadata,
)
from astro_classifier.training.warm_start import load_onnx_weights

# Heads the serving graph does not compute: their weights are not in the file, and the
# re-exported graph does not use them either.
UNUSED_HEADS = ("lc_head.", "tab_head.")


def gaussian_ood_from_onnx(src: Path, meta: ModelMetadata) -> GaussianOOD | None:
    """The OOD score module of an exported graph (its ``ood.<name>`` initialisers), or None
    when the model's OOD score is not computed in the graph."""
    if meta.ood is None or meta.ood.score not in GRAPH_OOD_SCORES:
        return None
    proto = onnx.load(str(src))
    prefix = "ood."
    buffers = {
        init.name.removeprefix(prefix): numpy_helper.to_array(init)
        for init in proto.graph.initializer
        if init.name.startswith(prefix)
    }
    missing = [n for n in GAUSSIAN_BUFFERS[meta.ood.score] if n not in buffers]
    if missing:
        raise ModelError(
            f"{src}: the metadata asks for the {meta.ood.score} OOD score, but the graph lacks "
            f"its tables {[prefix + n for n in missing]}"
        )
    return GaussianOOD(meta.ood.score, buffers)


def reexport_onnx(
    src: Path,
    out: Path,
    inputs: list[ModelInputs],
    fp16: bool = False,
    form: bool | str = True,
) -> ParityReport:
    """Trace ``src``'s weights again in the current export form; write ``out`` when both
    parity checks pass (raise :class:`ParityError` and write nothing otherwise).

    ``fp16``: write the float16 form instead (the companion that CUDA serving selects, see
    :func:`astro_classifier.inference.model.fp16_companion`), checked with the float16
    tolerances (|dp| <= 2e-2, the same top class for >= 99 % of the objects).
    ``form``: the float32 export form to trace, True for the family's default, or a form
    the family names (ATAT's ``DENSE_FORM``: the CUDA companion, see
    :func:`astro_classifier.inference.model.cuda_companion`), recorded as the metadata's
    ``graph_form``; checked with the float32 tolerances like any re-export."""
    meta = read_metadata(src)
    if meta.precision != "fp32":
        raise ModelError(f"{src}: a {meta.precision} model; re-export its fp32 file")
    if not inputs:
        raise ModelError(f"{src}: no light curves for the parity check")
    family = family_of(meta.architecture)
    if not family.onnx_warm_start:
        raise ModelError(
            f"{src}: a {meta.architecture} model; its weights cannot be read back from the "
            "graph: export its run directory instead"
        )
    model = create_model(meta.architecture, **meta.architecture_config).eval()
    fresh = [k for k in load_onnx_weights(model, src) if not k.startswith(UNUSED_HEADS)]
    if fresh:
        raise ParityError(f"{src}: weights not found in the graph: {fresh}; {out} not written")
    temperature = meta.calibration.temperature if meta.calibration else 1.0
    graph = ExportGraph(model, family, temperature, gaussian_ood_from_onnx(src, meta)).eval()
    output_names = graph.output_names
    kept = meta.model_copy(
        update={
            "precision": "fp16" if fp16 else "fp32",
            "graph_form": graph_form(fp16, form),
            "package_version": __version__,
            "outputs": graph.output_specs(),
        }
    )
    example = inputs[0].take(np.arange(min(2, len(inputs[0]))))
    min_top = FP16_MIN_TOP_AGREEMENT if fp16 else 1.0
    tolerances = parity_tolerances(output_names, fp16, family.parity_tolerance)

    def check(path: Path) -> ParityReport:
        report = check_parity(
            graph, output_names, path, parity_feeds(kept, inputs), tolerances, min_top
        )
        if not report.ok:
            raise ParityError(f"ONNX Runtime and torch disagree: {report}; {out} not written")
        old, new = LoadedModel.load(src, provider="cpu"), LoadedModel.load(path, provider="cpu")
        worst, worst_ood, agree, n = 0.0, 0.0, 0, 0
        for x in inputs:
            a, b = old.predict(x), new.predict(x)
            worst = max(worst, float(np.abs(a.probabilities - b.probabilities).max()))
            if a.ood is not None and b.ood is not None:
                scale = max(1.0, float(np.abs(a.ood).max()))
                worst_ood = max(worst_ood, float(np.abs(a.ood - b.ood).max()) / scale)
            top_a, top_b = a.probabilities.argmax(1), b.probabilities.argmax(1)
            agree, n = agree + int((top_a == top_b).sum()), n + len(x)
        tolerance = FP16_TOLERANCE if fp16 else FP32_TOLERANCE
        ood_tolerance = FP16_OOD_TOLERANCE if fp16 else FP32_OOD_TOLERANCE
        if worst > tolerance or worst_ood > ood_tolerance or agree < min_top * n:
            raise ParityError(
                f"{src} and its re-export disagree: max |dp| {worst:.1e} "
                f"(limit {tolerance:.0e}), max relative |Δood| {worst_ood:.1e} (limit "
                f"{ood_tolerance:.0e}), same top class for {agree} of {n}; {out} not written"
            )
        report.previous_graph_max_diff = worst
        report.objects_from = "light curves"
        return report

    # float16: the training form's decomposed attention, which the float16 converter knows
    return write_onnx(
        graph if fp16 else graph.traced(form),
        example.as_dict(),
        output_names,
        graph.dynamic_axes(),
        out,
        kept.to_props(),
        check,
        convert=to_float16 if fp16 else None,
    )


def parity_inputs(
    src: Path,
    paths: list[Path],
    limit: int,
    metadata: Path | None = None,
    batch_size: int = 256,
) -> list[ModelInputs]:
    """Up to ``limit`` light curves of ``paths`` (any supported format; ``metadata``: their
    object table), preprocessed for the model in ``src`` and padded to its serving buckets:
    the re-export's parity check data."""
    meta = read_metadata(src)
    spec = meta.preprocessing
    batch = read_light_curves(paths, metadata=metadata)
    if len(batch) > limit:  # a spread over the file rather than its first objects
        batch = batch.select(np.linspace(0, len(batch) - 1, limit).astype(int))
    in_bands, _ = keep_model_bands(batch, spec)
    tab = tabular_features(in_bands, spec)
    return [x for _, x in bucketed_inputs(in_bands, spec, tab, meta.length_buckets, batch_size)]
