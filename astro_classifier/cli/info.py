"""`astroclf info` and `astroclf models`: what a model is and which ones ship."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from astro_classifier.cli.common import console, user_errors
from astro_classifier.inference.model import read_metadata, shipped_models


def info_command(
    model: str = typer.Argument(..., help="Shipped model name or path to an .onnx file."),
    as_json: bool = typer.Option(False, "--json", help="Print the full metadata as JSON."),
) -> None:
    """Print a model's metadata: labels, bands, inputs, preprocessing, training data, metrics."""
    with user_errors():
        meta = read_metadata(model)
    if as_json:
        typer.echo(json.dumps(meta.model_dump(mode="json"), indent=2))
        return
    table = Table(show_header=False, title=f"{meta.name} {meta.version}")
    table.add_column(style="bold")
    table.add_column()
    spec = meta.preprocessing
    rows = {
        "architecture": meta.architecture,
        "precision": meta.precision,
        "classes": f"{len(meta.labels)}: {', '.join(meta.labels)}",
        "bands": " ".join(meta.bands),
        "inputs": "; ".join(f"{i.name} {i.dtype} {i.shape}" for i in meta.inputs),
        "tabular features": f"{len(meta.feature_names)} (metadata: {', '.join(spec.metadata_features) or 'none'})",
        "max length": f"{spec.max_length} points, buckets {meta.length_buckets}",
        "flux scale": f"asinh(flux / {spec.flux_scale_njy:g} nJy)",
        "light curves": "binned to one point per band and night" if spec.nightly_bin else "as read",
        "masked features": ", ".join(spec.masked_features) or "none",
        "training data": ", ".join(f"{k}={v}" for k, v in meta.training_data.items()),
        "written by": f"astroclf {meta.package_version} at {meta.created_at}",
    }
    for split in ("holdout", "validation"):
        if split in meta.metrics:
            m = meta.metrics[split]
            rows[f"{split} metrics"] = (
                f"macro F1 {m['macro_f1']:.3f}, accuracy {m['accuracy']:.3f}, "
                f"log loss {m['log_loss']:.3f} ({m['n_objects']} objects)"
            )
    if meta.broad_classes:
        kinds: dict[str, list[str]] = {}
        for label, kind in meta.broad_classes.items():
            kinds.setdefault(kind, []).append(label)
        rows["broad classes"] = "; ".join(f"{k}: {', '.join(v)}" for k, v in kinds.items())
    if meta.calibration:
        c = meta.calibration
        rows["calibration"] = (
            f"temperature {c.temperature:.3f} ({c.n_objects} objects: {c.fitted_on}); "
            f"ECE {c.ece_before:.3f} -> {c.ece_after:.3f}"
        )
    if meta.ood:
        o = meta.ood
        below = f" ({o.quantile:.0%} of validation objects below)" if o.quantile else ""
        rows["abstains when"] = (
            f"{o.score} score > {o.threshold:.3f}{below}, fewer than {o.min_points} points, "
            "or a known solar-system object"
        )
        if o.fitted_on:
            rows["OOD score fitted on"] = o.fitted_on
    for key, value in rows.items():
        table.add_row(key, str(value))
    console.print(table)


def models_command() -> None:
    """List the models shipped inside the package."""
    table = Table(title="shipped models")
    for column in ("name", "version", "bands", "classes", "file"):
        table.add_column(column)
    for name, path in shipped_models().items():
        meta = read_metadata(path)
        table.add_row(name, meta.version, " ".join(meta.bands), str(len(meta.labels)), str(path))
    console.print(table)
