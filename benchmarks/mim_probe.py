"""Image cutouts as a modality: masked-image-modelling pretraining of the
tiny ViT of :mod:`astro_classifier.families.image` (:mod:`astro_classifier.training.mim`) on every alert cutout under the shared
``alerts`` folder, then linear probes on the frozen embeddings against probes on the raw
pixels, and the encoder's CPU speed through ONNX Runtime.

1. Decode every cutout (:func:`astro_classifier.data.cutouts.read_cutouts`): ZTF and Rubin
   alerts, failures counted by reason.
2. SimMIM pretraining on all usable alerts (3 stamps each); a held-out 10 % with fixed masks
   gives the validation loss, beside the loss of predicting each stamp's median.
   Writes ``mim_probe_loss.png`` and ``mim_probe_reconstructions.png``.
3. Linear probes (standardised features, L2 logistic regression, C chosen by an inner
   3-fold grouped CV on the training folds) with 5-fold ``StratifiedGroupKFold`` grouped by
   object, repeated over seeds, on the ZTF alerts (the labels come from ZTF fields) for
   ``solar_system`` (ssdistnr < 5"), ``point_source`` (sgscore1 > 0.5 and distpsnr1 < 1"),
   ``real`` (drb > 0.5, a proxy). Features: the MIM encoder's pooled embedding, the same
   encoder untrained (random weights: what pretraining adds), and the raw normalised pixels.
4. ONNX export of the encoder, parity with torch, stamps/s with ONNX Runtime at 1 and 2
   threads.

Usage: ``python -m benchmarks.mim_probe`` (about 10 min on 2 busy CPU cores) or ``--quick``
(a smoke run: 3 epochs, 1 seed). Torch runs on one thread: on 2 cores shared with other
work, two threads were 10x slower per epoch than one. Writes
``benchmarks/results/mim_probe.json`` (``mim_probe_quick.json`` with ``--quick``) and the
PNGs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULTS = PROJECT_ROOT / "benchmarks" / "results"
LABELS = ("solar_system", "point_source", "real")
C_GRID = {"mim": (0.001, 0.01, 0.1, 1.0), "random_init": (0.001, 0.01, 0.1, 1.0)}
C_GRID_RAW = (0.001, 0.01, 0.1)  # 11,907 features: stronger regularisation, and C = 1 is slow


def _shared_data() -> Path:
    return Path(os.environ.get("ASTROCLF_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


def _fit_predict(x_tr, y_tr, x_te, c):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
    model.fit(x_tr, y_tr)
    return model.predict_proba(x_te)[:, 1]


def _choose_c(x, y, groups, grid, seed):
    """The C of ``grid`` with the best mean AUC over an inner 3-fold grouped CV."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    inner = StratifiedGroupKFold(3, shuffle=True, random_state=seed + 1000)
    scores = {c: [] for c in grid}
    for tr, te in inner.split(x, y, groups):
        if len(np.unique(y[te])) < 2:
            continue
        for c in grid:
            scores[c].append(roc_auc_score(y[te], _fit_predict(x[tr], y[tr], x[te], c)))
    return max(grid, key=lambda c: np.mean(scores[c]) if scores[c] else -1.0)


