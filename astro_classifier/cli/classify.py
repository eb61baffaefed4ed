"""`astroclf classify`: classify light-curve or alert files into a Parquet table."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import typer
from rich.table import Table

from astro_classifier.cli.common import atomic_output, console, user_errors
from astro_classifier.core.errors import InputError
from astro_classifier.core.progress import progress_bar
from astro_classifier.formats.registry import FORMATS, attach_cutouts, read_light_curves
from astro_classifier.inference.classify import classify
from astro_classifier.inference.model import LoadedModel
from astro_classifier.inference.predictions import Predictions

DEFAULT_MODEL = "atat-lsst"


def classify_command(
    inputs: list[Path] = typer.Argument(
        ...,
        help="Light-curve or alert files: ZTF/Rubin alert Avro containers or Parquet rows, "
        "Rubin wire-format messages, astroclf JSON alerts, PLAsTiCC CSV/Parquet, long "
        "Parquet, EROS-1 (format detected from each file's content).",
    ),
    output: Path = typer.Option(
        ..., "-o", "--output", help="Parquet file to write (one row per object)."
    ),
    model: str = typer.Option(
        DEFAULT_MODEL, "--model", "-m", help="Shipped model name or path to an .onnx file."
    ),
    provider: str = typer.Option("auto", help="ONNX Runtime provider: auto, cpu or cuda."),
    precision: str = typer.Option(
        "auto",
        help="auto: the model's float16 companion (fp16/<file>) on CUDA when it has one, "
        "float32 otherwise; or fp32, fp16.",
    ),
    format: str | None = typer.Option(
        None, "--format", "-f", help=f"Input format (detected when omitted): {', '.join(FORMATS)}."
    ),
    metadata: Path | None = typer.Option(
        None, "--metadata", help="Object table for PLAsTiCC-format or long-format light curves."
    ),
    schema_dir: Path | None = typer.Option(
        None, "--schema-dir", help="Rubin schema directory for wire-format messages."
    ),
    batch_size: int = typer.Option(512, min=1, help="Objects per ONNX Runtime call."),
) -> None:
    """Classify every object in INPUTS with an ONNX model and write one row per object.

    Output columns: object_id, alert_id, model, model_version, class, probability, one
    prob_<label> column per class (calibrated; they sum to 1), broad_class with
    prob_transient, prob_stochastic, prob_periodic, then ood_score and abstain (true when the
    model does not know: unlike its training data, fewer points than it needs, or a known
    solar-system object). Objects that cannot be classified and points that cannot be used
    are counted in the summary, never silently dropped; a run that classifies nothing exits
    non-zero and writes nothing.
    """
    if provider not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter("provider must be auto, cpu or cuda", param_hint="--provider")
    if precision not in ("auto", "fp32", "fp16"):
        raise typer.BadParameter("precision must be auto, fp32 or fp16", param_hint="--precision")
    if format is not None and format not in FORMATS:
        raise typer.BadParameter(
            f"unknown format {format!r}; expected one of {', '.join(FORMATS)}",
            param_hint="--format",
        )

    with user_errors():
        loaded = LoadedModel.load(
            model,
            provider=provider,
            precision=precision,  # type: ignore[arg-type]
        )
        started = time.perf_counter()
        batch = read_light_curves(inputs, format=format, metadata=metadata, schema_dir=schema_dir)
        if loaded.needs_images:  # stamps are decoded only for a model with an image tower
            attach_cutouts(batch, inputs, format, schema_dir, int(loaded.metadata.image_size or 63))
        read_seconds = time.perf_counter() - started
        with progress_bar("classifying", console) as bar:
            task = bar.add_task("", total=len(batch))
            result = classify(
                batch,
                loaded,
                batch_size=batch_size,
                progress=lambda done: bar.update(task, completed=done),
            )
        if len(result) == 0:
            print_summary(result, loaded, batch.object_id, read_seconds, output=None)
            raise InputError(
                ", ".join(map(str, inputs)),
                f"none of the {len(batch)} object(s) read could be classified by "
                f"{loaded.metadata.name} (reasons above); no output written",
            )
        with atomic_output(output) as tmp:
            pq.write_table(result.to_arrow(), tmp)
    print_summary(
        result, loaded, object_ids=batch.object_id, read_seconds=read_seconds, output=output
    )


def print_summary(
    result: Predictions,
    model: LoadedModel,
    object_ids: np.ndarray,
    read_seconds: float,
    output: Path | None,
) -> None:
    n_input = len(object_ids)
    meta = model.metadata
    n = len(result)
    counts = Counter(result.classes.tolist())  # classes in order of first appearance
    table = Table(title=f"{n} of {n_input} objects classified by {meta.name} {meta.version}")
    table.add_column("class")
    table.add_column("objects", justify="right")
    table.add_column("share", justify="right")
    for name, count in counts.most_common():
        table.add_row(name, str(count), f"{100 * count / n:.1f}%")
    console.print(table)
    for reason, count in result.skipped.items():
        ids = object_ids[result.skipped_rows[reason]].tolist()
        shown = ", ".join(ids[:5]) + (" …" if len(ids) > 5 else "")
        console.print(f"[yellow]skipped {count} object(s): {reason}[/yellow] ({shown})")
    if result.dropped_points:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(result.dropped_points.items()))
        console.print(
            f"[yellow]dropped {sum(result.dropped_points.values())} point(s) that cannot be "
            f"used[/yellow] ({reasons})"
        )
    if result.points_outside_bands:
        console.print(
            f"[dim]{result.points_outside_bands} points in bands {meta.name} does not use "
            f"(it uses {' '.join(meta.bands)}) were ignored[/dim]"
        )
    if result.abstained:
        n_abstain = int(result.abstain.sum())
        reasons = ", ".join(f"{reason}: {c}" for reason, c in result.abstained.most_common())
        console.print(
            f"[yellow]abstain on {n_abstain} of {n} object(s)[/yellow] ({reasons}); "
            "their rows carry abstain = true"
        )
    if model.needs_images:
        without = sum(result.without_images.values())
        reasons = ", ".join(f"{r}: {c}" for r, c in result.without_images.most_common())
        console.print(
            f"images: {n - without} of {n} object(s) classified with their stamps"
            + (f"; [yellow]{without} without[/yellow] ({reasons})" if without else "")
        )
    t = result.timings
    rate = n / t.total if t.total else float("nan")
    console.print(
        f"read {read_seconds:.2f} s, features {t.features:.2f} s, inference {t.inference:.2f} s "
        f"({rate:,.0f} objects/s, padding efficiency {result.padding_efficiency:.2f}, "
        f"{', '.join(p.replace('ExecutionProvider', '') for p in model.providers)}, "
        f"{model.metadata.precision})" + (f" -> {output}" if output is not None else "")
    )
