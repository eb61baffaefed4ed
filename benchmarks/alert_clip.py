"""Alert CLIP with an image tower, on every real ZTF alert we have: do the stamps help, and
does pretraining (stamps <-> light curve <-> metadata) help?

Data: every ZTF alert under ``alerts/ztf`` (618 alerts of 572 objects), read as
``configs/clip_ztf_alerts.yaml`` says: the alert's light curve (its history), metadata
(galactic latitude from ra/decl, light-curve features) and its three stamps. The label is
what the alert says about itself (``data.alert_label: solar_system``, ZTF ssdistnr < 5"):
SolarSystem (94) or NotSolarSystem (524). Alerts of one object always fall in one fold.

Protocol: R repeats x K folds, grouped by object and stratified (``grouped_splits`` with
``holdout_fold`` k and ``data.seed`` r; 15 % of the rest for early stopping). Per fold, on the
training folds only:

- ``pretrained``: contrastive pretraining of the three towers (no labels), then fine-tuning
  of towers + head (``model.init_from``);
- ``scratch``: the same three-tower model, trained on the labels from scratch;
- ``no_image``: the same model without the image tower (light curve + metadata), from
  scratch: what the stamps add.

Reported on the held-out folds (every alert with its stamps, as alerts arrive): balanced
accuracy and macro F1, mean +- std over folds, paired differences with their standard
error; and image -> light-curve retrieval recall@10 of the pretrained embeddings among the
fold's alerts (random = 10 / fold size).

    nice -n 19 python -m benchmarks.alert_clip                  # 1 x 5 folds
    nice -n 19 python -m benchmarks.alert_clip --folds 2 --quick   # smoke test

Writes benchmarks/results/alert_clip.json and .md.
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

from astro_classifier.training.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent

CONFIG = ROOT / "configs" / "clip_ztf_alerts.yaml"
RESULTS = ROOT / "benchmarks" / "results"
ARMS = ("pretrained", "scratch", "no_image")


def _cfg(base: TrainConfig, **sections) -> TrainConfig:
    raw = base.model_dump(mode="json")
    for section, values in sections.items():
        raw[section] = {**raw[section], **values}
    return TrainConfig.model_validate(raw)


def balanced_accuracy(cm) -> float:
    cm = np.asarray(cm, np.float64)
    return float(np.mean(np.diag(cm) / np.maximum(cm.sum(axis=1), 1)))


def recall_at_k(query: np.ndarray, keys: np.ndarray, k: int = 10) -> float:
    """Share of queries whose own key (same row) is among their k most similar keys."""
    sims = query @ keys.T
    rank = (sims > np.diag(sims)[:, None]).sum(axis=1)
    return float(np.mean(rank < k))


def summary(values) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    sd = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
    return {"mean": float(v.mean()), "std": sd, "se": sd / np.sqrt(len(v)), "n": len(v)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--pretrain-epochs", type=int, default=15)
    ap.add_argument("--finetune-epochs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="2 epochs per stage (smoke test)")
    ap.add_argument("--out", type=Path, default=RESULTS / "alert_clip")
    args = ap.parse_args()
    import torch
    from rich.console import Console

    from astro_classifier.families.registry import family_of
    from astro_classifier.training.batches import embed_dataset
    from astro_classifier.training.dataset import TrainingDataset
    from astro_classifier.training.extras import model_extras, read_config_cutouts
    from astro_classifier.training.record import load_run
    from astro_classifier.training.sources import grouped_splits, read_training_objects
    from astro_classifier.training.train import seed_everything, train_on

    torch.set_num_threads(args.threads)
    shared = Path(os.environ.get("ASTROCLF_SHARED_DATA", ROOT.parent / "shared" / "data"))
    base = TrainConfig.from_yaml(CONFIG, [f"data.light_curves={shared / 'alerts' / 'ztf'}"])
    base = _cfg(base, data={"n_folds": args.folds})
    pre_epochs = 2 if args.quick else args.pretrain_epochs
    ft_epochs = 2 if args.quick else args.finetune_epochs
    quiet = Console(quiet=True)
    started = time.perf_counter()
    batch = read_training_objects(base, quiet)
    ds = TrainingDataset.build(batch, base.preprocessing, [np.inf], "ztf alerts")
    ds.attach_cutouts(read_config_cutouts(base))
    labels = sorted(set(ds.batch.label.tolist()))
    y = np.searchsorted(labels, ds.batch.label)
    counts = {
        "alerts": len(ds),
        "objects": len(set(ds.batch.object_id.tolist())),
        "classes": dict(Counter(ds.batch.label.tolist())),
        "alerts_with_usable_stamps": int(ds.image_ok.sum()),
    }
    print(f"{counts} ({time.perf_counter() - started:.0f} s)", flush=True)
    device = torch.device("cpu")
    train = {"num_threads": args.threads, "batch_size": 64, "learning_rate": 0.002}
    classify = {**train, "objective": "classify", "epochs": ft_epochs, "patience": ft_epochs}
    no_image_args = {**base.model.args, "modalities": ["photometry", "metadata"]}

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for k in range(args.folds):
                t0 = time.perf_counter()
                fold_cfg = _cfg(base, data={"holdout_fold": k, "seed": r})
                splits = grouped_splits(ds.batch, fold_cfg)
                holdout = splits[2]
                seed = 100 * r + k
                run = Path(tmp) / f"r{r}k{k}"
                dirs = {name: run / name for name in ("pre", *ARMS)}
                for d in dirs.values():
                    d.mkdir(parents=True)
                seed_everything(seed)
                pre_cfg = _cfg(fold_cfg, training={**train, "seed": seed, "epochs": pre_epochs})
                train_on(pre_cfg, dirs["pre"], quiet, ds, labels, y, splits, device)
                metrics = {}
                for arm in ARMS:
                    seed_everything(seed)
                    model = (
                        {"init_from": str(dirs["pre"]), "args": {}} if arm == "pretrained" else {}
                    )
                    if arm == "no_image":
                        model = {"args": no_image_args}
                    cfg = _cfg(fold_cfg, model=model, training={**classify, "seed": seed})
                    metrics[arm] = train_on(cfg, dirs[arm], quiet, ds, labels, y, splits, device)
                pre, record = load_run(dirs["pre"])
                family = family_of(record.model_name)
                extras = model_extras(family, pre, ds)
                emb = embed_dataset(pre, family, ds, holdout, device, extras)
                row = {"repeat": r, "fold": k, "n_holdout": len(holdout)}
                for arm in ARMS:
                    h = metrics[arm]["holdout"]
                    row[f"bacc_{arm}"] = balanced_accuracy(h["confusion_matrix"])
                    row[f"macro_f1_{arm}"] = h["macro_f1"]
                row["recall10_image_to_lc"] = recall_at_k(emb["image"], emb["photometry"])
                row["recall10_random"] = min(10, len(holdout)) / len(holdout)
                row["seconds"] = round(time.perf_counter() - t0, 1)
                rows.append(row)
                Path(f"{args.out}.partial.json").write_text(json.dumps(rows, indent=1))
                print(
                    f"repeat {r} fold {k}: balanced accuracy "
                    + ", ".join(f"{a} {row[f'bacc_{a}']:.3f}" for a in ARMS)
                    + f"; image->LC recall@10 {row['recall10_image_to_lc']:.3f} (random "
                    f"{row['recall10_random']:.3f}) ({row['seconds']:.0f} s)",
                    flush=True,
                )

    def column(name: str) -> np.ndarray:
        return np.array([row[name] for row in rows])

    result = {
        "benchmark": "alert_clip",
        "command": " ".join(["python -m benchmarks.alert_clip", *sys.argv[1:]]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": args.threads,
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "config": str(CONFIG.relative_to(ROOT)),
        "model_args": base.model.args,
        "epochs": {"pretrain": pre_epochs, "finetune": ft_epochs},
        "data": counts,
        "protocol": f"{args.repeats} x {args.folds} folds grouped by object, stratified",
        "balanced_accuracy": {a: summary(column(f"bacc_{a}")) for a in ARMS},
        "macro_f1": {a: summary(column(f"macro_f1_{a}")) for a in ARMS},
        "paired_balanced_accuracy": {
            "pretrained - scratch": summary(column("bacc_pretrained") - column("bacc_scratch")),
            "scratch - no_image": summary(column("bacc_scratch") - column("bacc_no_image")),
        },
        "recall10_image_to_lc": summary(column("recall10_image_to_lc")),
        "recall10_random": summary(column("recall10_random")),
        "folds": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=1))
    lines = [
        "| model (hold-out folds) | balanced accuracy | macro F1 |",
        "|---|---|---|",
    ]
    names = {
        "pretrained": "stamps + LC + metadata, CLIP-pretrained then fine-tuned",
        "scratch": "stamps + LC + metadata, from scratch",
        "no_image": "LC + metadata (no image tower), from scratch",
    }
    for a in ARMS:
        b, f = result["balanced_accuracy"][a], result["macro_f1"][a]
        lines.append(
            f"| {names[a]} | {b['mean']:.3f} ± {b['std']:.3f} | {f['mean']:.3f} ± {f['std']:.3f} |"
        )
    for name, d in result["paired_balanced_accuracy"].items():
        lines.append(f"\nPaired {name}: {d['mean']:+.3f} ± {d['se']:.3f} (SE, {d['n']} folds)")
    rec, rnd = result["recall10_image_to_lc"], result["recall10_random"]
    lines.append(
        f"\nImage -> light curve recall@10 (pretrained): {rec['mean']:.3f} ± {rec['std']:.3f} "
        f"(random {rnd['mean']:.3f})"
    )
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    Path(f"{args.out}.partial.json").unlink(missing_ok=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
