"""The `astroclf` command line: thin commands over the library functions."""

from __future__ import annotations

import typer

from astro_classifier import __version__
from astro_classifier.cli.classify import classify_command
from astro_classifier.cli.embed import embed_command, similar_command
from astro_classifier.cli.evaluate import evaluate_command
from astro_classifier.cli.info import info_command, models_command
from astro_classifier.cli.stream import replay_command, stream_command
from astro_classifier.cli.train import export_command, train_command

app = typer.Typer(
    name="astroclf",
    help="Classify astronomical alerts and light curves with ONNX models (ATAT and friends).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("classify")(classify_command)
app.command("evaluate")(evaluate_command)
app.command("info")(info_command)
app.command("models")(models_command)
app.command("train")(train_command)
app.command("export")(export_command)
app.command("replay")(replay_command)
app.command("stream")(stream_command)
app.command("embed")(embed_command)
app.command("similar")(similar_command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"astroclf {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """astroclf: alert classification for astronomy brokers."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
