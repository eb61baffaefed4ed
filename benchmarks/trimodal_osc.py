"""Trimodal CLIP pretraining on real supernovae: light curve <-> spectrum <-> metadata.

Objects: the Open Supernova Catalog (``multimodal/osc-sne``, light curves with ugrizy and the
Johnson-Cousins U B R I bands kept, ``read_osc(johnson_cousins=True)``) plus the slsne SLSN-I
catalogue (``lightcurves/slsne``; objects whose name is also an OSC name, e.g. ``2010kd`` =
``SN2010kd``, are taken from OSC only), each with >= 3 detections and a usable spectrum on the
model grid; labels Ia vs non-Ia (``label_map`` of the config; the ambiguous ``SN`` dropped).
Metadata: the catalogue redshift (``hostgal_photoz`` slot), MW E(B-V) (``mwebv``), ra/decl.

Protocol: R repeats x K-fold cross-validation grouped by object (stratified by class; one
object = one group, no duplicates). In each fold, on the training folds only (15 % of them for
early stopping): (1) contrastive pretraining (``training.objective: contrastive``, config
``configs/clip_osc_trimodal.yaml``); (2) a light-curve-only classifier = the pretrained
photometry encoder + projection + linear head, fine-tuned (metadata and spectra absent); (3)
the same architecture from scratch, same folds, seed and epochs. Reported on the held-out
fold: balanced accuracy of (2) and (3) (paired over the R x K folds: mean, std, SE, Wilcoxon
and paired t p-values), LC -> spectrum retrieval recall@10 of the pretrained model among the
fold's objects (random = 10 / fold size), and a spectrum-only logistic regression (flux on
the same grid, same folds: AUC and balanced accuracy) as a reference.

    nice -n 19 python -m benchmarks.trimodal_osc             # 5 x 5 folds, ~25 min on 2 cores
    nice -n 19 python -m benchmarks.trimodal_osc --repeats 1 --folds 2 --quick   # smoke test

Writes benchmarks/results/trimodal_osc.json, .md and PNGs (embedding map, retrieval examples).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from astro_classifier.catalogs.osc import read_osc
from astro_classifier.catalogs.slsne import read_slsne
from astro_classifier.catalogs.spectra import read_osc_spectra, read_slsne_spectra
from astro_classifier.catalogs.splits import stratified_folds, stratified_split
from astro_classifier.core.lightcurve import LightCurveBatch
from astro_classifier.core.quality import clean_points
from astro_classifier.core.spectra import Spectra
from astro_classifier.features.spectra import model_input
from astro_classifier.training.config import TrainConfig
from astro_classifier.training.dataset import TrainingDataset

ROOT = Path(__file__).resolve().parent.parent

CONFIG = ROOT / "configs" / "clip_osc_trimodal.yaml"
RESULTS = ROOT / "benchmarks" / "results"


def _norm_name(name: str) -> str:
    name = name.lower()
    return name[2:] if name.startswith("sn") and name[2:3].isdigit() else name


def _canonical_metadata(batch: LightCurveBatch) -> LightCurveBatch:
    m = batch.metadata
    m["hostgal_photoz"] = np.asarray(m["redshift"], np.float64)
    m["mwebv"] = np.asarray(m["ebv"], np.float64)
    m["decl"] = np.asarray(m["dec"], np.float64)
    batch.metadata = {k: v for k, v in m.items() if np.asarray(v).dtype.kind in "fiub"}
    return batch


def load_objects(cfg: TrainConfig, shared: Path) -> tuple[TrainingDataset, dict]:
    """The trimodal objects as a TrainingDataset with spectra attached, and counts."""
    osc_dir, slsne_dir = shared / "multimodal" / "osc-sne", shared / "lightcurves" / "slsne"
    osc = clean_points(read_osc(osc_dir, johnson_cousins=True))
    sl = clean_points(read_slsne(slsne_dir))
    osc_names = {_norm_name(n) for n in osc.object_id.tolist()}
    dup = np.array([_norm_name(n) in osc_names for n in sl.object_id.tolist()])
    sl = sl.select(np.flatnonzero(~dup))
    batch = LightCurveBatch.concat([_canonical_metadata(osc), _canonical_metadata(sl)])
    batch.label = np.array([cfg.data.label_map.get(v, v) for v in batch.label.tolist()])
    spectra = Spectra.concat([read_osc_spectra(osc_dir), read_slsne_spectra(slsne_dir)])
    n_det = np.bincount(batch.point_object_index()[batch.detected], minlength=len(batch))
    keep = np.isin(batch.label, cfg.data.classes) & (n_det >= 3)
    keep &= np.isin(batch.object_id, spectra.object_id)
    batch = batch.select(np.flatnonzero(keep))
    ds = TrainingDataset.build(batch, cfg.preprocessing, [np.inf], "osc+slsne trimodal")
    ds.attach_spectra(spectra)
    grid = cfg.model.args["spectrum_grid"]
    _, usable, _ = model_input(ds.spectra, grid)
    ok = ds.spectrum_row >= 0
    ok[ok] = usable[ds.spectrum_row[ok]]
    sub = ds.batch.select(np.flatnonzero(ok))
    ds = TrainingDataset.build(sub, cfg.preprocessing, [np.inf], "osc+slsne trimodal")
    ds.attach_spectra(spectra)
    counts = {
        "slsne_duplicates_of_osc": int(dup.sum()),
        "objects": len(ds),
        "from_osc": int(np.isin(ds.batch.object_id, osc.object_id).sum()),
        "from_slsne": int(np.isin(ds.batch.object_id, sl.object_id).sum()),
        "classes": dict(Counter(ds.batch.label.tolist())),
        "spectra_refused_by_readers": spectra.dropped,
        "spectra_not_usable_on_grid": int((~ok).sum()),
    }
    return ds, counts


def light_curve_only(ds: TrainingDataset) -> TrainingDataset:
    """The same objects with metadata and spectra removed (the classifier sees light curves)."""
    return TrainingDataset(
        ds.batch,
        np.full_like(ds.features, np.nan),
        ds.truncation_days,
        ds.spec,
        ds.content_hash,
        ds.source,
        spectra=Spectra.empty(),
        spectrum_row=np.full(len(ds), -1, np.int64),
    )


def _cfg(base: TrainConfig, **sections) -> TrainConfig:
    raw = base.model_dump(mode="json")
    for section, values in sections.items():
        raw[section] = {**raw[section], **values}
    return TrainConfig.model_validate(raw)


def balanced_accuracy(cm) -> float:
    cm = np.asarray(cm, np.float64)
    return float(np.mean(np.diag(cm) / np.maximum(cm.sum(axis=1), 1)))


def recall_at_k(query: np.ndarray, keys: np.ndarray, k: int = 10) -> tuple[float, np.ndarray]:
    """Share of queries whose own key (same row) is among their k most similar keys."""
    sims = query @ keys.T
    rank = (sims > np.diag(sims)[:, None]).sum(axis=1)  # 0 = best
    return float(np.mean(rank < k)), rank


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--pretrain-epochs", type=int, default=4)
    ap.add_argument("--finetune-epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=64, help="points per light curve")
    ap.add_argument("--quick", action="store_true", help="2 epochs per stage (smoke test)")
    ap.add_argument("--out", type=Path, default=RESULTS / "trimodal_osc")
    args = ap.parse_args()
    import torch
    from rich.console import Console

    from astro_classifier.families.registry import family_of
    from astro_classifier.training.batches import embed_dataset
    from astro_classifier.training.extras import model_extras
    from astro_classifier.training.record import load_run
    from astro_classifier.training.train import seed_everything, train_on

    torch.set_num_threads(args.threads)
    shared = Path(os.environ.get("ASTROCLF_SHARED_DATA", ROOT.parent / "shared" / "data"))
    base = _cfg(TrainConfig.from_yaml(CONFIG), preprocessing={"max_length": args.max_length})
    pre_epochs = 2 if args.quick else args.pretrain_epochs
    ft_epochs = 2 if args.quick else args.finetune_epochs
    started = time.perf_counter()
    ds, counts = load_objects(base, shared)
    ds_lc = light_curve_only(ds)
    labels = sorted(set(ds.batch.label.tolist()))
    y = np.searchsorted(labels, ds.batch.label)
    ia = labels.index("SNIa")
    print(f"{len(ds)} objects {counts['classes']} ({time.perf_counter() - started:.0f} s)")
    quiet = Console(quiet=True)
    device = torch.device("cpu")
    cfg_pre = _cfg(base, training={"epochs": pre_epochs, "num_threads": args.threads})
    common = {"objective": "classify", "epochs": ft_epochs, "patience": ft_epochs,
              "learning_rate": 0.002, "batch_size": 64, "num_threads": args.threads}  # fmt: skip

    # spectrum-only reference: logistic regression on the normalised flux on the model grid
    from scipy import stats
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    grid_flux, _, _ = model_input(ds.spectra, base.model.args["spectrum_grid"])
    x_spec = np.nan_to_num(grid_flux[ds.spectrum_row, 0], nan=0.0)

    rows, last = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            folds = stratified_folds(ds.batch.label, args.folds, seed=r)
            for k in range(args.folds):
                t0 = time.perf_counter()
                holdout = np.flatnonzero(folds == k)
                rest = np.flatnonzero(folds != k)
                tr, va = stratified_split(ds.batch.label[rest], 0.15, seed=r)
                splits = (rest[tr], rest[va], holdout)
                seed = 100 * r + k
                run = Path(tmp) / f"r{r}k{k}"
                pre_dir = run / "pre"
                pre_dir.mkdir(parents=True)
                seed_everything(seed)
                pre_cfg = _cfg(cfg_pre, training={"seed": seed})
                train_on(pre_cfg, pre_dir, quiet, ds, labels, y, splits, device)
                ft_dir, sc_dir = run / "ft", run / "scratch"
                ft_dir.mkdir()
                sc_dir.mkdir()
                seed_everything(seed)
                ft_cfg = _cfg(
                    base,
                    model={"init_from": str(pre_dir), "args": {}},
                    training={**common, "seed": seed},
                )
                ft = train_on(ft_cfg, ft_dir, quiet, ds_lc, labels, y, splits, device)
                seed_everything(seed)
                sc_cfg = _cfg(base, training={**common, "seed": seed})
                sc = train_on(sc_cfg, sc_dir, quiet, ds_lc, labels, y, splits, device)

                model, record = load_run(pre_dir)
                family = family_of(record.model_name)
                spec_in = model_extras(family, model, ds)
                emb = embed_dataset(model, family, ds, holdout, device, spec_in)
                recall, rank = recall_at_k(emb["photometry"], emb["spectrum"], 10)

                lr = LogisticRegression(C=1.0, class_weight="balanced", max_iter=3000)
                lr.fit(x_spec[splits[0]], y[splits[0]])
                p_ia = lr.predict_proba(x_spec[holdout])[:, list(lr.classes_).index(ia)]
                row = {
                    "repeat": r,
                    "fold": k,
                    "n_train": len(splits[0]),
                    "n_validation": len(splits[1]),
                    "n_holdout": len(holdout),
                    "bacc_pretrained": balanced_accuracy(ft["holdout"]["confusion_matrix"]),
                    "bacc_scratch": balanced_accuracy(sc["holdout"]["confusion_matrix"]),
                    "recall10_lc_to_spectrum": recall,
                    "recall10_random": min(10, len(holdout)) / len(holdout),
                    "median_rank": float(np.median(rank)) + 1,
                    "spectrum_lr_auc": float(roc_auc_score(y[holdout] == ia, p_ia)),
                    "spectrum_lr_bacc": float(
                        balanced_accuracy_score(y[holdout], lr.predict(x_spec[holdout]))
                    ),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
                rows.append(row)
                last = (holdout, emb, rank)
                Path(f"{args.out}.partial.json").write_text(json.dumps(rows, indent=1))
                print(
                    f"repeat {r} fold {k}: bacc pretrained {row['bacc_pretrained']:.3f} scratch "
                    f"{row['bacc_scratch']:.3f}; recall@10 {recall:.3f} (random "
                    f"{row['recall10_random']:.3f}); spectrum LR AUC {row['spectrum_lr_auc']:.3f}"
                    f" ({row['seconds']:.0f} s)",
                    flush=True,
                )

    def summary(values) -> dict[str, float]:
        v = np.asarray(values, np.float64)
        sd = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
        return {"mean": float(v.mean()), "std": sd, "se": sd / np.sqrt(len(v))}

    pre = np.array([r["bacc_pretrained"] for r in rows])
    scratch = np.array([r["bacc_scratch"] for r in rows])
    diff = pre - scratch
    test = {}
    if len(rows) > 1 and np.any(diff != 0):
        test = {
            "wilcoxon_p": float(stats.wilcoxon(pre, scratch).pvalue),
            "paired_t_p": float(stats.ttest_rel(pre, scratch).pvalue),
        }
    repeat_means = [
        float(np.mean([r["bacc_pretrained"] - r["bacc_scratch"] for r in rows if r["repeat"] == k]))
        for k in range(args.repeats)
    ]
    result = {
        "benchmark": "trimodal_osc",
        "command": " ".join(["python -m benchmarks.trimodal_osc", *sys.argv[1:]]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": args.threads,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "config": str(CONFIG.relative_to(ROOT)),
        "model_args": base.model.args,
        "epochs": {"pretrain": pre_epochs, "finetune": ft_epochs},
        "data": counts,
        "protocol": f"{args.repeats} x {args.folds}-fold CV grouped by object, stratified",
        "balanced_accuracy_lc_only": {
            "pretrained": summary(pre),
            "scratch": summary(scratch),
            "difference": summary(diff),
            "difference_per_repeat": repeat_means,
            **test,
        },
        "retrieval_lc_to_spectrum_recall10": summary([r["recall10_lc_to_spectrum"] for r in rows]),
        "retrieval_random_recall10": summary([r["recall10_random"] for r in rows]),
        "spectrum_only_logistic_regression": {
            "auc": summary([r["spectrum_lr_auc"] for r in rows]),
            "balanced_accuracy": summary([r["spectrum_lr_bacc"] for r in rows]),
        },
        "folds": rows,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=2))
    Path(f"{args.out}.md").write_text(markdown(result))
    Path(f"{args.out}.partial.json").unlink(missing_ok=True)
    if last is not None:
        plots(ds, labels, y, *last, args.out, base.model.args["spectrum_grid"])
    print(markdown(result))


def markdown(res: dict) -> str:
    b = res["balanced_accuracy_lc_only"]
    rr = res["retrieval_lc_to_spectrum_recall10"]
    rnd = res["retrieval_random_recall10"]
    lr = res["spectrum_only_logistic_regression"]

    def f(s: dict) -> str:
        return f"{s['mean']:.3f} ± {s['std']:.3f} (SE {s['se']:.3f})"

    lines = [
        f"Trimodal CLIP on {res['data']['objects']} real supernovae "
        f"({res['data']['from_osc']} OSC + {res['data']['from_slsne']} SLSN-I; "
        f"{res['data']['classes']}), {res['protocol']}; mean ± std over folds (SE = std/√n).",
        "",
        "| metric | value |",
        "|---|---|",
        f"| LC-only Ia vs non-Ia balanced accuracy, pretrained encoder + head | {f(b['pretrained'])} |",
        f"| same encoder from scratch | {f(b['scratch'])} |",
        f"| paired difference (pretrained − scratch) | {f(b['difference'])} |",
        f"| Wilcoxon p / paired t p | {b.get('wilcoxon_p', float('nan')):.3g} / "
        f"{b.get('paired_t_p', float('nan')):.3g} |",
        f"| LC → spectrum recall@10 (held-out fold) | {f(rr)} |",
        f"| random recall@10 for the fold size | {rnd['mean']:.3f} |",
        f"| spectrum-only logistic regression AUC | {f(lr['auc'])} |",
        f"| spectrum-only logistic regression balanced accuracy | {f(lr['balanced_accuracy'])} |",
        "",
        f"Epochs: pretraining {res['epochs']['pretrain']}, fine-tuning {res['epochs']['finetune']}; "
        f"total {res['total_seconds'] / 60:.1f} min.",
    ]
    return "\n".join(lines) + "\n"


def plots(ds, labels, y, holdout, emb, rank, out: Path, spectrum_grid) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from astro_classifier.features.spectra import grid_centres

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, name in zip(axes, ("photometry", "spectrum", "fused"), strict=True):
        z = emb[name] - emb[name].mean(0)
        _, _, vt = np.linalg.svd(z, full_matrices=False)
        p = z @ vt[:2].T
        for c, lab in enumerate(labels):
            m = y[holdout] == c
            ax.scatter(p[m, 0], p[m, 1], s=9, alpha=0.7, label=f"{lab} ({m.sum()})")
        ax.set_title(f"{name} embedding, PCA (held-out fold)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(f"{out}_embedding_map.png", dpi=110)
    plt.close(fig)

    grid = grid_centres(spectrum_grid)
    sims = emb["photometry"] @ emb["spectrum"].T
    order = np.argsort(rank, kind="stable")
    picks = list(order[:2]) + list(order[len(order) // 2 : len(order) // 2 + 1])
    fig, axes = plt.subplots(len(picks), 2, figsize=(12, 3.2 * len(picks)))
    flux, _, _ = model_input(ds.spectra, spectrum_grid)
    for row, q in enumerate(picks):
        obj = holdout[q]
        sub = ds.batch.select([obj])
        ax = axes[row, 0]
        for b in np.unique(sub.band):
            m = sub.band == b
            ax.errorbar(sub.time[m], sub.flux[m], sub.flux_err[m], fmt=".", label="ugrizy"[b])
        ax.set_title(f"query light curve {sub.object_id[0]} ({ds.batch.label[obj]})")
        ax.legend(fontsize=7)
        ax = axes[row, 1]
        top = np.argsort(-sims[q])[:3]
        for j in top:
            o = holdout[j]
            mark = "true" if j == q else "retrieved"
            ax.plot(grid, flux[ds.spectrum_row[o], 0], lw=0.8,
                    label=f"{mark}: {ds.batch.object_id[o]} ({ds.batch.label[o]})")  # fmt: skip
        if q not in top:
            ax.plot(grid, flux[ds.spectrum_row[obj], 0], "k", lw=1.2,
                    label=f"true: {ds.batch.object_id[obj]} (rank {rank[q] + 1})")  # fmt: skip
        ax.set_title("top-3 spectra retrieved from its light-curve embedding")
        ax.set_xlabel("observed wavelength (Å)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f"{out}_retrieval_examples.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
