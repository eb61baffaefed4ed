"""One look for progress bars of long work (reading features, classifying, training)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)


def progress_bar(description: str, console: Console, *extra: ProgressColumn) -> Progress:
    """A transient bar: description, bar, done/total, ``extra`` columns, elapsed time.

    ``description`` may use task fields, e.g. ``"epoch {task.fields[epoch]}"``.
    """
    return Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        *extra,
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
