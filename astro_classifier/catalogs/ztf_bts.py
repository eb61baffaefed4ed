"""ZTF Bright Transient Survey SN Ia light curves (light-curve/test-data ``SNIa/``) -> batch.

Layout (a folder, or its ``bts.csv``):

- ``bts.csv``: the BTS object table (it starts with an empty line): ``ZTFID``, ``IAUID``,
  ``RA``/``Dec`` (sexagesimal), ``peakt`` (JD - 2458000), ``type`` (``SN Ia``, ``SN Ia-91T``,
  ``SN Ia-91bg``, ``SN Iax``, ...), ``redshift`` (``-`` when unknown), ``A_V``, ...;
- ``light-curves/<ZTFID>.csv``: columns ``time`` (MJD), ``mag``, ``magerr``, ``band``
  (``g``, ``R`` for ZTF r, once ``i``).

Conventions:

- **Flux**: ``mag``/``magerr`` are ZTF PSF magnitudes (AB) -> nJy with :func:`ab_mag_to_njy`;
  every point is a detection (``detected=True``).
- **Bands**: ``g`` -> g, ``R`` -> r (ZTF r), ``i`` -> i.
- **Objects**: one per row of ``bts.csv``, in its order; the 25 rows without a light-curve file
  get an empty light curve (classify() skips and counts them).
- **Labels**: :func:`sn_type_label` of ``type``: ``SN Ia``, ``-91T``, ``-pec``, ``-CSM`` ->
  ``SNIa``; ``SN Ia-91bg`` -> ``SNIa-91bg``; ``SN Iax`` -> ``SNIax``. The raw type is kept in
  metadata ``type`` (str).
- **Metadata**: ``ra``, ``dec`` (degrees), ``redshift`` (NaN for ``-``), ``ebv`` = ``A_V`` / 3.1,
  ``peak_mjd`` (from ``peakt``), ``type`` (str).
- **Dropped points** (``batch.dropped``): non-finite time, magnitude or error, error <= 0,
  or an unknown band.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from astro_classifier.catalogs.realsky import (
    magnitude_points,
    parse_floats,
    sexagesimal_to_degrees,
    sn_type_label,
)
from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import LightCurveBatch

BTS_TABLE = "bts.csv"
BTS_LIGHT_CURVES = "light-curves"
BTS_TABLE_COLUMNS = ("ZTFID", "RA", "Dec", "peakt", "type", "redshift", "A_V")
BTS_LC_COLUMNS = ("time", "mag", "magerr", "band")
# BTS band letter -> canonical band (ZTF R is ZTF r).
BTS_BANDS: dict[str, str] = {"g": "g", "R": "r", "r": "r", "i": "i"}
BTS_PEAKT_ZERO_JD = 2458000.0  # ``peakt`` counts days from JD 2458000
R_V = 3.1  # E(B-V) = A_V / R_V


def _folder(path: str | Path) -> Path:
    path = Path(path)
    return path.parent if path.is_file() else path


def _read_bts_table(path: Path) -> list[dict[str, str]]:
    text = path.read_text(encoding="utf-8", errors="replace").lstrip()
    return list(csv.DictReader(io.StringIO(text)))


def looks_like_ztf_bts(path: str | Path) -> bool:
    """True for a folder (or its ``bts.csv``) holding a BTS object table and ``light-curves/``."""
    folder = _folder(path)
    table = folder / BTS_TABLE
    if not table.is_file() or not (folder / BTS_LIGHT_CURVES).is_dir():
        return False
    try:
        with table.open(encoding="utf-8", errors="replace") as fh:
            header = next((line for line in fh if line.strip()), "")
    except OSError:
        return False
    columns = [c.strip() for c in header.split(",")]
    return all(c in columns for c in BTS_TABLE_COLUMNS)


def read_ztf_bts(path: str | Path) -> LightCurveBatch:
    """Read the BTS SN Ia folder (or its ``bts.csv``); see the module docstring."""
    folder = _folder(path)
    if not looks_like_ztf_bts(folder):
        raise InputError(
            path,
            f"expected a folder with {BTS_TABLE} (columns {list(BTS_TABLE_COLUMNS)}) "
            f"and {BTS_LIGHT_CURVES}/<ZTFID>.csv",
        )
    rows = _read_bts_table(folder / BTS_TABLE)
    dropped: dict[str, int] = {}
    ids, times, bands, mags, errs = [], [], [], [], []
    for row in rows:
        lc = folder / BTS_LIGHT_CURVES / f"{row['ZTFID']}.csv"
        if not lc.is_file():
            continue
        with lc.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not all(c in reader.fieldnames for c in BTS_LC_COLUMNS):
                raise InputError(lc, f"expected columns {list(BTS_LC_COLUMNS)}")
            points = list(reader)
        ids += [row["ZTFID"]] * len(points)
        times += [p["time"] for p in points]
        bands += [p["band"] for p in points]
        mags += [p["mag"] for p in points]
        errs += [p["magerr"] for p in points]

    point_ids, time, band, flux, flux_err = magnitude_points(
        ids, times, bands, mags, errs, BTS_BANDS, dropped
    )

    object_id = np.array([r["ZTFID"] for r in rows], dtype=str)
    radec = np.array([sexagesimal_to_degrees(r["RA"], r["Dec"]) for r in rows]).reshape(-1, 2)
    batch = LightCurveBatch.from_points(
        point_ids,
        time,
        band,
        flux,
        flux_err,
        np.ones(len(point_ids), bool),
        objects=object_id,
        metadata={
            "ra": radec[:, 0],
            "dec": radec[:, 1],
            "redshift": parse_floats([r["redshift"] for r in rows]),
            "ebv": parse_floats([r["A_V"] for r in rows]) / R_V,
            "peak_mjd": parse_floats([r["peakt"] for r in rows]) + BTS_PEAKT_ZERO_JD - 2400000.5,
            "type": np.array([r["type"] for r in rows], dtype=str),
        },
        label=np.array([sn_type_label(r["type"]) for r in rows], dtype=str),
    )
    batch.dropped = dropped
    return batch
