"""Real-sky evaluation: the shipped models and the feature baseline on labelled real data.

Every labelled real set of the shared data folder is read through the project's readers and
classified with ``astro_classifier.inference.classify.classify`` (the serving path):

| set | reader | models |
|---|---|---|
| ``ztf-bts-snia`` | ``read_ztf_bts`` (ZTF g/R magnitudes) | atat-ztf |
| ``manytde`` | ``read_manytde`` (ZTF g/r forced photometry) | atat-ztf |
| ``ztf-bts-antares`` | ``read_antares_bts`` (ZTF g/R magnitudes, every BTS type) | atat-ztf |
| ``tdss-quasars`` | ``read_tdss_quasars`` as difference flux (SDSS + PS1 g/r) | atat-ztf |
| ``alerce-examples`` | ``read_alerce_examples`` (ZTF detections + limits) | atat-ztf |
| ``slsne`` | ``read_slsne`` (u..y from many telescopes) | atat-ztf, atat-lsst |
| ``osc-sne`` | ``read_osc`` (u..y) | atat-ztf, atat-lsst |
| ``eros1`` | ``read_eros1`` (EROS b/r as g/r) | atat-ztf, atat-lsst |
| ``plasticc-holdout`` | atat-lsst's held-out PLAsTiCC objects (its config's grouped split) | atat-lsst |
| ``plasticc-holdout-fainter`` | the same objects moved to higher redshift (fresh seed) | atat-lsst |
| ``plasticc-holdout-ztf`` | atat-ztf's held-out PLAsTiCC objects at ZTF distance and depth | atat-ztf |

Scoring, per set and model:

- a true label is mapped to a model class by :func:`model_class_of` (itself, ``SLSN`` ->
  ``SLSN-I``, ``SNIIn``/``SNIIb`` -> ``SNII``: PLAsTiCC's SNII class simulates II-P/L, IIn and
  IIb); objects whose class the model lacks (``SN`` of ambiguous type, ``Cepheid``,
  ``SLSN-II``) count for the broad class only;
- ``accuracy`` and per-class ``recall`` (and their mean, ``macro_recall``) on the objects
  with a model class; ``broad_accuracy``: model broad class = argmax of the fine
  probabilities summed per :func:`taxonomy.broad_class_of`, truth = broad class of the label;
- ``ece``: expected calibration error of the top label (15 equal-width bins of the top
  probability, on the objects with a model class); ``broad_ece`` likewise for the broad kind;
- ``predicted``: histogram of the predicted fine classes over all classified objects;
- ``abstain_rate`` (the model's own ``abstain`` flags: unlike its training data, too few
  points, known solar-system object), and ``accuracy_kept`` / ``broad_accuracy_kept`` on the
  objects it did not abstain on.

The feature baseline (histogram gradient boosting, ``baseline_features.HGB_PARAMS``) uses the
model's own tabular inputs (``tabular_features`` with the model's preprocessing spec: its
bands, its metadata columns) and is trained on exactly the objects the model was trained on
(its ``configs/<name>.yaml``: every source, the real-sky train splits, the augmented copies,
``grouped_splits``' training rows), then scored on exactly the objects the model classified.

For ``atat-lsst``, whose tabular inputs include PLAsTiCC metadata, real objects get
``mwebv`` = E(B-V) and ``hostgal_photoz`` = the catalogue redshift where the reader has them,
``distmod`` from that redshift (flat LCDM, H0 70, Om 0.3), ``ddf`` 0, and NaN otherwise.

Usage::

    python -m benchmarks.real_sky [--split test] [--model NAME_OR_PATH ...] \
        [--sets slsne manytde ...] [--max-objects N] [--out benchmarks/results/real_sky.json]

``--split test`` keeps only the objects of ``real_sky_split`` (object-level, by id hash;
PLAsTiCC fold 0 is a hold-out already). ``--model`` replaces the default models of every set.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from astro_classifier.catalogs.alerce_examples import read_alerce_examples
from astro_classifier.catalogs.antares_bts import read_antares_bts
from astro_classifier.catalogs.eros1 import read_eros1
from astro_classifier.catalogs.manytde import read_manytde
from astro_classifier.catalogs.osc import read_osc
from astro_classifier.catalogs.slsne import read_slsne
from astro_classifier.catalogs.splits import real_sky_split
from astro_classifier.catalogs.tdss import read_tdss_quasars
from astro_classifier.catalogs.ztf_bts import read_ztf_bts
from astro_classifier.core.lightcurve import LightCurveBatch
from astro_classifier.core.taxonomy import BROAD_CLASSES, broad_class_of
from astro_classifier.evaluation.metrics import expected_calibration_error
from astro_classifier.features.preprocess import keep_model_bands, tabular_features
from astro_classifier.features.render import difference_flux
from astro_classifier.inference.classify import classify
from astro_classifier.inference.model import LoadedModel
from astro_classifier.training.augment import AugmentSpec, augment
from astro_classifier.training.config import TrainConfig
from astro_classifier.training.sources import grouped_splits, read_training_objects
from benchmarks.baseline_features import (
    finite_or_nan,
    fit_feature_baseline,
    machine_info,
    predict_proba_all_classes,
    shared_data_dir,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = PROJECT_ROOT / "benchmarks" / "results" / "real_sky.json"
ECE_BINS = 15
SEED = 0
# True labels of other catalogues -> the class of a model that covers them (first alias the
# model has wins): PLAsTiCC-style models say SLSN-I and Mira, the ZTF model SLSN and LPV.
MODEL_CLASS_ALIASES: dict[str, tuple[str, ...]] = {
    "SLSN": ("SLSN-I",),
    "SLSN-I": ("SLSN",),
    "SLSN-II": ("SLSN",),
    "SNIIn": ("SNII",),
    "SNIIb": ("SNII",),
    "SNIa-91bg": ("SNIa",),
    "SNIax": ("SNIa",),
    "Mira": ("LPV",),
    "LPV": ("Mira",),
    "QSO": ("AGN",),
}
CONFIGS = {
    "atat-ztf": PROJECT_ROOT / "configs" / "atat_ztf.yaml",
    "atat-lsst": PROJECT_ROOT / "configs" / "atat_lsst.yaml",
}
FAINTER_SEED = 2026


@dataclass(frozen=True)
class RealSet:
    name: str
    what: str
    read: Callable[[Path], LightCurveBatch]
    models: tuple[str, ...]


def training_config(model_name: str, data: Path) -> TrainConfig:
    """The config a shipped model was trained with (its ``configs/<name>.yaml``)."""
    os.environ["ASTROCLF_SHARED_DATA"] = str(data)
    return TrainConfig.from_yaml(CONFIGS[model_name])


def _holdout(model_name: str, data: Path, originals_only: bool) -> LightCurveBatch:
    """The PLAsTiCC objects a model's training run held out (grouped_splits' hold-out)."""
    cfg = training_config(model_name, data)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"extra_sources": []})})
    objects = read_training_objects(cfg, Console(quiet=True))
    _, _, holdout = grouped_splits(objects, cfg)
    if originals_only:
        holdout = holdout[objects.metadata["augment_copy"][holdout] == 0]
    return objects.select(holdout)


def _plasticc_holdout_fainter(data: Path) -> LightCurveBatch:
    """atat-lsst's hold-out objects moved to higher redshift once more (a fresh seed): the
    PLAsTiCC training -> test shift, on objects the model never saw."""
    originals = _holdout("atat-lsst", data, originals_only=True)
    spec = AugmentSpec(target="fainter", copies=1, keep_original=False, seed=FAINTER_SEED)
    return augment(originals, spec)


SETS: tuple[RealSet, ...] = (
    RealSet(
        "ztf-bts-snia",
        "ZTF BTS SN Ia, g/R magnitudes",
        lambda d: read_ztf_bts(d / "lightcurves" / "ztf-bts-snia"),
        ("atat-ztf",),
    ),
    RealSet(
        "manytde",
        "manyTDE, ZTF g/r forced photometry",
        lambda d: read_manytde(d / "lightcurves" / "manytde"),
        ("atat-ztf",),
    ),
    RealSet(
        "alerce-examples",
        "ALeRCE SNe, ZTF detections + limits",
        lambda d: read_alerce_examples(d / "lightcurves" / "alerce-examples"),
        ("atat-ztf",),
    ),
    RealSet(
        "ztf-bts-antares",
        "BTS transients of every type, ANTARES alert light curves (g/R mags)",
        lambda d: read_antares_bts(d / "lightcurves" / "ztf-bts-antares"),
        ("atat-ztf",),
    ),
    RealSet(
        "tdss-quasars",
        "TDSS quasars, SDSS + PS1 g/r, as difference flux",
        lambda d: difference_flux(read_tdss_quasars(d / "lightcurves" / "tdss-quasars")),
        ("atat-ztf",),
    ),
    RealSet(
        "slsne",
        "SLSN-I catalogue, u..y",
        lambda d: read_slsne(d / "lightcurves" / "slsne"),
        ("atat-ztf", "atat-lsst"),
    ),
    RealSet(
        "osc-sne",
        "Open Supernova Catalog, u..y",
        lambda d: read_osc(d / "multimodal" / "osc-sne"),
        ("atat-ztf", "atat-lsst"),
    ),
    RealSet(
        "eros1",
        "EROS-1 LMC variables, b/r as g/r",
        lambda d: read_eros1(
            d / "lightcurves" / "eros1" / "train.csv",
            d / "lightcurves" / "eros1" / "train_varlength_features.csv.gz",
        ),
        ("atat-ztf", "atat-lsst"),
    ),
    RealSet(
        "plasticc-holdout",
        "PLAsTiCC training set, atat-lsst's hold-out (simulation, reference)",
        lambda d: _holdout("atat-lsst", d, originals_only=True),
        ("atat-lsst",),
    ),
    RealSet(
        "plasticc-holdout-fainter",
        "the same objects at higher redshift, same depth (test-set-like shift)",
        _plasticc_holdout_fainter,
        ("atat-lsst",),
    ),
    RealSet(
        "plasticc-holdout-ztf",
        "PLAsTiCC objects atat-ztf held out, at ZTF distances and depth",
        lambda d: _holdout("atat-ztf", d, originals_only=False),
        ("atat-ztf",),
    ),
)


# -- scoring -------------------------------------------------------------------------------
def model_class_of(label: str, model_labels: list[str]) -> str | None:
    """The model class a true label is scored against, or None when the model lacks it."""
    for candidate in (label, *MODEL_CLASS_ALIASES.get(label, ())):
        if candidate in model_labels:
            return candidate
    return None


def _ece(proba: np.ndarray, y: np.ndarray) -> float | None:
    return expected_calibration_error(proba, y, ECE_BINS) if len(y) else None


def score(
    labels: np.ndarray,
    proba: np.ndarray,
    model_labels: list[str],
    abstain: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics of one model (or baseline) on one set; see the module docstring.

    With ``abstain`` (the model's own flags), also the abstain rate and the accuracies on
    the objects kept."""
    model_labels = list(model_labels)
    top = proba.argmax(axis=1)
    confidence = proba.max(axis=1)
    predicted = np.asarray(model_labels)[top]
    mapped = [model_class_of(str(lab), model_labels) for lab in labels]
    fine = np.array([m is not None for m in mapped], dtype=bool)
    truth = np.array([m if m is not None else "" for m in mapped], dtype=object)
    correct = fine & (predicted == truth)
    recall = {
        c: {"n": int((truth == c).sum()), "recall": float(correct[truth == c].mean())}
        for c in sorted(set(truth[fine].tolist()))
    }

    broad_names = list(BROAD_CLASSES)
    broad_of_model = np.array([broad_names.index(broad_class_of(c)) for c in model_labels])
    broad_proba = np.stack(
        [proba[:, broad_of_model == k].sum(axis=1) for k in range(len(broad_names))], axis=1
    )
    broad_true = [broad_class_of(str(lab)) for lab in labels]
    has_broad = np.array([b is not None for b in broad_true], dtype=bool)
    broad_pred = np.asarray(broad_names)[broad_proba.argmax(axis=1)]
    broad_correct = has_broad & (broad_pred == np.array([b or "" for b in broad_true]))
    return {
        "n": int(len(labels)),
        "n_fine": int(fine.sum()),
        "accuracy": float(correct[fine].mean()) if fine.any() else None,
        "macro_recall": float(np.mean([r["recall"] for r in recall.values()])) if recall else None,
        "recall": recall,
        "n_broad": int(has_broad.sum()),
        "broad_accuracy": float(broad_correct[has_broad].mean()) if has_broad.any() else None,
        "broad_recall": {
            b: float(broad_correct[np.array([t == b for t in broad_true])].mean())
            for b in broad_names
            if any(t == b for t in broad_true)
        },
        "ece": _ece(proba[fine], np.searchsorted(model_labels, truth[fine].astype(str)))
        if sorted(model_labels) == model_labels
        else None,
        "broad_ece": _ece(
            broad_proba[has_broad],
            np.array([broad_names.index(b) for b in broad_true if b is not None], dtype=np.int64),
        ),
        "mean_top_probability": float(confidence.mean()) if len(confidence) else None,
        "predicted": dict(Counter(predicted.tolist()).most_common()),
        "predicted_broad": dict(Counter(broad_pred.tolist()).most_common()),
        **(_kept(abstain, correct, fine, broad_correct, has_broad) if abstain is not None else {}),
    }


