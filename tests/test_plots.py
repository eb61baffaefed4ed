"""Each plot function writes a non-empty PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from astro_classifier.evaluation.plots import (
    plot_confusion_matrix,
    plot_learning_curves,
    plot_metrics_vs_truncation,
)
from astro_classifier.formats.plasticc import PLASTICC_CLASSES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_confusion_matrix_png(tmp_path: Path) -> None:
    labels = list(PLASTICC_CLASSES.values())  # 14 classes
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 30, (14, 14)) + np.diag(rng.integers(50, 300, 14))
    cm[3] = 0  # a class without objects must not break row normalisation
    out = plot_confusion_matrix(cm, labels, tmp_path / "sub" / "cm.png", title="test")
    assert _is_png(out)


def test_learning_curves_png(tmp_path: Path) -> None:
    history = [
        {"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.2 / e + 0.01 * e, "val_macro_f1": 0.1 * e}
        for e in range(1, 8)
    ]
    history[0]["val_macro_f1"] = None  # missing values are skipped
    assert _is_png(plot_learning_curves(history, tmp_path / "curves.png"))


def test_metrics_vs_truncation_png(tmp_path: Path) -> None:
    rows = [
        {"truncate_days": d, "accuracy": 0.4 + 0.05 * i, "macro_f1": 0.3 + 0.05 * i}
        for i, d in enumerate([2, 4, 8, 16, 32, 64, 128])
    ]
    rows.append({"truncate_days": float("inf"), "accuracy": 0.8, "macro_f1": 0.75})
    assert _is_png(plot_metrics_vs_truncation(rows, tmp_path / "trunc.png"))
