"""EROS-1 LMC variable stars (RAMP ``variable_stars`` files) -> canonical light curves.

Two files describe the same stars, row for row:

- the static table (``train.csv``): the star id in the first column, per-star columns
  (mean magnitudes, period, asymmetries, ...), position as sexagesimal parts
  (``asc_d/m/s`` in hours, ``dec_d/m/s`` in degrees) and the label ``type``;
- the arrays file (``train_varlength_features.csv.gz``): the same star ids in the first
  column and, per band ``b`` and ``r``, bracketed lists ``time_points_*`` (days),
  ``light_points_*`` (magnitudes) and ``error_points_*`` (magnitude errors).

Conventions of this reader:

- **Flux**: magnitudes -> nJy with :func:`eros_mag_to_njy` (treated as AB; EROS magnitudes
  carry no absolute AB calibration here, so fluxes are right up to one scale per band).
- **Bands**: EROS blue ``b`` -> canonical ``g``, EROS red ``r`` -> canonical ``r``. This is
  an approximation: the EROS filters are broad (b ~ 420-720 nm, r ~ 620-920 nm) and match
  neither band exactly.
- **Time**: kept in EROS days from the survey's own arbitrary zero (not MJD); features that
  use time differences (periods, slopes) are unaffected.
- **Dropped points**: a point is dropped when its magnitude sits at the faint cap 25.0
  (``>= 25.0``, the survey's sentinel for "no measurement"; these carry errors of ~1 mag) or
  when its magnitude or magnitude error is not finite or the error is not positive. The
  number of dropped points per band is logged at INFO level.
- **Labels**: ``type`` 1 EB, 2 Cepheid, 3 RRL, 4 Mira.
- **Metadata**: ``ra``/``dec`` (degrees, from the sexagesimal parts) and every other numeric
  column of the static table except the identifiers (``patch_id``, ``star_id_b``,
  ``star_id_r``) and the label, float64.
- Every point has ``detected=True``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import BAND_INDEX, LightCurveBatch
from astro_classifier.core.tables import read_table, require_columns
from astro_classifier.core.units import eros_mag_to_njy

logger = logging.getLogger(__name__)

EROS1_CLASSES: dict[int, str] = {1: "EB", 2: "Cepheid", 3: "RRL", 4: "Mira"}
# EROS band -> canonical band (an approximation, see the module docstring).
EROS1_BANDS: dict[str, str] = {"b": "g", "r": "r"}
EROS1_MAG_CAP = 25.0  # faint-end cap: a magnitude at this value is no measurement
POSITION_COLUMNS = ("asc_d", "asc_m", "asc_s", "dec_d", "dec_m", "dec_s")
IDENTIFIER_COLUMNS = ("patch_id", "star_id_b", "star_id_r")
LABEL_COLUMN = "type"
ARRAY_COLUMNS = tuple(
    f"{quantity}_points_{band}" for band in EROS1_BANDS for quantity in ("time", "light", "error")
)


def read_eros1(table_csv: str | Path, arrays_csv_gz: str | Path) -> LightCurveBatch:
    """Read EROS-1 stars: static table ``table_csv`` plus per-star arrays ``arrays_csv_gz``.

    Returns one object per row of the static table, in its order (object id = first column),
    with fluxes in nJy, time in EROS days, bands g (EROS b) and r (EROS r), labels where the
    table has ``type``. See the module docstring for the rules. Raises :class:`InputError`
    naming the file for missing columns, misaligned rows, unparsable arrays or unknown labels.
    """
    static = read_table(table_csv)
    arrays = read_table(arrays_csv_gz)
    require_columns(static, POSITION_COLUMNS, table_csv, "an EROS-1 static table")
    require_columns(arrays, ARRAY_COLUMNS, arrays_csv_gz, "EROS-1 light-curve arrays")
    object_id = _ids(static, table_csv)
    if not np.array_equal(object_id, _ids(arrays, arrays_csv_gz)):
        raise InputError(
            arrays_csv_gz,
            f"star ids (first column) differ from those of {table_csv}; expected the same rows "
            "in the same order",
        )

    parts: dict[str, list[np.ndarray]] = {
        name: [] for name in ("star", "time", "band", "flux", "flux_err")
    }
    dropped: dict[str, int] = {}
    for eros_band, canonical_band in EROS1_BANDS.items():
        lengths, columns = [], []
        for quantity in ("time", "light", "error"):
            name = f"{quantity}_points_{eros_band}"
            column_lengths, values = _parse_lists(arrays[name], arrays_csv_gz, name)
            lengths.append(column_lengths)
            columns.append(values)
        if not (np.array_equal(lengths[0], lengths[1]) and np.array_equal(lengths[0], lengths[2])):
            star = object_id[
                np.flatnonzero((lengths[0] != lengths[1]) | (lengths[0] != lengths[2]))
            ]
            raise InputError(
                arrays_csv_gz,
                f"band {eros_band}: time, magnitude and error lists differ in length for "
                f"star(s) {star[:5].tolist()}",
            )
        days, mag, mag_err = columns
        valid = np.isfinite(mag) & np.isfinite(mag_err) & (mag_err > 0) & (mag < EROS1_MAG_CAP)
        dropped[eros_band] = int((~valid).sum())
        flux, flux_err = eros_mag_to_njy(mag[valid], mag_err[valid])
        parts["star"].append(np.repeat(np.arange(len(object_id)), lengths[0])[valid])
        parts["time"].append(days[valid])
        parts["band"].append(np.full(len(flux), BAND_INDEX[canonical_band], np.int8))
        parts["flux"].append(flux)
        parts["flux_err"].append(flux_err)
    logger.info(
        "%s: dropped %d EROS-1 points with magnitude at the %.1f cap or invalid error (%s)",
        arrays_csv_gz,
        sum(dropped.values()),
        EROS1_MAG_CAP,
        ", ".join(f"{b}: {n}" for b, n in dropped.items()),
    )
    points = {name: np.concatenate(values) for name, values in parts.items()}
    order = np.lexsort((points["time"], points["star"]))  # table order, then time
    counts = np.bincount(points["star"], minlength=len(object_id))
    return LightCurveBatch(
        object_id=object_id,
        offsets=np.concatenate([[0], np.cumsum(counts)]),
        time=points["time"][order],
        band=points["band"][order],
        flux=points["flux"][order],
        flux_err=points["flux_err"][order],
        detected=np.ones(len(order), bool),
        metadata=_metadata(static),
        label=_labels(static, table_csv),
    )


def _ids(table: pa.Table, path: str | Path) -> np.ndarray:
    ids = table.column(0)
    if ids.null_count:
        raise InputError(path, f"{ids.null_count} row(s) without a star id in the first column")
    return np.asarray(ids.to_pylist(), dtype=str)


def _parse_lists(
    column: pa.ChunkedArray, path: str | Path, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Bracketed number lists ("[1.0, 2.5]") -> (length per row, all values as float64)."""
    if column.null_count:
        raise InputError(path, f"column {name!r} has {column.null_count} empty cell(s)")
    bodies = pc.utf8_trim(column, characters="[] ")
    bodies = pc.if_else(pc.equal(bodies, ""), pa.scalar(None, pa.string()), bodies)
    lists = pc.split_pattern(bodies, pattern=",")
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy()
    try:
        values = pc.cast(pc.utf8_trim_whitespace(pc.list_flatten(lists)), pa.float64())
    except pa.ArrowInvalid as exc:
        raise InputError(path, f"column {name!r} holds a non-numeric list entry ({exc})") from exc
    return lengths.astype(np.int64), values.to_numpy()


