"""Does `export_run` still write the shipped models? Re-export their runs, compare the files.

Each shipped ATAT model is exported again from its run directory with the current
:func:`astro_classifier.export.onnx_export.export_run` (to a temporary folder) and the new file
classifies, through :func:`astro_classifier.inference.classify.classify` (the serving path),
the same objects as the reference file:

- ``runs/atat-lsst-0.3.0`` against ``runs/atat-lsst-0.3.0/atat-lsst.onnx`` (its export);
- ``runs/atat-ztf-0.3.0b`` against ``astro_classifier/models/atat-ztf.onnx`` (shipped);

on two sets: the run's hold-out objects (its ``dataset.h5`` rows of the run's ``split.holdout``:
PLAsTiCC fold 0 for atat-lsst; fold 0 of PLAsTiCC at ZTF distances and of the real sources for
atat-ztf), and every ZTF alert of the shared data (``alerts/ztf/**/*.avro``). Reported per
model and set: objects, max |Δp| (limit 1e-6), max |Δ ood_score| (limit 1e-5), objects whose
top class or abstention differ (limit 0), and the calibration temperature and OOD threshold
of both files. Exit status 1 when a limit is exceeded.

With ``--companions``, the shipped companions are checked the same way: each is written again
by :func:`astro_classifier.export.companions.write_companion` (a re-export of the shipped main
file: ``cuda/`` in the dense form, ``fp16/`` in float16) and compared with the shipped
companion on the same two sets (same limits).

Usage::

    python -m benchmarks.export_identity [--models atat-lsst atat-ztf] [--companions] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from astro_classifier.core.lightcurve import LightCurveBatch
from astro_classifier.export.onnx_export import export_run
from astro_classifier.formats.ztf import read_ztf_avro
from astro_classifier.inference.classify import classify
from astro_classifier.inference.model import LoadedModel
from astro_classifier.training.dataset import TrainingDataset
from astro_classifier.training.record import load_record
from benchmarks.baseline_features import shared_data_dir

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RUNS = {
    "atat-lsst": (
        PROJECT_ROOT / "runs" / "atat-lsst-0.3.0",
        PROJECT_ROOT / "runs" / "atat-lsst-0.3.0" / "atat-lsst.onnx",
    ),
    "atat-ztf": (
        PROJECT_ROOT / "runs" / "atat-ztf-0.3.0b",
        PROJECT_ROOT / "astro_classifier" / "models" / "atat-ztf.onnx",
    ),
}
MAX_DP = 1e-6
MAX_DOOD = 1e-5


def holdout_objects(run_dir: Path) -> LightCurveBatch:
    """The run's hold-out objects as its dataset holds them (whole light curves)."""
    holdout = np.asarray(load_record(run_dir).split.holdout, np.int64)
    return TrainingDataset.load(run_dir / "dataset.h5").batch.select(holdout)


def ztf_alerts(data: Path) -> LightCurveBatch:
    return read_ztf_avro(sorted((data / "alerts" / "ztf").rglob("*.avro")))


def compare(batch: LightCurveBatch, reference: LoadedModel, new: LoadedModel) -> dict[str, Any]:
    a = classify(batch, reference, n_jobs=2)
    b = classify(batch, new, n_jobs=2)
    assert np.array_equal(a.rows, b.rows) and a.skipped == b.skipped
    dp = np.abs(a.probabilities.astype(np.float64) - b.probabilities).max(initial=0.0)
    dood = np.abs(a.ood_score.astype(np.float64) - b.ood_score).max(initial=0.0)
    return {
        "objects": int(len(a.rows)),
        "skipped": dict(a.skipped),
        "max_abs_dp": float(dp),
        "max_abs_dood": float(dood),
        "top_class_differs": int((a.probabilities.argmax(1) != b.probabilities.argmax(1)).sum()),
        "abstain_differs": int((a.abstain != b.abstain).sum()),
    }


