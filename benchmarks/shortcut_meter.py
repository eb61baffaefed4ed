"""The shortcut meter: does a ZTF model read the object, or the catalogue it came from?

Every real class reached training from one catalogue with its own processing (SN Ia from BTS
alert photometry, SLSN from a dense multi-telescope catalogue, TDEs from forced difference
photometry, periodic stars from EROS-1, AGN only from the simulation). A model can then score
well on a same-catalogue test split by recognising the catalogue. Three measurements, on
real data in ZTF's bands, tell whether it does:

1. **Leave-one-source-out (LOSO).** For each real source, a classifier is trained with that
   source held out entirely and scored on it (recall per class, broad accuracy). The sources
   cover the same classes independently: SN Ia (BTS light-curve set, ANTARES BTS, OSC,
   ALeRCE examples), SLSN (``slsne``, ANTARES BTS, OSC), SN II/Ibc (ANTARES BTS, OSC, ALeRCE),
   TDE (``manytde``, ANTARES BTS), AGN (TDSS quasars vs the simulation), periodic stars
   (EROS-1 vs the simulation). The classifier is the feature baseline (histogram gradient
   boosting on the model's own tabular inputs; a transformer per held-out source does not fit
   this machine), trained twice: on the light curves as read, and with every training light
   curve also rendered in other processings (``data/render.py``; what training does when a
   config has ``render``). The shipped model itself is scored on the sources it never saw.
2. **Processing swap.** Held-out objects (the real-sky test split of each source) are
   re-rendered in each processing of ``data/render.py`` (alert, forced, detections only,
   sparse cadence, Rubin-like cadence), and the share whose predicted fine and broad class stay
   what they were as read is reported per model. Target: broad ≥ 0.90, fine ≥ 0.75.
3. **Source probe.** Within one class (SN Ia: four sources), how well the source can be told
   from the model's tabular inputs (5-fold cross-validated macro one-vs-rest AUC of a
   gradient-boosting probe) and from the model's output probabilities; and which single
   inputs carry it (per-feature AUC, top ten). 0.5 = the inputs do not know the source.

Usage::

    python -m benchmarks.shortcut_meter [--model atat-ztf --model path/to/new.onnx] \
        [--max-per-source 600] [--out benchmarks/results/shortcut_meter.json]

Results: a JSON file and a Markdown table beside it (``.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
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
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

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
from astro_classifier.core.taxonomy import broad_class_of
from astro_classifier.features.preprocess import keep_model_bands, tabular_features
from astro_classifier.features.render import PROCESSINGS, difference_flux, render, render_random
from astro_classifier.inference.classify import classify
from astro_classifier.inference.model import LoadedModel
from astro_classifier.training.config import RenderSection, TrainConfig
from astro_classifier.training.sources import add_rendered_copies, read_training_objects
from benchmarks.baseline_features import (
    finite_or_nan,
    fit_feature_baseline,
    machine_info,
    predict_proba_all_classes,
    shared_data_dir,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = PROJECT_ROOT / "benchmarks" / "results" / "shortcut_meter.json"
SEED = 0
SWAP_PROCESSINGS = ("alert", "forced", "detections", "sparse", "rubin")
PROBE_CLASS = "SNIa"
# Labels of the catalogues -> the ZTF model's classes (its config's label_map, plus the
# types the ANTARES BTS set adds).
ZTF_CLASSES = ("AGN", "Cepheid", "EB", "LPV", "RRL", "SLSN", "SNII", "SNIa", "SNIbc", "TDE")


@dataclass(frozen=True)
class Source:
    name: str
    what: str
    read: Callable[[Path], LightCurveBatch]


def _tdss_difference(data: Path) -> LightCurveBatch:
    """TDSS quasars as a difference-imaging survey reports them (reference subtracted)."""
    return difference_flux(read_tdss_quasars(data / "lightcurves" / "tdss-quasars"))


SOURCES: tuple[Source, ...] = (
    Source("ztf-bts-snia", "BTS SN Ia light-curve set (g/R mags)", lambda d: read_ztf_bts(d / "lightcurves" / "ztf-bts-snia")),
    Source("ztf-bts-antares", "BTS transients as ANTARES alert light curves", lambda d: read_antares_bts(d / "lightcurves" / "ztf-bts-antares")),
    Source("osc-sne", "Open Supernova Catalog", lambda d: read_osc(d / "multimodal" / "osc-sne")),
    Source("alerce-examples", "ALeRCE examples (detections + limits)", lambda d: read_alerce_examples(d / "lightcurves" / "alerce-examples")),
    Source("slsne", "SLSN-I catalogue", lambda d: read_slsne(d / "lightcurves" / "slsne")),
    Source("manytde", "manyTDE forced photometry", lambda d: read_manytde(d / "lightcurves" / "manytde")),
    Source("tdss-quasars", "TDSS quasars, SDSS+PS1, as difference flux", _tdss_difference),
    Source(
        "eros1",
        "EROS-1 LMC variables (b/r as g/r)",
        lambda d: read_eros1(
            d / "lightcurves" / "eros1" / "train.csv",
            d / "lightcurves" / "eros1" / "train_varlength_features.csv.gz",
        ),
    ),
)  # fmt: skip


def ztf_label(label: str, label_map: dict[str, str]) -> str | None:
    """A catalogue label as one of the ZTF model's classes, or None."""
    mapped = label_map.get(label, label)
    return mapped if mapped in ZTF_CLASSES else None


