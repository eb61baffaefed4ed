"""manyTDE optical tidal disruption events (sjoertvv/manyTDE ``data/sources/*.json``) -> batch.

One JSON per object: ``name``, ``ra``, ``dec``, ``z``, ``peak_mjd``, ``spectral_type``,
``extinction.e_bv`` and ``lightcurve`` with ``header`` ``[mjd, filter, flux_Jy, e_flux_Jy]`` and
``data`` rows in that order. ``path`` is one such file or a folder searched recursively.

Conventions:

- **Rows kept**: only ZTF forced difference photometry in g and r (filters ``g.ztf`` and
  ``r.ztf``, :data:`MANYTDE_FILTERS`), the bands of a public ZTF alert stream. Every other
  row (``i.ztf``, Swift UVOT, WISE, SDSS/PS1 archival, GALEX, HST) is counted in
  ``batch.dropped`` under ``filter <name> (not ZTF g/r)``.
- **Flux**: ``flux_Jy``/``e_flux_Jy`` -> nJy with :func:`jy_to_njy` (times 1e9); negative
  fluxes (baseline-subtracted forced photometry) are kept.
- **Detected**: False for every point (forced photometry, the canonical batch's convention).
- **Dropped points**: rows of other filters (above), non-finite time, flux or error, error <= 0.
- **Labels**: ``TDE`` for every object; the spectral type (``H``, ``H+He``, ``He``,
  ``Featureless``, ``Unknown``, ``-``) is kept in metadata ``spectral_type`` (str).
- **Metadata**: ``ra``, ``dec`` (degrees), ``redshift`` (``z``), ``ebv`` (``extinction.e_bv``),
  ``peak_mjd``, ``spectral_type`` (str).
- Objects are sorted by file name; ``object_id`` is ``name``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from astro_classifier.core.counts import count
from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import BAND_INDEX, LightCurveBatch
from astro_classifier.core.units import jy_to_njy

MANYTDE_HEADER = ["mjd", "filter", "flux_Jy", "e_flux_Jy"]
# manyTDE filter name -> canonical band, for the rows kept (ZTF forced photometry g and r).
MANYTDE_FILTERS: dict[str, str] = {"g.ztf": "g", "r.ztf": "r"}
MANYTDE_LABEL = "TDE"


def _is_manytde(doc: Any) -> bool:
    if not isinstance(doc, dict) or "name" not in doc:
        return False
    lc = doc.get("lightcurve")
    return isinstance(lc, dict) and lc.get("header") == MANYTDE_HEADER and "data" in lc


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(path.rglob("*.json")) if path.is_dir() else []


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def looks_like_manytde(path: str | Path) -> bool:
    """True for a manyTDE source JSON, or a folder whose first JSON file is one."""
    files = _files(Path(path))
    return bool(files) and _is_manytde(_load(files[0]))


def read_manytde(path: str | Path) -> LightCurveBatch:
    """Read manyTDE source JSONs (one file or a folder of them); see the module docstring."""
    files = _files(Path(path))
    if not files:
        raise InputError(path, "no manyTDE JSON file found")
    docs = []
    for f in files:
        doc = _load(f)
        if not _is_manytde(doc):
            raise InputError(
                f,
                f"not a manyTDE source JSON (expected name and lightcurve.header {MANYTDE_HEADER})",
            )
        docs.append(doc)

    dropped: dict[str, int] = {}
    ids, times, bands, fluxes, errs = [], [], [], [], []
    for doc in docs:
        for row in doc["lightcurve"]["data"]:
            mjd, name, flux, err = row
            if name not in MANYTDE_FILTERS:
                count(dropped, f"filter {name} (not ZTF g/r)", 1)
                continue
            ids.append(doc["name"])
            times.append(mjd)
            bands.append(BAND_INDEX[MANYTDE_FILTERS[name]])
            fluxes.append(flux)
            errs.append(err)
    time = np.asarray(times, dtype=np.float64)
    flux, flux_err = jy_to_njy(np.asarray(fluxes, float), np.asarray(errs, float))
    finite = np.isfinite(time) & np.isfinite(flux) & np.isfinite(flux_err)
    count(dropped, "non-finite time, flux or error", (~finite).sum())
    keep = finite & (flux_err > 0)
    count(dropped, "flux error <= 0", (finite & ~keep).sum())

    def meta(key: str) -> np.ndarray:
        return np.array([_num(d.get(key)) for d in docs], dtype=np.float64)

    batch = LightCurveBatch.from_points(
        np.asarray(ids, dtype=str)[keep],
        time[keep],
        np.asarray(bands, np.int8)[keep],
        flux[keep],
        flux_err[keep],
        np.zeros(int(keep.sum()), bool),
        objects=[d["name"] for d in docs],
        metadata={
            "ra": meta("ra"),
            "dec": meta("dec"),
            "redshift": meta("z"),
            "ebv": np.array(
                [_num((d.get("extinction") or {}).get("e_bv")) for d in docs], np.float64
            ),
            "peak_mjd": meta("peak_mjd"),
            "spectral_type": np.array([str(d.get("spectral_type")) for d in docs], dtype=str),
        },
        label=np.full(len(docs), MANYTDE_LABEL),
    )
    batch.dropped = dropped
    return batch


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
