"""Reading tabular files (CSV, gzipped CSV, Parquet) with errors that name the file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from astro_classifier.core.errors import InputError

CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2")
PARQUET_SUFFIXES = (".parquet", ".pq")


def read_table(path: str | Path) -> pa.Table:
    """Read a CSV (plain or compressed) or Parquet file into an Arrow table.

    Raises :class:`InputError` for a missing, empty or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty")
    name = path.name.lower()
    try:
        if name.endswith(PARQUET_SUFFIXES):
            table = pq.read_table(path)
        elif name.endswith(CSV_SUFFIXES):
            table = pacsv.read_csv(path)
        else:
            raise InputError(
                path, f"unknown table format; expected one of {CSV_SUFFIXES + PARQUET_SUFFIXES}"
            )
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(path, f"cannot read as a table: {exc}") from exc
    if table.num_rows == 0:
        raise InputError(path, "table has no rows")
    return table


def require_columns(table: pa.Table, columns: Sequence[str], source: object, what: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputError(
            source,
            f"missing column(s) {missing} for {what}; expected {list(columns)}, found {table.column_names}",
        )


def require_finite(values: dict[str, np.ndarray], source: object) -> None:
    """Raise InputError naming ``source`` if any point has a NaN or infinite value."""
    bad = {name: int((~np.isfinite(v)).sum()) for name, v in values.items()}
    if any(bad.values()):
        counts = ", ".join(f"{name}: {n}" for name, n in bad.items() if n)
        rows = int((~np.logical_and.reduce([np.isfinite(v) for v in values.values()])).sum())
        raise InputError(
            source,
            f"{rows} point(s) have NaN or infinite values ({counts}); expected finite numbers",
        )
