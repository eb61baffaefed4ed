"""`astroclf evaluate`: metrics of a model on labelled data, whole and truncated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from astro_classifier.catalogs.splits import stratified_folds
from astro_classifier.cli.common import console, parse_days, user_errors
from astro_classifier.core.errors import InputError
from astro_classifier.evaluation.evaluate import evaluate
from astro_classifier.evaluation.plots import (
    plot_confusion_matrix,
    plot_metrics_vs_truncation,
    plot_reliability_diagram,
)
from astro_classifier.formats.registry import REGISTRY, detect_format, read_light_curves
from astro_classifier.inference.model import LoadedModel


def evaluate_command(
    model: str = typer.Argument(..., help="Shipped model name or path to an .onnx file."),
    data: list[Path] = typer.Argument(
        ..., help="Labelled light-curve files (labels from the object table)."
    ),
    metadata: Path | None = typer.Option(
        None,
        "--metadata",
        help="Object table with labels (PLAsTiCC `target` or long-format `label`).",
    ),
    format: str | None = typer.Option(
        None, "--format", "-f", help="Input format (detected when omitted)."
    ),
    truncate_days: str | None = typer.Option(
        None,
        "--truncate-days",
        help="Also evaluate light curves cut this many days after first detection, e.g. 8,16,32,64.",
    ),
    holdout_fold: int | None = typer.Option(
        None,
        "--holdout-fold",
        help="Evaluate only this stratified fold (the one a training run held out).",
    ),
    folds: int = typer.Option(5, help="Number of stratified folds for --holdout-fold."),
    seed: int = typer.Option(0, help="Seed of the stratified folds for --holdout-fold."),
    output_dir: Path | None = typer.Option(
        None, "-o", "--output-dir", help="Write metrics.json and PNG plots here."
    ),
    provider: str = typer.Option("auto", help="ONNX Runtime provider: auto, cpu or cuda."),
    label_column: str | None = typer.Option(
        None,
        "--label-column",
        help="Object-table column holding the true classes (default: `target` for PLAsTiCC, "
        "`label` for long format; PLAsTiCC test files carry the truth in `true_target`).",
    ),
) -> None:
    """Accuracy, macro F1, per-class recall and class-balanced log loss (PLAsTiCC style)
    of MODEL on labelled DATA, with a confusion matrix; optionally for young light curves.
    Also the calibration error (ECE, 15 bins, top label) with a reliability diagram, the
    broad-class accuracy (transient/stochastic/periodic), the abstain rate and the accuracy
    on the objects the model does not abstain on."""
    days = parse_days(truncate_days)
    with user_errors():
        loaded = LoadedModel.load(model, provider=provider)  # type: ignore[arg-type]
        batch = read_light_curves(data, format=format, metadata=metadata, label_column=label_column)
        source = metadata or ", ".join(map(str, data))
        if batch.label is None:
            raise InputError(
                source,
                f"no labels found in column {label_column or 'target/label'}; expected an "
                "object table with labels (PLAsTiCC `target`, long-format `label`, or the "
                "column named by --label-column), given with --metadata",
            )
        formats = {format or detect_format(path) for path in data}
        column = label_column or ", ".join(
            sorted({str(REGISTRY[name].label_column) for name in formats})
        )
        console.print(
            f"labels: column {column} of {source}; "
            f"{int((batch.label != '').sum())} of {len(batch)} objects labelled"
        )
        if holdout_fold is not None:
            fold = stratified_folds(batch.label, folds, seed=seed)
            batch = batch.select(np.flatnonzero(fold == holdout_fold))
        result = evaluate(batch, loaded, days)

    labels = loaded.metadata.labels
    table = Table(title=f"{loaded.metadata.name} on {result.whole.n_objects} objects")
    for column in ("light curves", "objects", "accuracy", "macro F1", "log loss"):
        table.add_column(column, justify="right")
    rows = [("whole", result.whole)] + [(f"{d:g} days", m) for d, m in result.by_truncation.items()]
    for name, m in rows:
        table.add_row(
            name, str(m.n_objects), f"{m.accuracy:.3f}", f"{m.macro_f1:.3f}", f"{m.log_loss:.3f}"
        )
    console.print(table)
    recall = Table(title="per-class recall (whole light curves)")
    for column in ("class", "objects", "recall", "precision", "F1"):
        recall.add_column(column, justify="right")
    w = result.whole
    for label in labels:
        if w.support.get(label):
            recall.add_row(
                label,
                str(w.support[label]),
                f"{w.recall[label]:.3f}",
                f"{w.precision[label]:.3f}",
                f"{w.f1[label]:.3f}",
            )
    console.print(recall)
    trust = Table(title="calibration, broad kind and abstention")
    for column in ("light curves", "ECE", "broad acc.", "broad objects", "abstain", "acc. kept"):
        trust.add_column(column, justify="right")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    trust_rows = [("whole", result.trust)] + [
        (f"{d:g} days", result.trust_by_truncation.get(d)) for d in result.by_truncation
    ]
    for name, t in trust_rows:
        if t is not None:
            trust.add_row(
                name,
                f"{t.ece:.4f}",
                fmt(t.broad_accuracy),
                str(t.n_broad),
                f"{100 * t.abstain_rate:.1f}%",
                fmt(t.accuracy_kept),
            )
    console.print(trust)
    if result.trust is not None and result.trust.abstained:
        reasons = ", ".join(f"{r}: {c}" for r, c in result.trust.abstained.items())
        console.print(f"abstained (whole light curves): {reasons}")
    for reason, count in result.excluded.items():
        console.print(f"[yellow]not evaluated: {count} object(s): {reason}[/yellow]")
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.json").write_text(json.dumps(result.to_dict(), indent=2))
        plot_confusion_matrix(
            np.asarray(w.confusion_matrix),
            labels,
            output_dir / "confusion_matrix.png",
            title=f"{loaded.metadata.name}: whole light curves",
        )
        if result.trust is not None:
            curve = result.trust.reliability
            plot_reliability_diagram(
                curve.edges,
                curve.confidence,
                curve.accuracy,
                curve.counts,
                output_dir / "reliability.png",
                title=f"{loaded.metadata.name}: whole light curves",
            )
        if result.by_truncation:
            plot_metrics_vs_truncation(
                [
                    {"truncate_days": d, "accuracy": m.accuracy, "macro_f1": m.macro_f1}
                    for d, m in result.by_truncation.items()
                ],
                output_dir / "metrics_vs_truncation.png",
            )
        console.print(f"wrote {output_dir}/metrics.json and plots")