def _kept(
    abstain: np.ndarray,
    correct: np.ndarray,
    fine: np.ndarray,
    broad_correct: np.ndarray,
    has_broad: np.ndarray,
) -> dict[str, Any]:
    """Abstain rate and the accuracies on the objects the model did not abstain on."""
    kept = ~np.asarray(abstain, bool)
    return {
        "abstain_rate": float((~kept).mean()) if len(kept) else None,
        "n_kept": int(kept.sum()),
        "accuracy_kept": float(correct[fine & kept].mean()) if (fine & kept).any() else None,
        "broad_accuracy_kept": float(broad_correct[has_broad & kept].mean())
        if (has_broad & kept).any()
        else None,
    }


# -- metadata for models with PLAsTiCC metadata inputs --------------------------------------
def distance_modulus(z: np.ndarray, h0: float = 70.0, omega_m: float = 0.3) -> np.ndarray:
    """Flat LCDM distance modulus (mag) of redshift ``z``; NaN where z is not positive."""
    z = np.asarray(z, np.float64)
    out = np.full(z.shape, np.nan)
    ok = np.isfinite(z) & (z > 0)
    if ok.any():
        grid = np.linspace(0.0, float(z[ok].max()), 4001)
        inv_e = 1.0 / np.sqrt(omega_m * (1 + grid) ** 3 + (1 - omega_m))
        comoving = np.concatenate([[0.0], np.cumsum(np.diff(grid) * (inv_e[1:] + inv_e[:-1]) / 2)])
        d_c = np.interp(z[ok], grid, comoving) * 299792.458 / h0  # Mpc
        out[ok] = 5 * np.log10((1 + z[ok]) * d_c * 1e6 / 10)
    return out


