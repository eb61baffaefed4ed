"""The `astroclf` command line: thin commands over the library functions."""

from __future__ import annotations

import typer

from astro_classifier import __version__
from astro_classifier.cli.classify import classify_command
from astro_classifier.cli.common import prose
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
COMMANDS = {
    "classify": classify_command,
    "evaluate": evaluate_command,
    "info": info_command,
    "models": models_command,
    "train": train_command,
    "export": export_command,
    "replay": replay_command,
    "stream": stream_command,
    "embed": embed_command,
    "similar": similar_command,
}
for _name, _command in COMMANDS.items():
    # help from the docstring, unwrapped: the terminal wraps it (common.prose)
    app.command(_name, help=prose(_command))(_command)


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
