"""PLAsTiCC-format light curves (object_id, mjd, passband, flux, flux_err, detected_bool)
plus their object table, as CSV (optionally gzipped) or Parquet.

Fluxes are FLUXCAL (zero point 27.5) and are converted to nJy here. Simulation-truth
columns (``true_*``, ``tflux_*``) are never read: they must not reach a model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import BANDS, LightCurveBatch
from astro_classifier.core.tables import read_table, require_columns, require_finite
from astro_classifier.core.units import plasticc_fluxcal_to_njy
from astro_classifier.formats.base import InputFormat, ReadOptions

# PLAsTiCC target ids -> readable class labels (SOURCES.md).
PLASTICC_CLASSES: dict[int, str] = {
    6: "muLens-Single",
    15: "TDE",
    16: "EB",
    42: "SNII",
    52: "SNIax",
    53: "Mira",
    62: "SNIbc",
    64: "KN",
    65: "M-dwarf",
    67: "SNIa-91bg",
    88: "AGN",
    90: "SNIa",
    92: "RRL",
    95: "SLSN-I",
}

DEFAULT_LABEL_COLUMN = "target"
LIGHT_CURVE_COLUMNS = ("object_id", "mjd", "passband", "flux", "flux_err", "detected_bool")
# Object-table columns kept as metadata (after renaming ``ddf_bool`` to ``ddf``).
METADATA_COLUMNS = (
    "ra",
    "decl",
    "ddf",
    "hostgal_specz",
    "hostgal_photoz",
    "hostgal_photoz_err",
    "distmod",
    "mwebv",
)


def is_plasticc_light_curve_table(columns: list[str]) -> bool:
    return {"object_id", "mjd", "passband", "flux", "flux_err"} <= set(columns)


def read_plasticc_metadata(
    path: str | Path, label_column: str | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
    """Read a PLAsTiCC object table: (object ids, metadata columns, labels or None).

    Labels come from ``label_column`` (default ``target``; the released test files carry
    the truth in ``true_target``) as class names; ids that are not PLAsTiCC classes (the
    placeholder 0 of the test files, -1, empty cells, class 99 "other") give the empty label
    "", and a table without any known class id gives no labels at all: classifying needs
    none, and evaluation counts unlabelled objects apart. A ``label_column`` given but
    absent is an :class:`InputError`.
    """
    table = read_table(path)
    names = [n.strip() for n in table.column_names]
    table = table.rename_columns(names)
    if "ddf_bool" in names:  # the training file's name for the deep-drilling flag
        table = table.rename_columns(["ddf" if n == "ddf_bool" else n for n in names])
    require_columns(table, ["object_id"], path, "a PLAsTiCC object table")
    object_id = np.asarray(table["object_id"].to_numpy(zero_copy_only=False)).astype(str)
    object_id = np.char.strip(object_id)
    metadata: dict[str, np.ndarray] = {}
    for name in METADATA_COLUMNS:
        if name in table.column_names:
            col = pc.cast(table[name], pa.float64()).to_numpy(zero_copy_only=False)
            metadata[name] = np.asarray(col, dtype=np.float64)
    if "distmod" in metadata:  # galactic objects carry -9 or NaN: no distance
        metadata["distmod"] = np.where(metadata["distmod"] < 0, np.nan, metadata["distmod"])
    if label_column is not None:
        require_columns(table, [label_column], path, "the label column given")
    column = label_column or DEFAULT_LABEL_COLUMN
    labels = None
    if column in table.column_names:
        labels = plasticc_labels(table[column])
        if not labels.any():  # placeholders only
            labels = None
    return object_id, metadata, labels


def plasticc_labels(targets: pa.ChunkedArray) -> np.ndarray:
    """PLAsTiCC target ids -> class names; "" for anything that is not a known class id."""
    as_text = pc.utf8_trim_whitespace(pc.cast(targets, pa.string())).to_pylist()
    names = []
    for value in as_text:
        try:
            names.append(PLASTICC_CLASSES.get(int(float(value)), "") if value else "")
        except ValueError:
            names.append("")
    return np.asarray(names, dtype=str)


def read_plasticc(
    light_curves: str | Path, metadata: str | Path | None = None, label_column: str | None = None
) -> LightCurveBatch:
    """Read PLAsTiCC light curves (and, if given, their object table) into a batch.

    Without ``metadata`` the objects carry no metadata and no labels. With it, object order
    follows the object table; objects in the table without points get empty light curves,
    and points whose object is missing from the table are an error.
    """
    table = read_table(light_curves)
    table = table.rename_columns([n.strip() for n in table.column_names])
    require_columns(table, LIGHT_CURVE_COLUMNS[:5], light_curves, "PLAsTiCC light curves")
    cols = {n: table[n].to_numpy(zero_copy_only=False) for n in table.column_names}
    passband = np.asarray(cols["passband"])
    if passband.dtype.kind not in "iu":
        raise InputError(
            light_curves, f"column 'passband' must hold integers 0-5, got {passband.dtype}"
        )
    bad = (passband < 0) | (passband >= len(BANDS))
    if bad.any():
        raise InputError(
            light_curves,
            f"unknown passband value(s) {sorted(set(passband[bad].tolist()))[:5]}; expected 0-5 (u g r i z y)",
        )
    require_finite(
        {name: np.asarray(cols[name], np.float64) for name in ("mjd", "flux", "flux_err")},
        light_curves,
    )
    flux, flux_err = plasticc_fluxcal_to_njy(cols["flux"], cols["flux_err"])
    detected = cols.get("detected_bool", np.ones(len(flux), bool))
    point_ids = np.char.strip(np.asarray(cols["object_id"]).astype(str))
    objects = meta = labels = None
    if metadata is not None:
        objects, meta, labels = read_plasticc_metadata(metadata, label_column)
    try:
        return LightCurveBatch.from_points(
            point_ids,
            cols["mjd"],
            passband.astype(np.int8),
            flux,
            flux_err,
            np.asarray(detected).astype(bool),
            objects=objects,
            metadata=meta,
            label=labels,
        )
    except ValueError as exc:
        raise InputError(light_curves, f"{exc} (object table: {metadata})") from exc


def _read(paths: list[Path], options: ReadOptions) -> LightCurveBatch:
    return LightCurveBatch.concat(
        [read_plasticc(path, options.metadata, options.label_column) for path in paths]
    )


PLASTICC = InputFormat(
    "plasticc",
    "PLAsTiCC light curves, CSV or Parquet {object_id, mjd, passband, flux, flux_err}",
    lambda probe: is_plasticc_light_curve_table(probe.columns),
    _read,
    object_table=True,
    label_column="target",
)
