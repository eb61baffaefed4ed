"""`astroclf classify`: classify light-curve or alert files into a Parquet table.

Three ways through, one output contract:

- files of any format: read whole, classified by ``classify()``, one Parquet file;
- Parquet alert rows (ZTF or Rubin, files or folders of them: a broker's data lake):
  streamed through the Arrow-batch core
  (:func:`astro_classifier.inference.arrow_batches.classify_batches`) a batch of rows at a
  time, so memory stays bounded by the batch, not the lake; rows that cannot be read or
  classified go to an errors file beside the output;
- ``--spark``: the same core on a Spark session (``$SPARK_REMOTE``, or ``--master``), written
  as Parquet folders (:mod:`astro_classifier.spark`).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import typer
from rich.progress import TextColumn
from rich.table import Table

from astro_classifier import spark as spark_adapter
from astro_classifier.cli.common import atomic_output, console, user_errors
from astro_classifier.core.errors import InputError
from astro_classifier.core.progress import progress_bar
from astro_classifier.formats.registry import (
    FORMATS,
    attach_cutouts,
    detect_format,
    read_light_curves,
)
from astro_classifier.inference.arrow_batches import (
    ROW_FORMATS,
    BatchCounts,
    classify_batches,
    project_schema,
    split_errors,
)
from astro_classifier.inference.classify import classify
from astro_classifier.inference.model import LoadedModel, read_metadata
from astro_classifier.inference.predictions import Predictions

DEFAULT_MODEL = "atat-lsst"


def classify_command(
    inputs: list[str] = typer.Argument(
        ...,
        help="Light-curve or alert files: ZTF/Rubin alert Avro containers or Parquet rows "
        "(files or folders: a data lake), Rubin wire-format messages, astroclf JSON alerts, "
        "PLAsTiCC CSV/Parquet, long Parquet, EROS-1 (format detected from each file's "
        "content). With --spark: Parquet files, folders or URIs Spark can read.",
    ),
    output: str = typer.Option(
        ...,
        "-o",
        "--output",
        help="Parquet file to write (one row per object); with --spark, a Parquet folder.",
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
    errors: str | None = typer.Option(
        None,
        "--errors",
        help="Parquet alert rows only: where rows that cannot be read or classified go "
        "(ids, stage, reason, the row as JSON). Default: <output>.errors.parquet beside the "
        "output (--spark: <output>_errors/), written only when there are some.",
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Parquet alert rows: fail on the first row that cannot be read."
    ),
    rows_per_batch: int = typer.Option(
        10_000, min=1, help="Parquet alert rows: rows read and classified at a time (memory)."
    ),
    use_spark: bool = typer.Option(
        False,
        "--spark",
        help="Run on a Spark session: $SPARK_REMOTE (Spark Connect) or --master. Needs the "
        "spark extra; the model must be shipped or a local .onnx (sent with SparkFiles).",
    ),
    master: str | None = typer.Option(
        None, "--master", help="Spark master for --spark (default local[*]), e.g. yarn."
    ),
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

    if use_spark:
        if metadata is not None or (format is not None and format not in ROW_FORMATS):
            raise typer.BadParameter(
                f"--spark reads Parquet alert rows ({', '.join(ROW_FORMATS)}); no object table "
                "and no other format",
                param_hint="--spark",
            )
        with user_errors(ImportError):
            _classify_on_spark(
                inputs,
                output,
                model,
                errors,
                strict,
                master,
                batch_size,
                "cpu" if provider == "auto" else provider,
            )
        return
    paths = [Path(p) for p in inputs]
    output_path = Path(output)
    with user_errors():
        lake = _alert_rows(paths) if format is None or format in ROW_FORMATS else None
        loaded = LoadedModel.load(
            model,
            provider=provider,
            precision=precision,  # type: ignore[arg-type]
        )
        if lake is not None and not loaded.needs_images and metadata is None:
            _classify_lake(*lake, loaded, output_path, errors, strict, batch_size, rows_per_batch)
            return
        started = time.perf_counter()
        batch = read_light_curves(paths, format=format, metadata=metadata, schema_dir=schema_dir)
        if loaded.needs_images:  # stamps are decoded only for a model with an image tower
            attach_cutouts(batch, paths, format, schema_dir, int(loaded.metadata.image_size or 63))
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
        with atomic_output(output_path) as tmp:
            pq.write_table(result.to_arrow(), tmp)
    print_summary(
        result, loaded, object_ids=batch.object_id, read_seconds=read_seconds, output=output_path
    )


# -- Parquet alert rows: a data lake, streamed --------------------------------------------------
def _parquet_files(folder: Path) -> list[Path]:
    """The Parquet files of a folder, recursively, in path order; Spark's and Hadoop's
    bookkeeping files (``_SUCCESS``, ``.crc``, hidden) are left out."""
    return sorted(
        p
        for p in folder.rglob("*.parquet")
        if p.is_file()
        and not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts)
    )


def _alert_rows(paths: list[Path]) -> tuple[str, list[Path]] | None:
    """(format, Parquet files) when every input is Parquet alert rows of one format
    (``ztf-parquet`` or ``rubin-parquet``), as files or folders of files; None otherwise
    (those inputs are read whole, the way every other format is)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = _parquet_files(path)
            if not found:
                return None  # a folder of Avro alerts, say
            files += found
        else:
            files.append(path)
    formats: dict[str, Path] = {}
    for file in files:
        try:
            formats.setdefault(detect_format(file), file)
        except InputError:
            return None  # read_light_curves names the file and what it looks like
    if not set(formats) <= set(ROW_FORMATS):
        return None
    if len(formats) > 1:
        raise InputError(
            ", ".join(map(str, formats.values())),
            f"alert rows of several formats ({', '.join(formats)}); expected one per run",
        )
    return next(iter(formats)), files


