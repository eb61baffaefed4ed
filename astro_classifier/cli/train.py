"""`astroclf train` and `astroclf export` (need the `train` extra: torch)."""

from __future__ import annotations

from pathlib import Path

import typer

from astro_classifier.cli.common import console, print_error, user_errors


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        console.print(
            "[bold red]error:[/bold red] training needs torch: pip install 'astro-classifier[train]'"
        )
        raise typer.Exit(1) from exc


def train_command(
    config: Path = typer.Argument(
        ...,
        exists=True,
        dir_okay=False,
        help="Training config (YAML), e.g. configs/atat_tiny.yaml.",
    ),
    run_dir: Path = typer.Option(
        ..., "-o", "--output", help="Run directory to write (run record, weights, metrics, plots)."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a config field: --set training.epochs=5 (repeatable)."
    ),
) -> None:
    """Train a model from a YAML config; the run directory keeps the config, the best
    weights, its run record (run.json), metrics.json, a confusion-matrix PNG and a
    learning-curve PNG."""
    _require_torch()
    # training and export import torch (the `train` extra): only these commands pay for it
    from pydantic import ValidationError

    from astro_classifier.families.registry import check_model_args
    from astro_classifier.training.config import TrainConfig
    from astro_classifier.training.train import train

    try:
        cfg = TrainConfig.from_yaml(config, overrides)
        check_model_args(cfg.model.name, cfg.model.args)
    except (ValidationError, ValueError) as exc:
        print_error(f"{config}: invalid config\n{exc}")
        raise typer.Exit(1) from exc
    with user_errors():
        train(cfg, run_dir, console=console)


def export_command(
    source: Path = typer.Argument(
        ...,
        exists=True,
        help="Run directory written by `astroclf train`, or an exported ATAT .onnx file to "
        "re-export in the current graph form (same weights, labels and metadata).",
    ),
    output: Path = typer.Option(..., "-o", "--output", help="ONNX file to write."),
    fp16: bool = typer.Option(
        False, "--fp16", help="Store weights and activations as float16 (inputs stay float32)."
    ),
    form: str = typer.Option(
        "default",
        "--form",
        help="Graph form: 'default' (the family's CPU form), or 'dense' (ATAT's CUDA companion: "
        "one-hot band tokens, no NonZero/ScatterND, so no host sync and CUDA graphs can capture "
        "it; serving picks models/cuda/NAME.onnx on CUDA).",
    ),
    parity_objects: int = typer.Option(512, min=1, help="Light curves used for the parity check."),
    parity_data: list[Path] = typer.Option(
        None,
        "--parity-data",
        exists=True,
        help="Re-export only: light-curve files (any supported format) for the parity checks "
        "against torch and against the previous graph.",
    ),
    parity_metadata: Path | None = typer.Option(
        None,
        "--parity-metadata",
        exists=True,
        dir_okay=False,
        help="Re-export only: object table for a PLAsTiCC-format or long-format --parity-data.",
    ),
) -> None:
    """Export a trained run to one ONNX file with its metadata, after onnx.checker and a
    parity check against torch on real validation light curves (fails the export on mismatch).

    Given an .onnx file instead, re-export its weights in the current graph form: written
    only if the new graph matches torch and the previous graph on the --parity-data curves."""
    _require_torch()
    # export imports torch (the `train` extra): only this command pays for it
    from astro_classifier.export.onnx_export import ParityError, export_run
    from astro_classifier.export.reexport import parity_inputs, reexport_onnx

    if form not in ("default", "dense"):
        raise typer.BadParameter(f"{form!r}: expected 'default' or 'dense'", param_hint="--form")
    graph_form: bool | str = True if form == "default" else form
    if source.is_file():
        if not parity_data:
            raise typer.BadParameter(
                "re-exporting an .onnx file needs --parity-data (light-curve files)",
                param_hint="--parity-data",
            )
        with user_errors(ParityError):
            inputs = parity_inputs(source, list(parity_data), parity_objects, parity_metadata)
            report = reexport_onnx(source, output, inputs, fp16=fp16, form=graph_form)
    else:
        with user_errors(ParityError):
            report = export_run(
                source, output, fp16=fp16, parity_objects=parity_objects, form=graph_form
            )
    console.print(f"parity: {report}\nwrote {output}")
