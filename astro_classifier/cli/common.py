"""Helpers shared by the CLI commands: help text, error reporting and atomic output files."""

from __future__ import annotations

import contextlib
import inspect
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from astro_classifier.core.errors import InputError, ModelError

console = Console(stderr=True)
# Errors that mean "the input or the model is wrong", shown without a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (InputError, ModelError, FileNotFoundError)


def prose(command: Callable[..., object]) -> str:
    """A command's help text from its docstring, ready for typer's rich help: the lines of
    each paragraph joined into one, so the terminal wraps them at its own width instead of
    breaking mid-sentence where the source wrapped them. Paragraphs stay apart, and a
    paragraph whose lines are all indented (an example block) keeps its line breaks."""
    paragraphs = []
    for block in inspect.cleandoc(command.__doc__ or "").split("\n\n"):
        lines = block.splitlines()
        if lines and all(line.startswith(" ") for line in lines):
            paragraphs.append(block)
        else:
            paragraphs.append(" ".join(line.strip() for line in lines))
    return "\n\n".join(paragraphs)


@contextlib.contextmanager
def user_errors(*extra: type[BaseException]) -> Iterator[None]:
    """Turn input/model errors into one red line and exit code 1."""
    try:
        yield
    except USER_ERRORS + extra as exc:
        print_error(str(exc))
        raise typer.Exit(1) from exc


def print_error(message: str) -> None:
    """One line on stderr; the message is shown verbatim (paths may hold '[' and ']')."""
    console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    if path.is_dir():
        raise InputError(path, "is a directory; expected the path of a file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise InputError(path, f"cannot write the output here: {exc.strerror}") from exc
    os.close(fd)
    try:
        yield Path(tmp)
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise InputError(path, f"cannot write the output here: {exc.strerror}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def parse_days(text: str | None) -> list[float]:
    if not text:
        return []
    try:
        days = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"expected comma-separated numbers of days, got {text!r}") from exc
    if any(d <= 0 for d in days):
        raise typer.BadParameter("truncation days must be positive")
    return days