def _classify_lake(
    format: str,
    files: list[Path],
    model: LoadedModel,
    output: Path,
    errors: str | None,
    strict: bool,
    batch_size: int,
    rows_per_batch: int,
) -> None:
    """Stream Parquet alert rows through the Arrow-batch core: ``rows_per_batch`` rows at a
    time (only the columns the reader uses), classified rows appended to ``output``, the
    others to the errors file. Memory is bounded by a batch (and a Parquet row group), not
    by the lake. Both files appear only when the run succeeds."""
    errors_path = Path(errors) if errors else output.with_name(output.stem + ".errors.parquet")
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    counts = BatchCounts()
    classes: Counter[str] = Counter()
    abstained = 0
    started = time.perf_counter()
    error_tmp: Path | None = None
    error_writer: pq.ParquetWriter | None = None
    try:
        with atomic_output(output) as tmp:
            writer: pq.ParquetWriter | None = None
            with progress_bar("classifying", console, TextColumn("{task.fields[rate]}")) as bar:
                task = bar.add_task("", total=total, rate="")

                def advance(rows: int) -> None:
                    elapsed = time.perf_counter() - started
                    bar.update(
                        task, advance=rows, rate=f"{(counts.rows + rows) / elapsed:,.0f} rows/s"
                    )

                for file in files:
                    parquet = pq.ParquetFile(file)
                    columns = project_schema(parquet.schema_arrow, format).names
                    batches = parquet.iter_batches(batch_size=rows_per_batch, columns=columns)
                    for result in classify_batches(
                        batches,
                        model,
                        format=format,
                        strict=strict,
                        batch_size=batch_size,
                        n_jobs=-1,
                        source=str(file),
                        counts=counts,
                        progress=advance,
                    ):
                        good, bad = split_errors(result)
                        classes.update(good.column("class").to_pylist())
                        abstained += sum(good.column("abstain").to_pylist())
                        if writer is None:
                            writer = pq.ParquetWriter(tmp, good.schema)
                        writer.write_table(good)
                        if bad.num_rows:
                            if error_writer is None:
                                fd, name = tempfile.mkstemp(
                                    prefix=f".{errors_path.name}.", dir=errors_path.parent
                                )
                                os.close(fd)
                                error_tmp = Path(name)
                                error_writer = pq.ParquetWriter(error_tmp, bad.schema)
                            error_writer.write_table(bad)
            if writer is not None:
                writer.close()
            if counts.classified == 0:
                raise InputError(
                    ", ".join(map(str, files[:3])) + (" …" if len(files) > 3 else ""),
                    f"none of the {counts.rows} alert row(s) could be classified by "
                    f"{model.metadata.name} ({_stages(counts)}); no output written",
                )
        if error_writer is not None and error_tmp is not None:
            error_writer.close()
            error_writer = None
            os.replace(error_tmp, errors_path)
    finally:
        if error_writer is not None:
            error_writer.close()
        if error_tmp is not None and error_tmp.exists():
            error_tmp.unlink()
    seconds = time.perf_counter() - started
    _print_lake_summary(
        counts,
        classes,
        model.metadata.name,
        model.metadata.version,
        seconds,
        output,
        errors_path if counts.failed else None,
        abstained,
    )