def run(models: list[str], data: Path, workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in models:
        run_dir, reference_path = RUNS[name]
        started = time.perf_counter()
        path = workdir / f"{name}.onnx"
        report = export_run(run_dir, path)
        seconds = time.perf_counter() - started
        reference = LoadedModel.load(reference_path, provider="cpu")
        new = LoadedModel.load(path, provider="cpu")
        ref_meta, new_meta = reference.metadata, new.metadata
        out[name] = {
            "run": str(run_dir.relative_to(PROJECT_ROOT)),
            "reference": str(reference_path.relative_to(PROJECT_ROOT)),
            "export_seconds": round(seconds, 1),
            "parity": str(report),
            "temperature": [ref_meta.calibration.temperature, new_meta.calibration.temperature],
            "ood_threshold": [ref_meta.ood.threshold, new_meta.ood.threshold],
            "metadata_differs": sorted(
                key
                for key, value in ref_meta.model_dump(mode="json").items()
                if key not in ("created_at", "package_version")
                and new_meta.model_dump(mode="json").get(key) != value
            ),
            "sets": {
                "run hold-out": compare(holdout_objects(run_dir), reference, new),
                "ZTF alerts": compare(ztf_alerts(data), reference, new),
            },
        }
    return out


def run_companions(models: list[str], data: Path, workdir: Path) -> dict[str, Any]:
    """Each shipped companion of ``models`` written again and compared with the shipped one."""
    from astro_classifier.export.companions import survey_inputs, write_companion
    from astro_classifier.inference.model import cuda_companion, fp16_companion, resolve_model_path

    out: dict[str, Any] = {}
    for name in models:
        main = resolve_model_path(name)
        inputs = survey_inputs(name)
        for kind, shipped in (("cuda", cuda_companion(main)), ("fp16", fp16_companion(main))):
            if shipped is None:
                continue
            started = time.perf_counter()
            report = write_companion(name, kind, inputs, workdir)
            seconds = time.perf_counter() - started
            reference = LoadedModel.load(shipped, provider="cpu")
            new = LoadedModel.load(workdir / kind / main.name, provider="cpu")
            run_dir = RUNS[name][0]
            out[f"{name} {kind}"] = {
                "run": str(main.relative_to(PROJECT_ROOT)),  # what the companion re-exports
                "holdout_of": str(run_dir.relative_to(PROJECT_ROOT)),
                "reference": str(shipped.relative_to(PROJECT_ROOT)),
                "export_seconds": round(seconds, 1),
                "parity": str(report),
                "temperature": [m.metadata.calibration.temperature for m in (reference, new)],
                "ood_threshold": [m.metadata.ood.threshold for m in (reference, new)],
                "metadata_differs": sorted(
                    key
                    for key, value in reference.metadata.model_dump(mode="json").items()
                    if key not in ("created_at", "package_version")
                    and new.metadata.model_dump(mode="json").get(key) != value
                ),
                "sets": {
                    "run hold-out": compare(holdout_objects(run_dir), reference, new),
                    "ZTF alerts": compare(ztf_alerts(data), reference, new),
                },
            }
    return out


def failures(result: dict[str, Any]) -> list[str]:
    bad = []
    for name, r in result.items():
        for set_name, s in r["sets"].items():
            if s["max_abs_dp"] > MAX_DP or s["max_abs_dood"] > MAX_DOOD:
                bad.append(f"{name} / {set_name}: |dp| {s['max_abs_dp']:.1e}, |dood| "
                           f"{s['max_abs_dood']:.1e}")  # fmt: skip
            if s["top_class_differs"] or s["abstain_differs"]:
                bad.append(f"{name} / {set_name}: decisions differ")
        if r["metadata_differs"]:
            bad.append(f"{name}: metadata differs in {r['metadata_differs']}")
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    parser.add_argument(
        "--companions",
        action="store_true",
        help="check the shipped companions (models/cuda, models/fp16) instead of the main files",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.companions:
            result = run_companions(args.models, shared_data_dir(), Path(tmp))
        else:
            result = run(args.models, shared_data_dir(), Path(tmp))
    for name, r in result.items():
        print(
            f"{name}: {r['run']} re-exported in {r['export_seconds']} s, against {r['reference']}"
        )
        print(f"  temperature {r['temperature'][0]!r} -> {r['temperature'][1]!r}; OOD threshold "
              f"{r['ood_threshold'][0]!r} -> {r['ood_threshold'][1]!r}; metadata differs in "
              f"{r['metadata_differs'] or 'nothing'} (created_at, package_version aside)")  # fmt: skip
        for set_name, s in r["sets"].items():
            print(f"  {set_name}: {s['objects']} objects, max |dp| {s['max_abs_dp']:.2e}, "
                  f"max |d ood_score| {s['max_abs_dood']:.2e}, top class differs "
                  f"{s['top_class_differs']}, abstain differs {s['abstain_differs']}")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    bad = failures(result)
    print("OK: identical within limits" if not bad else "FAILED:\n  " + "\n  ".join(bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
