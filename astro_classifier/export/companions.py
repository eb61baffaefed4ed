"""Write the companion graphs of the shipped models, each after its parity checks.

A companion is the same model traced in another form, served instead of the main file where
it runs better (:func:`astro_classifier.inference.model.select_graph`):

- ``cuda/<name>.onnx``: float32, the export form without data-dependent shapes
  (:data:`~astro_classifier.families.atat.DENSE_FORM`, metadata ``graph_form`` "dense"),
  which CUDA serving selects and CUDA graphs need;
- ``fp16/<name>.onnx``: float16 (traced in the training form), which CUDA serving selects
  first, written only when it holds the float16 parity budget.

Both are re-exports of the main file (:func:`~astro_classifier.export.reexport.reexport_onnx`:
the weights read back from the graph, the metadata copied), so they carry its labels,
calibration, OOD tables and threshold, and each is written only if it matches torch and the
main graph on real light curves of the model's survey: every ZTF alert of the shared data for
``atat-ztf``, a spread of PLAsTiCC training light curves for ``atat-lsst``.

    python -m astro_classifier.export.companions [--models atat-ztf atat-lsst] [--fp16]

(``astroclf export`` has no option for the dense form yet; this module is its entry point.)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from astro_classifier.export.parity import ParityError, ParityReport
from astro_classifier.export.reexport import parity_inputs, reexport_onnx
from astro_classifier.features.preprocess import ModelInputs
from astro_classifier.inference.model import SHIPPED_MODELS_DIR, resolve_model_path

DENSE_FORM = "dense"  # ATAT's DENSE_FORM (families.atat), without importing torch here
PARITY_OBJECTS = 2000  # light curves per parity check, at most


def shared_data() -> Path:
    root = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("ASTROCLF_SHARED_DATA", root.parent / "shared" / "data"))


def survey_inputs(model: str, limit: int = PARITY_OBJECTS) -> list[ModelInputs]:
    """Real light curves of the model's survey, padded to its buckets: the parity data."""
    src = resolve_model_path(model)
    data = shared_data()
    if "ztf" in model:
        paths = sorted((data / "alerts" / "ztf").rglob("*.avro"))
        return parity_inputs(src, paths, limit)
    folder = data / "lightcurves" / "plasticc"
    return parity_inputs(
        src,
        [folder / "plasticc_train_lightcurves.csv.gz"],
        limit,
        metadata=folder / "plasticc_train_metadata.csv.gz",
    )


def write_companion(
    model: str, kind: str, inputs: list[ModelInputs], folder: Path = SHIPPED_MODELS_DIR
) -> ParityReport:
    """Write ``folder/<kind>/<model>.onnx`` (``kind``: "cuda" or "fp16") from the main file
    of ``model``; raise :class:`ParityError`, writing nothing, when a check fails."""
    src = resolve_model_path(model)
    out = folder / kind / src.name
    if kind == "cuda":
        return reexport_onnx(src, out, inputs, form=DENSE_FORM)
    if kind == "fp16":
        return reexport_onnx(src, out, inputs, fp16=True)
    raise ValueError(f"unknown companion kind {kind!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["atat-ztf", "atat-lsst"])
    parser.add_argument("--fp16", action="store_true", help="also try the float16 companion")
    parser.add_argument("--no-cuda", action="store_true", help="skip the dense companion")
    parser.add_argument("--objects", type=int, default=PARITY_OBJECTS)
    parser.add_argument("--folder", type=Path, default=SHIPPED_MODELS_DIR)
    args = parser.parse_args(argv)
    kinds = ([] if args.no_cuda else ["cuda"]) + (["fp16"] if args.fp16 else [])
    failed = False
    for model in args.models:
        inputs = survey_inputs(model, args.objects)
        n = sum(len(x) for x in inputs)
        for kind in kinds:
            try:
                report = write_companion(model, kind, inputs, args.folder)
            except ParityError as exc:
                failed = failed or kind == "cuda"  # a float16 miss is an answer, not a fault
                print(f"{model} {kind}: not written: {exc}")
                continue
            print(f"{model} {kind}: {args.folder / kind / (model + '.onnx')} on {n} objects: "
                  f"{report}; max |dp| vs the main graph {report.previous_graph_max_diff:.1e}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