def probe(features: dict[str, np.ndarray], y: np.ndarray, groups: np.ndarray, seeds) -> dict:
    """Outer 5-fold StratifiedGroupKFold per seed; per feature set: fold AUCs, the pooled
    out-of-fold AUC per seed, chosen Cs; paired fold differences against the raw pixels."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    out = {name: {"fold_auc": [], "oof_auc": [], "c": []} for name in features}
    for seed in seeds:
        outer = StratifiedGroupKFold(5, shuffle=True, random_state=seed)
        oof = {name: np.zeros(len(y)) for name in features}
        for tr, te in outer.split(next(iter(features.values())), y, groups):
            for name, x in features.items():
                grid = C_GRID_RAW if name == "raw_pixels" else C_GRID[name]
                c = _choose_c(x[tr], y[tr], groups[tr], grid, seed)
                p = _fit_predict(x[tr], y[tr], x[te], c)
                oof[name][te] = p
                out[name]["fold_auc"].append(float(roc_auc_score(y[te], p)))
                out[name]["c"].append(c)
        for name in features:
            out[name]["oof_auc"].append(float(roc_auc_score(y, oof[name])))
    for name, r in out.items():
        f = np.array(r["fold_auc"])
        r["auc_mean"], r["auc_std_folds"] = float(f.mean()), float(f.std(ddof=1))
        r["oof_auc_mean"] = float(np.mean(r["oof_auc"]))
        if name != "raw_pixels" and "raw_pixels" in out:
            d = f - np.array(out["raw_pixels"]["fold_auc"])
            r["minus_raw_mean"], r["minus_raw_std"] = float(d.mean()), float(d.std(ddof=1))
    return out


def plot_loss(result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(result.train_loss) + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, result.train_loss, label="train (random masks, augmented)")
    if result.val_loss:
        ax.plot(epochs, result.val_loss, label=f"held-out {result.n_val} alerts (fixed masks)")
        ax.axhline(result.val_baseline, color="grey", ls="--", label="predict the median (0)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE on masked valid pixels")
    ax.set_title("SimMIM pretraining on alert cutouts")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reconstructions(model, images, valid, surveys, path: Path, seed: int = 0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from astro_classifier.families.image import mask_to_pixels, random_patch_mask

    cfg = model.encoder.config
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(images)
    mask = random_patch_mask(len(x), cfg.n_patches, 0.6, gen)
    with torch.no_grad():
        rec = model.reconstruct(x, mask).numpy()
    pix = mask_to_pixels(mask, cfg).numpy()[:, 0] > 0
    names = ("science", "template", "difference")
    fig, axes = plt.subplots(len(x), 9, figsize=(13, 1.55 * len(x)))
    for i in range(len(x)):
        for c in range(3):
            orig = images[i, c]
            lo, hi = np.percentile(orig[valid[i, c]], [1, 99.5]) if valid[i, c].any() else (-1, 1)
            masked = np.where(pix[i], np.nan, orig)
            # the visible patches are shown as given; the masked ones as predicted
            shown = np.where(pix[i], rec[i, c], orig)
            for k, (img, title) in enumerate(
                ((orig, "original"), (masked, "masked"), (shown, "reconstruction"))
            ):
                ax = axes[i, 3 * c + k]
                ax.imshow(img, origin="lower", cmap="gray", vmin=lo, vmax=hi)
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(f"{names[c]}\n{title}", fontsize=7)
        axes[i, 0].set_ylabel(surveys[i], fontsize=7)
    fig.suptitle("held-out alerts: 60 % of the 7x7-pixel patches masked", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def onnx_speed(encoder, images: np.ndarray, batch: int = 256, repeats: int = 5) -> dict:
    import onnxruntime as ort
    import torch

    from astro_classifier.export.image_encoder import export_image_encoder

    with tempfile.TemporaryDirectory() as tmp:
        path = export_image_encoder(encoder, Path(tmp) / "image_encoder.onnx")
        x = np.ascontiguousarray(images[:batch])
        with torch.no_grad():
            ref = encoder(torch.from_numpy(x)).numpy()
        out: dict = {"batch": batch, "file_bytes": path.stat().st_size}
        for threads in (1, 2):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            got = sess.run(None, {"images": x})[0]
            out["parity_max_abs"] = float(np.abs(got - ref).max())
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                sess.run(None, {"images": x})
                times.append(time.perf_counter() - t)
            best, median = min(times), float(np.median(times))
            out[f"threads_{threads}"] = {
                "alerts_per_s_median": len(x) / median,
                "stamps_per_s_median": 3 * len(x) / median,
                "alerts_per_s_best": len(x) / best,
            }
            single = sess.run(None, {"images": x[:1]})  # one-alert latency
            t = time.perf_counter()
            for _ in range(50):
                single = sess.run(None, {"images": x[:1]})
            out[f"threads_{threads}"]["one_alert_ms"] = (time.perf_counter() - t) / 50 * 1e3
            del single
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 epochs, 1 seed (smoke run)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    epochs, seeds = (3, 1) if args.quick else (args.epochs, args.seeds)

    import torch

    torch.set_num_threads(1)
    from astro_classifier.core.cutouts import STAMPS
    from astro_classifier.families.image import ImageEncoder, ImageEncoderConfig, embed_images
    from astro_classifier.formats.registry import read_cutouts
    from astro_classifier.training.mim import MIMConfig, pretrain_mim

    alerts = _shared_data() / "alerts"
    t0 = time.perf_counter()
    batch = read_cutouts(alerts)
    decode_s = time.perf_counter() - t0
    usable = batch.take(batch.ok)
    print(
        f"{len(batch)} alerts read in {decode_s:.1f} s: {int(batch.ok.sum())} usable, "
        f"failing stamps {batch.failures}, skipped files {batch.skipped_files}"
    )
    data = {
        "alerts": len(batch),
        "usable_alerts": len(usable),
        "usable_stamps": 3 * len(usable),
        "objects": len(set(usable.object_id)),
        "by_survey": {
            s: {
                "alerts": int((batch.survey == s).sum()),
                "usable": int((usable.survey == s).sum()),
                "objects": len(set(usable.object_id[usable.survey == s])),
            }
            for s in ("ztf", "rubin")
        },
        "failing_stamps": batch.failures,
        "skipped_files": batch.skipped_files,
        "decode_seconds": decode_s,
        "decode_stamps_per_s": 3 * len(batch) / decode_s,
        "channels": list(STAMPS),
    }

    cfg = MIMConfig(encoder=ImageEncoderConfig(), epochs=epochs, seed=0)
    result = pretrain_mim(usable.images, usable.valid, cfg, log=print)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    plot_loss(result, RESULTS / f"mim_probe{suffix}_loss.png")
    gen = np.random.default_rng(1)
    held_out = np.zeros(len(usable), bool)
    held_out[result.val_index] = True
    pick = np.concatenate(
        [
            gen.choice(np.flatnonzero(held_out & (usable.survey == s)), k, replace=False)
            for s, k in (("ztf", 3), ("rubin", 2))
        ]
    )
    plot_reconstructions(
        result.model,
        usable.images[pick],
        usable.valid[pick],
        list(usable.survey[pick]),
        RESULTS / f"mim_probe{suffix}_reconstructions.png",
    )
    pretrain = {
        "config": result.config,
        "n_train": result.n_train,
        "n_val": result.n_val,
        "seconds": result.seconds,
        "train_loss": result.train_loss,
        "val_loss": result.val_loss,
        "val_median_baseline": result.val_baseline,
        "parameters": sum(p.numel() for p in result.encoder.parameters()),
    }

    ztf = usable.take(usable.survey == "ztf")
    torch.manual_seed(0)
    features = {
        "mim": embed_images(result.encoder, ztf.images),
        "random_init": embed_images(ImageEncoder(cfg.encoder), ztf.images),
        "raw_pixels": ztf.images.reshape(len(ztf), -1),
    }
    labels = ztf.labels()
    probes = {}
    for name in LABELS:
        known = ~np.isnan(labels[name])
        y = labels[name][known].astype(int)
        t = time.perf_counter()
        r = probe({k: v[known] for k, v in features.items()}, y, ztf.object_id[known], range(seeds))
        probes[name] = {
            "alerts": int(known.sum()),
            "objects": len(set(ztf.object_id[known])),
            "positives": int(y.sum()),
            "prevalence": float(y.mean()),
            "positive_objects": len(set(ztf.object_id[known][y == 1])),
            "seconds": time.perf_counter() - t,
            **r,
        }
        print(
            f"{name}: prevalence {y.mean():.3f} ({y.sum()}/{len(y)}); "
            + ", ".join(
                f"{k} AUC {v['auc_mean']:.3f} ± {v['auc_std_folds']:.3f}" for k, v in r.items()
            )
        )

    speed = onnx_speed(result.encoder, usable.images)
    print(f"ONNX Runtime: {speed}")
    import onnxruntime
    import sklearn

    from astro_classifier.core.cutouts import STAMP_SIZE

    out = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.mim_probe" + (" --quick" if args.quick else ""),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "note": "2 CPU cores shared with another long benchmark; torch on 1 thread",
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
            "astropy": __import__("astropy").__version__,
        },
        "stamp_size": STAMP_SIZE,
        "data": data,
        "pretraining": pretrain,
        "probe_setup": {
            "alerts": "ZTF alerts with usable cutouts",
            "outer": "StratifiedGroupKFold(5, shuffle) grouped by objectId",
            "seeds": seeds,
            "inner": "StratifiedGroupKFold(3) on the training folds chooses C by AUC",
            "c_grid": {**C_GRID, "raw_pixels": C_GRID_RAW},
            "model": "StandardScaler + LogisticRegression (L2)",
        },
        "probes": probes,
        "onnx": speed,
    }
    path = RESULTS / f"mim_probe{suffix}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