def _stages(counts: BatchCounts) -> str:
    return ", ".join(f"{stage}: {n}" for stage, n in counts.errors.most_common()) or "no rows"


def _print_lake_summary(
    counts: BatchCounts,
    classes: Counter[str],
    name: str,
    version: str,
    seconds: float,
    output: object,
    errors_path: object | None,
    abstained: int | None = None,
) -> None:
    n = counts.classified
    title = f"{n} of {counts.rows} alert rows classified by {name} {version}"
    console.print(_class_table(title, "rows", classes, n))
    if counts.failed:
        console.print(
            f"[yellow]{counts.failed} row(s) not classified[/yellow] ({_stages(counts)}) "
            f"-> {errors_path}"
        )
    if abstained:
        console.print(
            f"[yellow]abstain on {abstained} of {n} row(s)[/yellow]; their rows carry abstain = true"
        )
    rate = counts.rows / seconds if seconds else float("nan")
    console.print(f"{seconds:.2f} s, {rate:,.0f} rows/s -> {output}")


def _classify_on_spark(
    inputs: list[str],
    output: str,
    model: str,
    errors: str | None,
    strict: bool,
    master: str | None,
    batch_size: int,
    provider: str,
) -> None:
    """`classify --spark`: the same job on a Spark session, written as Parquet folders. A
    session this command starts is stopped at the end; one already running is left alone.
    ``provider`` auto means the CPU there: Spark runs one task per core, each with one ONNX
    Runtime thread; ask for cuda explicitly on executors with a GPU."""
    metadata = read_metadata(model)
    running = spark_adapter.active_session()
    session = running or spark_adapter.spark_session(master=master)
    started = time.perf_counter()
    try:
        counts = spark_adapter.classify_parquet(
            session,
            inputs,
            output,
            model,
            errors_output=errors,
            strict=strict,
            batch_size=batch_size,
            provider=provider,
        )
    finally:
        if running is None:
            session.stop()
    batch = BatchCounts(rows=counts.rows, classified=counts.classified)
    batch.errors.update(counts.errors)
    _print_lake_summary(
        batch,
        Counter(counts.classes),
        metadata.name,
        metadata.version,
        time.perf_counter() - started,
        output,
        errors or output.rstrip("/") + "_errors",
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
    title = f"{n} of {n_input} objects classified by {meta.name} {meta.version}"
    console.print(_class_table(title, "objects", counts, n))
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


def _class_table(title: str, unit: str, counts: Counter, n: int) -> Table:
    """Counts per class, most common first, with their share of the ``n`` classified."""
    table = Table(title=title)
    table.add_column("class")
    table.add_column(unit, justify="right")
    table.add_column("share", justify="right")
    for label, count in counts.most_common():
        table.add_row(label, str(count), f"{100 * count / max(n, 1):.1f}%")
    return table