def with_plasticc_metadata(batch: LightCurveBatch, names: tuple[str, ...]) -> LightCurveBatch:
    """Fill the PLAsTiCC metadata columns a model reads from what a real reader provides."""
    meta = dict(batch.metadata)
    n = len(batch)
    z = np.asarray(meta.get("redshift", np.full(n, np.nan)), np.float64)
    derived = {
        "mwebv": np.asarray(meta.get("ebv", np.full(n, np.nan)), np.float64),
        "hostgal_photoz": z,
        "hostgal_photoz_err": np.full(n, np.nan),
        "distmod": distance_modulus(z),
        "ddf": np.zeros(n),
    }
    for name in names:
        if name not in meta and name in derived:
            meta[name] = derived[name]
    batch.metadata = meta
    return batch


# -- running -------------------------------------------------------------------------------
class Baselines:
    """One feature baseline per model, fitted on exactly the objects the model was trained on
    (its config's sources, labels and augmented copies; grouped_splits' training rows), with
    the model's own tabular inputs: the classifier a broker would otherwise run."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self._fitted: dict[str, tuple[Any, float, int]] = {}

    def get(self, model: LoadedModel) -> tuple[Any, float, int]:
        key = str(model.path)
        if key not in self._fitted:
            t0 = time.perf_counter()
            cfg = training_config(model.metadata.name, self.data)
            objects = read_training_objects(cfg, Console(quiet=True))
            train_rows, _, _ = grouped_splits(objects, cfg)
            objects = objects.select(train_rows)
            spec = model.metadata.preprocessing
            x = tabular_features(keep_model_bands(objects, spec)[0], spec, n_jobs=2)
            fitted = fit_feature_baseline(x, objects.label, list(model.metadata.labels))
            self._fitted[key] = (fitted, time.perf_counter() - t0, len(objects))
        return self._fitted[key]


def evaluate_set(
    real: RealSet,
    batch: LightCurveBatch,
    model: LoadedModel,
    baselines: Baselines | None,
) -> dict[str, Any]:
    labels = list(model.metadata.labels)
    spec = model.metadata.preprocessing
    batch = with_plasticc_metadata(batch, tuple(spec.metadata_features))
    t0 = time.perf_counter()
    result = classify(batch, model, n_jobs=2)
    seconds = time.perf_counter() - t0
    proba = result.probabilities
    truth = batch.label[result.rows]
    out: dict[str, Any] = {
        "n_classified": int(len(result.rows)),
        "skipped": dict(result.skipped),
        "points_outside_bands": int(result.points_outside_bands),
        "classify_seconds": seconds,
        "model": score(truth, proba, labels, result.abstain) if len(result.rows) else None,
        "abstained": dict(result.abstained),
    }
    if len(result.rows) and baselines is not None:
        fitted, fit_seconds, n_fit = baselines.get(model)
        kept, _ = keep_model_bands(batch.select(result.rows), spec)
        x = tabular_features(kept, spec, n_jobs=2)
        x = finite_or_nan(x)
        base = predict_proba_all_classes(fitted, x, len(labels))
        out["baseline"] = score(truth, base, labels)
        out["baseline_fit_seconds"] = fit_seconds
        out["baseline_trained_on"] = n_fit
    return out


def model_key(loaded: dict[str, LoadedModel], name: str) -> str:
    """The model's name, or "name version" when two models of one name are compared."""
    meta = loaded[name].metadata
    same_name = [m for m in loaded.values() if m.metadata.name == meta.name]
    return meta.name if len(same_name) == 1 else f"{meta.name} {meta.version}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = args.data or shared_data_dir()
    started = time.perf_counter()
    baselines = Baselines(data)
    # models named on the command line are loaded first, so that their keys are stable
    loaded = {name: LoadedModel.load(name, provider="cpu", threads=2) for name in args.model or []}
    sets: dict[str, Any] = {}
    for real in SETS:
        if args.sets and real.name not in args.sets:
            continue
        t0 = time.perf_counter()
        batch = real.read(data)
        read_seconds = time.perf_counter() - t0
        n_read = len(batch)
        entry: dict[str, Any] = {
            "what": real.what,
            "n_read": n_read,
            "read_seconds": read_seconds,
            "dropped_points": dict(batch.dropped),
            "labels_read": dict(Counter(batch.label.tolist()).most_common()),
        }
        if args.split == "test" and not real.name.startswith("plasticc"):
            batch = batch.select(np.flatnonzero(real_sky_split(batch.object_id)))
        if args.max_objects and len(batch) > args.max_objects:
            pick = np.sort(np.random.default_rng(SEED).permutation(len(batch))[: args.max_objects])
            batch = batch.select(pick)
        entry["n_evaluated"] = len(batch)
        entry["labels_evaluated"] = dict(Counter(batch.label.tolist()).most_common())
        entry["models"] = {}
        for name in args.model or real.models:
            if name not in loaded:
                loaded[name] = LoadedModel.load(name, provider="cpu", threads=2)
            print(f"{real.name}: {len(batch)} objects, {name} ...", file=sys.stderr, flush=True)
            entry["models"][model_key(loaded, name)] = evaluate_set(
                real, batch, loaded[name], None if args.no_baseline else baselines
            )
        sets[real.name] = entry
    return {
        "benchmark": "real_sky",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "args": {
            "split": args.split,
            "models": args.model,
            "sets": args.sets,
            "max_objects": args.max_objects,
            "baseline": not args.no_baseline,
        },
        "protocol": {
            "split": "astro_classifier.data.splits.real_sky_split (test fraction 0.3, id hash)"
            if args.split == "test"
            else "all objects",
            "label_to_model_class": MODEL_CLASS_ALIASES,
            "ece_bins": ECE_BINS,
            "baseline": "HistGradientBoosting (baseline_features.HGB_PARAMS) on the model's "
            "tabular inputs, trained on the model's own training objects (its config)",
        },
        "sets": sets,
        "machine": machine_info(),
        "runtime_seconds": time.perf_counter() - started,
    }


