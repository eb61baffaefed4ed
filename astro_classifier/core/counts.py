"""Reason -> count dictionaries: what a reader dropped, which stamps failed, which files were
skipped. Counted, never silent, and summed the same way everywhere."""

from __future__ import annotations

from collections.abc import Iterable


def merge_counts(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    """Sum reason -> count dictionaries (dropped points of several batches)."""
    total: dict[str, int] = {}
    for one in counts:
        for reason, n in one.items():
            total[reason] = total.get(reason, 0) + int(n)
    return total


def count(counts: dict[str, int], reason: str, n: int = 1) -> None:
    """Add ``n`` to ``counts[reason]`` (nothing is added for zero)."""
    if int(n):
        counts[reason] = counts.get(reason, 0) + int(n)