def read_sources(
    data: Path, label_map: dict[str, str], max_per_source: int | None
) -> dict[str, LightCurveBatch]:
    """Every real source in ZTF's classes (objects of other classes left out), at most
    ``max_per_source`` objects each (stratified by label, seeded), labels mapped."""
    rng = np.random.default_rng(SEED)
    out = {}
    for source in SOURCES:
        t0 = time.perf_counter()
        batch = source.read(data)
        mapped = np.array([ztf_label(str(lab), label_map) or "" for lab in batch.label], object)
        keep = np.flatnonzero((mapped != "") & (batch.lengths > 0))
        batch = batch.select(keep)
        batch.label = mapped[keep].astype(str)
        if max_per_source is not None and len(batch) > max_per_source:
            # keep every object of the rare classes, subsample the common ones
            per_class = max(max_per_source // max(len(set(batch.label)), 1), 1)
            rows = np.concatenate(
                [
                    rng.permutation(np.flatnonzero(batch.label == c))[:per_class]
                    for c in np.unique(batch.label)
                ]
            )
            batch = batch.select(np.sort(rows))
        batch.metadata = {"source": np.full(len(batch), SOURCES.index(source), np.float64)}
        out[source.name] = batch
        print(
            f"{source.name}: {len(batch)} objects {dict(Counter(batch.label.tolist()))} "
            f"({time.perf_counter() - t0:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
    return out


def simulation(data: Path, n_copies: int = 1) -> LightCurveBatch:
    """PLAsTiCC at ZTF distances and depth: the simulated part of atat-ztf's training set."""
    os.environ["ASTROCLF_SHARED_DATA"] = str(data)
    cfg = TrainConfig.from_yaml(PROJECT_ROOT / "configs" / "atat_ztf.yaml")
    augment = cfg.data.augment.model_copy(update={"copies": n_copies})
    main = cfg.data.model_copy(update={"extra_sources": [], "augment": augment, "render": None})
    batch = read_training_objects(cfg.model_copy(update={"data": main}), Console(quiet=True))
    batch.metadata = {"source": np.full(len(batch), -1.0)}
    return batch


# -- scoring -------------------------------------------------------------------------------
def broad_of(labels: np.ndarray) -> np.ndarray:
    return np.array([broad_class_of(str(lab)) or "" for lab in labels], object)


def recall_table(truth: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """Per-class recall and broad accuracy of fine predictions ``predicted``."""
    recall = {
        c: {"n": int((truth == c).sum()), "recall": float((predicted[truth == c] == c).mean())}
        for c in sorted(set(truth.tolist()))
    }
    return {
        "n": int(len(truth)),
        "recall": recall,
        "accuracy": float((predicted == truth).mean()) if len(truth) else None,
        "broad_accuracy": float((broad_of(predicted) == broad_of(truth)).mean())
        if len(truth)
        else None,
    }


def features(batch: LightCurveBatch, spec: Any) -> np.ndarray:
    return finite_or_nan(tabular_features(keep_model_bands(batch, spec)[0], spec, n_jobs=2))


def model_predict(model: LoadedModel, batch: LightCurveBatch) -> np.ndarray:
    """The model's fine class for every object ('' where classify() skipped it)."""
    result = classify(batch, model, n_jobs=2)
    out = np.full(len(batch), "", object)
    out[result.rows] = result.classes
    return out


# -- 1. leave one source out ---------------------------------------------------------------
def leave_one_source_out(
    sources: dict[str, LightCurveBatch], sim: LightCurveBatch, spec: Any, rendered: bool
) -> dict[str, Any]:
    """Feature baseline trained on the simulation and every source but one, scored on it."""
    classes = list(ZTF_CLASSES)
    out = {}
    render_spec = RenderSection(copies=2, baseline=True, seed=SEED)
    parts = {name: _with_copies(b, render_spec) if rendered else b for name, b in sources.items()}
    sim_part = _with_copies(sim, render_spec) if rendered else sim
    cache = {name: features(b, spec) for name, b in parts.items()}
    sim_x = features(sim_part, spec)
    test_x = {name: features(b, spec) for name, b in sources.items()}
    for held in sources:
        x = np.concatenate([sim_x, *(cache[n] for n in parts if n != held)])
        y = np.concatenate([sim_part.label, *(parts[n].label for n in parts if n != held)])
        model = fit_feature_baseline(x, y, classes)
        proba = predict_proba_all_classes(model, test_x[held], len(classes))
        predicted = np.asarray(classes, object)[proba.argmax(axis=1)]
        out[held] = recall_table(sources[held].label.astype(object), predicted)
        print(
            f"LOSO ({'rendered' if rendered else 'as read'}) {held}: {out[held]['recall']}",
            file=sys.stderr,
        )
    return out


def _with_copies(batch: LightCurveBatch, spec: RenderSection) -> LightCurveBatch:
    metadata = {**batch.metadata, "augment_copy": np.zeros(len(batch))}
    return add_rendered_copies(dataclasses.replace(batch, metadata=metadata), spec)


# -- 2. processing swap --------------------------------------------------------------------
def processing_swap(
    sources: dict[str, LightCurveBatch],
    predictors: dict[str, Callable[[LightCurveBatch], np.ndarray]],
) -> dict[str, Any]:
    """Share of held-out objects whose predicted class survives each re-rendering."""
    out: dict[str, Any] = {}
    for name, batch in sources.items():
        test = batch.select(np.flatnonzero(real_sky_split(batch.object_id)))
        out[name] = {"n": len(test)}
        for who, predict in predictors.items():
            base = predict(test)
            rows: dict[str, Any] = {}
            for processing in SWAP_PROCESSINGS:
                rng = np.random.default_rng(SEED)
                other = predict(render(test, processing, rng, baseline=_is_transient(test)))
                both = (base != "") & (other != "")
                rows[processing] = {
                    "n": int(both.sum()),
                    "fine_unchanged": float((base[both] == other[both]).mean())
                    if both.any()
                    else None,
                    "broad_unchanged": float((broad_of(base[both]) == broad_of(other[both])).mean())
                    if both.any()
                    else None,
                    "accuracy": float((other[both] == test.label[both]).mean())
                    if both.any()
                    else None,
                }
            rows["as-read accuracy"] = float((base == test.label).mean()) if len(test) else None
            out[name][who] = rows
            print(f"swap {name} {who}: {rows}", file=sys.stderr, flush=True)
    return out


def _is_transient(batch: LightCurveBatch) -> np.ndarray:
    return broad_of(batch.label) == "transient"


# -- 3. source probe -----------------------------------------------------------------------
def source_probe(
    sources: dict[str, LightCurveBatch],
    spec: Any,
    model: LoadedModel | None,
    rendered: bool,
) -> dict[str, Any]:
    """How well the source of a PROBE_CLASS object can be told from the model's inputs."""
    parts = [b.select(np.flatnonzero(b.label == PROBE_CLASS)) for b in sources.values()]
    names = [n for n, p in zip(sources, parts, strict=True) if len(p) >= 20]
    parts = [p for p in parts if len(p) >= 20]
    batch = LightCurveBatch.concat(parts)
    y = np.concatenate([np.full(len(p), k) for k, p in enumerate(parts)])
    if rendered:  # every object in one processing drawn at random, as rendered training sees it
        batch, _ = render_random(batch, np.random.default_rng(SEED), baseline=True)
    x = features(batch, spec)
    out = {
        "class": PROBE_CLASS,
        "sources": {n: int((y == k).sum()) for k, n in enumerate(names)},
        "inputs_auc": _probe_auc(x, y),
        "top_features": _single_feature_auc(x, y, spec.feature_names)[:10],
    }
    if model is not None:
        result = classify(batch, model, n_jobs=2)
        out["outputs_auc"] = _probe_auc(result.probabilities, y[result.rows])
    return out


def _probe_auc(x: np.ndarray, y: np.ndarray) -> float:
    """5-fold cross-validated macro one-vs-rest AUC of a gradient-boosting source probe."""
    proba = np.zeros((len(y), len(np.unique(y))))
    folds = StratifiedKFold(5, shuffle=True, random_state=SEED)
    for train, test in folds.split(x, y):
        probe = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, random_state=SEED)
        probe.fit(x[train], y[train])
        proba[test] = probe.predict_proba(x[test])
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro"))


def _single_feature_auc(x: np.ndarray, y: np.ndarray, names: list[str]) -> list[tuple[str, float]]:
    """Per input: the best one-vs-rest AUC over sources (|AUC - 0.5| + 0.5), NaN as median."""
    scores = []
    for j, name in enumerate(names):
        col = x[:, j]
        if not np.isfinite(col).any():
            continue
        col = np.where(np.isfinite(col), col, np.nanmedian(col))
        best = max(
            abs(roc_auc_score(y == k, col) - 0.5) + 0.5
            for k in np.unique(y)
            if 0 < (y == k).sum() < len(y)
        )
        scores.append((name, round(float(best), 3)))
    return sorted(scores, key=lambda item: -item[1])


# -- running -------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    data = args.data or shared_data_dir()
    started = time.perf_counter()
    os.environ["ASTROCLF_SHARED_DATA"] = str(data)
    cfg = TrainConfig.from_yaml(PROJECT_ROOT / "configs" / "atat_ztf.yaml")
    sources = read_sources(data, dict(cfg.data.label_map), args.max_per_source)
    sim = simulation(data)
    models = {name: LoadedModel.load(name, provider="cpu", threads=2) for name in args.model}
    spec = next(iter(models.values())).metadata.preprocessing if models else cfg.preprocessing
    result: dict[str, Any] = {
        "benchmark": "shortcut_meter",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "args": {
            "models": args.model,
            "max_per_source": args.max_per_source,
            "loso": args.loso,
        },
        "sources": {n: dict(Counter(b.label.tolist())) for n, b in sources.items()},
        "simulation": dict(Counter(sim.label.tolist())),
    }
    if not args.skip_baseline:
        result["loso_baseline"] = {
            "as read": leave_one_source_out(sources, sim, spec, rendered=False),
            "rendered": leave_one_source_out(sources, sim, spec, rendered=True),
        }
    # the shipped models on every source, whole (say in the report which ones they trained on)
    result["models_on_sources"] = {
        label: {
            name: recall_table(b.label.astype(object), model_predict(m, b))
            for name, b in sources.items()
        }
        for label, m in models.items()
    }
    # transformers trained without one source (loso_configs.py), scored on that source
    result["loso_models"] = {}
    for item in args.loso or []:
        held, path = item.split("=", 1)
        loso_model = LoadedModel.load(path, provider="cpu", threads=2)
        result["loso_models"][held] = {
            "model": path,
            **recall_table(
                sources[held].label.astype(object), model_predict(loso_model, sources[held])
            ),
        }
        print(f"LOSO transformer {held}: {result['loso_models'][held]['recall']}", file=sys.stderr)
    predictors = {
        f"{m.metadata.name} {m.metadata.version}": (lambda b, m=m: model_predict(m, b))
        for m in models.values()
    }
    result["swap"] = processing_swap(sources, predictors)
    first = next(iter(models.values()), None)
    result["source_probe"] = {
        "as read": source_probe(sources, spec, first, rendered=False),
        "rendered": source_probe(sources, spec, None, rendered=True),
    }
    result["processings"] = (
        dict(PROCESSINGS) if isinstance(PROCESSINGS, dict) else list(PROCESSINGS)
    )
    result["machine"] = machine_info()
    result["runtime_seconds"] = time.perf_counter() - started
    return result


def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "Leave-one-source-out, feature baseline (recall per class on the held-out source; "
        "trained as read / with rendered copies):",
        "",
        "| held-out source | n | broad accuracy | recall per class |",
        "|---|---:|---:|---|",
    ]
    loso = result.get("loso_baseline", {"as read": {}})
    for name, plain in loso["as read"].items():
        ren = loso["rendered"][name]
        per = "; ".join(
            f"{c} {r['recall']:.2f} / {ren['recall'][c]['recall']:.2f} (n {r['n']})"
            for c, r in plain["recall"].items()
        )
        lines.append(
            f"| {name} | {plain['n']} | {_f(plain['broad_accuracy'])} / {_f(ren['broad_accuracy'])} | {per} |"
        )
    if result.get("loso_models"):
        lines += [
            "",
            "Leave-one-source-out, transformer (a model trained without the source, "
            "scored on all of its objects):",
            "",
            "| held-out source | n | accuracy | broad accuracy | recall per class |",
            "|---|---:|---:|---:|---|",
        ]
        for name, r in result["loso_models"].items():
            per = "; ".join(f"{c} {v['recall']:.2f} (n {v['n']})" for c, v in r["recall"].items())
            lines.append(
                f"| {name} | {r['n']} | {_f(r['accuracy'])} | {_f(r['broad_accuracy'])} | {per} |"
            )
    for label, per_source in result["models_on_sources"].items():
        lines += [
            "",
            f"{label} on every source, all objects (recall per class):",
            "",
            "| source | n | accuracy | broad accuracy | recall per class |",
            "|---|---:|---:|---:|---|",
        ]
        for name, r in per_source.items():
            per = "; ".join(f"{c} {v['recall']:.2f} (n {v['n']})" for c, v in r["recall"].items())
            lines.append(
                f"| {name} | {r['n']} | {_f(r['accuracy'])} | {_f(r['broad_accuracy'])} | {per} |"
            )
    lines += [
        "",
        "Processing swap, real-sky test split (share of objects whose class stays as "
        "read: fine / broad):",
        "",
    ]
    header = "| source | model | n | as-read accuracy | " + " | ".join(SWAP_PROCESSINGS) + " |"
    lines += [header, "|---|---|---:|---:|" + "---:|" * len(SWAP_PROCESSINGS)]
    for name, entry in result["swap"].items():
        for who, rows in entry.items():
            if who == "n":
                continue
            cells = " | ".join(
                f"{_f(rows[p]['fine_unchanged'])} / {_f(rows[p]['broad_unchanged'])}"
                for p in SWAP_PROCESSINGS
            )
            lines.append(
                f"| {name} | {who} | {entry['n']} | {_f(rows['as-read accuracy'])} | {cells} |"
            )
    lines += ["", f"Source probe within {PROBE_CLASS} (AUC; 0.5 = the source cannot be told):", ""]
    for kind, probe in result["source_probe"].items():
        top = ", ".join(f"{n} {a:.2f}" for n, a in probe["top_features"][:6])
        outputs = f", model outputs {probe['outputs_auc']:.2f}" if "outputs_auc" in probe else ""
        lines.append(
            f"- {kind}: sources {probe['sources']}; inputs {probe['inputs_auc']:.2f}{outputs}; "
            f"top inputs: {top}"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", action="append", default=None, help="model name or path (repeatable)"
    )
    parser.add_argument("--max-per-source", type=int, default=600, help="objects kept per source")
    parser.add_argument(
        "--loso",
        action="append",
        metavar="SOURCE=MODEL",
        help="a model trained without SOURCE (loso_configs.py), scored on it (repeatable)",
    )
    parser.add_argument("--skip-baseline", action="store_true", help="no feature-baseline LOSO")
    parser.add_argument("--data", type=Path, default=None, help="shared data folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    args = parser.parse_args(argv)
    args.model = args.model or ["atat-ztf"]
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {args.out} ({result['runtime_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