# -- reporting -----------------------------------------------------------------------------
def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _pair(m: dict[str, Any] | None, b: dict[str, Any] | None, key: str) -> str:
    return f"{_f(m.get(key) if m else None)} / {_f(b.get(key) if b else None)}"


def markdown(result: dict[str, Any]) -> str:
    split = result["args"]["split"]
    lines = [
        f"Real-sky evaluation ({'test split only' if split == 'test' else 'all objects'}; "
        "each cell: model / feature baseline). n: objects classified; fine n: objects whose "
        "class the model has; ECE: top-label, 15 bins.",
        "",
        "| set | model | n | fine n | accuracy | macro recall | broad accuracy | ECE | "
        "mean top p | abstain | accuracy kept | broad kept | most predicted (model) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, entry in result["sets"].items():
        for model, res in entry["models"].items():
            m, b = res.get("model"), res.get("baseline")
            top = ", ".join(f"{c} {k}" for c, k in list((m or {}).get("predicted", {}).items())[:3])
            lines.append(
                f"| {name} | {model} | {res['n_classified']} | {(m or {}).get('n_fine', 0)} | "
                f"{_pair(m, b, 'accuracy')} | {_pair(m, b, 'macro_recall')} | "
                f"{_pair(m, b, 'broad_accuracy')} | {_pair(m, b, 'ece')} | "
                f"{_f((m or {}).get('mean_top_probability'))} | "
                f"{_f((m or {}).get('abstain_rate'))} | {_f((m or {}).get('accuracy_kept'))} | "
                f"{_f((m or {}).get('broad_accuracy_kept'))} | {top} |"
            )
    lines += ["", "Per-class recall (model / baseline; n true objects):", ""]
    for name, entry in result["sets"].items():
        for model, res in entry["models"].items():
            m, b = res.get("model"), res.get("baseline")
            if not m:
                continue
            parts = [
                f"{c} {r['recall']:.2f} / {_f(b['recall'][c]['recall'] if b else None)} (n {r['n']})"
                for c, r in m["recall"].items()
            ]
            lines.append(f"- {name}, {model}: " + ("; ".join(parts) or "no class of the model"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="model name or path (repeatable)")
    parser.add_argument("--split", choices=["all", "test"], default="all")
    parser.add_argument("--sets", nargs="+", choices=[s.name for s in SETS], default=None)
    parser.add_argument(
        "--max-objects", type=int, default=None, help="evaluate a random subset per set"
    )
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the feature baseline (fitting it on a model's training set takes minutes)",
    )
    parser.add_argument("--data", type=Path, default=None, help="shared data folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    args = parser.parse_args(argv)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')} ({result['runtime_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
