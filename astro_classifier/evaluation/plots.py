"""PNG pictures written next to the numbers: confusion matrix, learning curves, truncation,
reliability diagram.

matplotlib is imported inside each function and drives an Agg canvas directly (no pyplot,
no global backend switch), so importing this module costs nothing and works headless.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _new_figure(width: float, height: float) -> Figure:
    """A figure bound to an Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, format="png")
    return path


def plot_confusion_matrix(
    cm: np.ndarray | Sequence[Sequence[int]],
    labels: Sequence[str],
    path: str | Path,
    title: str = "Confusion matrix",
) -> Path:
    """Write a confusion matrix as PNG; returns ``path``.

    ``cm`` (C, C) counts, row = true class, column = predicted class. Colours show each
    row normalised to its class total (recall on the diagonal); cells carry the raw counts.
    """
    cm = np.asarray(cm, dtype=np.int64)
    n = len(labels)
    if cm.shape != (n, n):
        raise ValueError(
            f"confusion matrix has shape {cm.shape}, expected ({n}, {n}) for the labels"
        )
    totals = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, totals, out=np.zeros(cm.shape, float), where=totals > 0)

    side = max(4.0, 0.55 * n + 2.5)
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("fraction of true class")
    font = 9 if n <= 10 else 7
    for i in range(n):
        for j in range(n):
            if cm[i, j] == 0:
                continue
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=font,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(n), [str(label) for label in labels], rotation=45, ha="right")
    ax.set_yticks(
        range(n), [f"{label} ({t})" for label, t in zip(labels, totals[:, 0], strict=True)]
    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (objects)")
    accuracy = np.trace(cm) / max(int(cm.sum()), 1)
    ax.set_title(f"{title}\n{int(cm.sum())} objects, accuracy {accuracy:.3f}")
    return _save(fig, path)


def _column(rows: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    """``rows[i][key]`` as float (NaN where missing or None)."""
    values = [row.get(key) for row in rows]
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def plot_learning_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write training curves as PNG; returns ``path``.

    ``history`` holds one dict per epoch with keys ``epoch``, ``train_loss``, ``val_loss``
    and ``val_macro_f1`` (missing or None values are left out). Left panel: losses;
    right panel: validation macro F1, best epoch marked.
    """
    if not history:
        raise ValueError("history is empty: nothing to plot")
    epoch = _column(history, "epoch")
    fig = _new_figure(10.0, 4.0)
    ax_loss, ax_f1 = fig.subplots(1, 2)
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        values = _column(history, key)
        ok = np.isfinite(values)
        if ok.any():
            ax_loss.plot(epoch[ok], values[ok], marker="o", markersize=3, label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("Loss")
    ax_loss.grid(alpha=0.3)
    if ax_loss.lines:
        ax_loss.legend()

    f1 = _column(history, "val_macro_f1")
    ok = np.isfinite(f1)
    if ok.any():
        ax_f1.plot(epoch[ok], f1[ok], marker="o", markersize=3, color="tab:green")
        best = int(np.nanargmax(np.where(ok, f1, np.nan)))
        ax_f1.axvline(epoch[best], color="grey", linestyle="--", linewidth=1)
        ax_f1.set_title(f"Validation macro F1 (best {f1[best]:.3f} at epoch {epoch[best]:g})")
    else:
        ax_f1.set_title("Validation macro F1 (none recorded)")
    ax_f1.set_xlabel("epoch")
    ax_f1.set_ylabel("macro F1")
    ax_f1.grid(alpha=0.3)
    return _save(fig, path)


def plot_metrics_vs_truncation(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write accuracy and macro F1 against light-curve length as PNG; returns ``path``.

    ``rows`` hold ``truncate_days`` (days after first detection kept), ``accuracy`` and
    ``macro_f1``. The x axis is log2. Rows whose ``truncate_days`` is None, infinite or
    not positive (the full light curve) are drawn as dashed horizontal reference lines.
    """
    if not rows:
        raise ValueError("no rows: nothing to plot")
    days = _column(rows, "truncate_days")
    finite = np.isfinite(days) & (days > 0)
    order = np.argsort(np.where(finite, days, np.inf), kind="stable")
    fig = _new_figure(6.5, 4.2)
    ax = fig.add_subplot()
    for key, label, colour in (
        ("accuracy", "accuracy", "tab:blue"),
        ("macro_f1", "macro F1", "tab:orange"),
    ):
        values = _column(rows, key)[order]
        mask = finite[order] & np.isfinite(values)
        if mask.any():
            ax.plot(days[order][mask], values[mask], marker="o", color=colour, label=label)
        full = values[~finite[order] & np.isfinite(values)]
        if len(full):
            ax.axhline(
                full[0],
                color=colour,
                linestyle="--",
                linewidth=1,
                label=f"{label}, full light curve",
            )
    if finite.any():
        ax.set_xscale("log", base=2)
        ticks = days[finite]
        if len(np.unique(ticks)) <= 12:
            ax.set_xticks(np.unique(ticks), [f"{t:g}" for t in np.unique(ticks)])
    ax.set_xlabel("days after first detection (log2 scale)")
    ax.set_ylabel("score")
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Scores on truncated light curves")
    return _save(fig, path)


def plot_reliability_diagram(
    edges: np.ndarray | Sequence[float],
    confidence: np.ndarray | Sequence[float],
    accuracy: np.ndarray | Sequence[float],
    counts: np.ndarray | Sequence[int],
    path: str | Path,
    title: str = "Reliability",
) -> Path:
    """Write a top-label reliability diagram as PNG; returns ``path``.

    Per confidence bin (``edges``, n_bins + 1 values): the accuracy of its objects as a bar
    spanning the bin, a hatched bar from there to their mean confidence, the object count
    at the top of the bar; the
    diagonal is perfect calibration. The title carries the expected calibration error
    (sum of count-weighted |accuracy - confidence|). Empty bins (NaN) are left blank.
    Arguments are the fields of :class:`astro_classifier.evaluation.metrics.ReliabilityCurve`.
    """
    edges = np.asarray(edges, float)
    confidence = np.asarray(confidence, float)
    accuracy = np.asarray(accuracy, float)
    counts = np.asarray(counts, np.int64)
    n = int(counts.sum())
    used = counts > 0
    ece = float(np.sum(counts[used] * np.abs(accuracy[used] - confidence[used])) / n) if n else 0.0
    fig = _new_figure(5.5, 5.5)
    ax = fig.add_subplot()
    width = np.diff(edges)
    ax.bar(
        edges[:-1][used],
        accuracy[used],
        width=width[used],
        align="edge",
        color="tab:blue",
        alpha=0.7,
        edgecolor="white",
        label="accuracy",
    )
    ax.bar(
        edges[:-1][used],
        confidence[used] - accuracy[used],
        bottom=accuracy[used],
        width=width[used],
        align="edge",
        color="tab:red",
        alpha=0.25,
        edgecolor="tab:red",
        hatch="//",
        label="gap to mean confidence",
    )
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfect calibration")
    for left, w, acc, c in zip(
        edges[:-1][used], width[used], accuracy[used], counts[used], strict=True
    ):
        ax.text(left + w / 2, min(acc + 0.02, 0.97), str(c), ha="center", fontsize=6)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy (top label correct)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{title}\n{n} objects, ECE {ece:.4f} ({len(counts)} bins)")
    return _save(fig, path)


__all__ = [
    "plot_confusion_matrix",
    "plot_learning_curves",
    "plot_metrics_vs_truncation",
    "plot_reliability_diagram",
]
