"""Re-export a shipped ATAT model in the current graph form, from the .onnx file alone.

An exported model is the only artefact that ships; its run directory may be gone. When the
export form improves (a fused kernel, less work in the graph) the shipped files should get
the improvement without retraining: :func:`reexport_onnx` reads the weights back from the
graph (:mod:`astro_classifier.training.warm_start`), traces them again with the current
export code, copies the model's metadata (labels, preprocessing tables, calibration, OOD
threshold, metrics: nothing about the model changes) and writes the new file only if

- the new graph matches torch on the given light curves (the export parity check), and
- the new graph matches the old graph (ONNX Runtime, both) within the fp32 tolerance, with
  the same top class for every object.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx

from astro_classifier import __version__
from astro_classifier.core.errors import ModelError
from astro_classifier.export.onnx_export import (
    FP16_MIN_TOP_AGREEMENT,
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    OUTPUT_NAMES,
    CalibratedModel,
    ParityError,
    ParityReport,
    atat_graph_axes,
    check_parity,
    to_float16,
    trace_to_onnx,
)
from astro_classifier.features.preprocess import ModelInputs, keep_model_bands, tabular_features
from astro_classifier.formats.registry import read_light_curves
from astro_classifier.inference.classify import bucketed_inputs
from astro_classifier.inference.model import LoadedModel, read_metadata
from astro_classifier.training.registry import create_model
from astro_classifier.training.warm_start import load_onnx_weights

# Heads the serving graph does not compute: their weights are not in the file, and the
# re-exported graph does not use them either.
UNUSED_HEADS = ("lc_head.", "tab_head.")


def reexport_onnx(
    src: Path, out: Path, inputs: list[ModelInputs], fp16: bool = False
) -> ParityReport:
    """Trace ``src``'s weights again in the current export form; write ``out`` when both
    parity checks pass (raise :class:`ParityError` and write nothing otherwise).

    ``fp16``: write the float16 form instead (the companion that CUDA serving selects, see
    :func:`astro_classifier.inference.model.fp16_companion`), checked with the float16
    tolerances (|dp| <= 2e-2, the same top class for >= 99 % of the objects)."""
    meta = read_metadata(src)
    if meta.precision != "fp32":
        raise ModelError(f"{src}: a {meta.precision} model; re-export its fp32 file")
    if not inputs:
        raise ModelError(f"{src}: no light curves for the parity check")
    model = create_model(meta.architecture, **meta.architecture_config).eval()
    fresh = [k for k in load_onnx_weights(model, src) if not k.startswith(UNUSED_HEADS)]
    if fresh:
        raise ParityError(f"{src}: weights not found in the graph: {fresh}; {out} not written")
    temperature = meta.calibration.temperature if meta.calibration else 1.0
    calibrated = CalibratedModel(model, temperature).eval()

    names, dynamic = atat_graph_axes()
    example = inputs[0].take(np.arange(min(2, len(inputs[0]))))
    # float16: the decomposed attention, which the float16 converter knows
    proto = trace_to_onnx(
        calibrated, example.as_dict(), names, OUTPUT_NAMES, dynamic, fused_attention=not fp16
    )
    if fp16:
        proto = to_float16(proto)
    kept = meta.model_copy(
        update={"precision": "fp16" if fp16 else "fp32", "package_version": __version__}
    )
    for key, value in kept.to_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "astroclf"
    onnx.checker.check_model(proto, full_check=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        onnx.save(proto, str(tmp_path))
        report = check_parity(calibrated, tmp_path, inputs, fp16=fp16)
        min_top = FP16_MIN_TOP_AGREEMENT if fp16 else 1.0
        tolerance = FP16_TOLERANCE if fp16 else FP32_TOLERANCE
        if not report.ok or report.top_class_agreement < min_top:
            raise ParityError(f"ONNX Runtime and torch disagree: {report}; {out} not written")
        old, new = LoadedModel.load(src, provider="cpu"), LoadedModel.load(tmp_path, provider="cpu")
        worst, agree, n = 0.0, 0, 0
        for x in inputs:
            a, b = old.predict(x).probabilities, new.predict(x).probabilities
            worst = max(worst, float(np.abs(a - b).max()))
            agree, n = agree + int((a.argmax(1) == b.argmax(1)).sum()), n + len(x)
        if worst > tolerance or agree < min_top * n:
            raise ParityError(
                f"{src} and its re-export disagree: max |dp| {worst:.1e} "
                f"(limit {tolerance:.0e}), same top class for {agree} of {n}; {out} not written"
            )
        report.previous_graph_max_diff = worst
        report.objects_from = "light curves"
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp_path), out)
    return report


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