def _metadata(table: pa.Table) -> dict[str, np.ndarray]:
    """ra/dec in degrees plus the other numeric static columns (float64)."""
    parts = {
        name: np.asarray(pc.cast(table[name], pa.float64()).to_numpy(zero_copy_only=False))
        for name in POSITION_COLUMNS
    }
    ra_hours = parts["asc_d"] + parts["asc_m"] / 60 + parts["asc_s"] / 3600
    dec_magnitude = np.abs(parts["dec_d"]) + parts["dec_m"] / 60 + parts["dec_s"] / 3600
    metadata = {"ra": 15.0 * ra_hours, "dec": np.copysign(dec_magnitude, parts["dec_d"])}
    skipped = {table.column_names[0], LABEL_COLUMN, *POSITION_COLUMNS, *IDENTIFIER_COLUMNS}
    for name in table.column_names:
        column_type = table[name].type
        numeric = pa.types.is_floating(column_type) or pa.types.is_integer(column_type)
        if numeric and name not in skipped:
            metadata[name] = np.asarray(
                pc.cast(table[name], pa.float64()).to_numpy(zero_copy_only=False)
            )
    return metadata


def _labels(table: pa.Table, path: str | Path) -> np.ndarray | None:
    if LABEL_COLUMN not in table.column_names:
        return None
    codes = pc.cast(table[LABEL_COLUMN], pa.float64()).to_numpy(zero_copy_only=False)
    unknown = sorted({c for c in codes.tolist() if c not in EROS1_CLASSES})
    if unknown:
        raise InputError(
            path, f"unknown EROS-1 type value(s) {unknown[:5]}; expected {sorted(EROS1_CLASSES)}"
        )
    return np.array([EROS1_CLASSES[int(c)] for c in codes])
