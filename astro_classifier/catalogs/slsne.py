"""Type I superluminous supernovae of the ``slsne`` package (Gomez et al. 2024) -> batch.

Layout (``path`` is the package folder or any folder above ``ref_data``):

- ``ref_data/sne_data.txt``: whitespace table ``Name RA_deg DEC_deg Redshift Method EBV
  Explosion Peak Quality Survey``;
- ``ref_data/supernovae/<Name>/<Name>.txt``: whitespace table ``MJD Mag Raw MagErr Telescope
  Instrument Filter UL System Ignore Source`` (other files there are spectra).

Conventions:

- **Magnitude**: the observed magnitude. ``Mag`` is corrected for Galactic extinction by the
  catalogue (``Mag = Raw - R_band * EBV``); ``Raw`` is the observed value but is ``nan`` on
  about a third of the rows, so the observed magnitude is ``Raw`` where finite, else
  ``Mag + R_band * EBV`` with the catalogue's own ``R_band`` (:data:`SLSNE_EXTINCTION_R`,
  the median of ``(Raw - Mag) / EBV`` over the rows that carry both).
- **Flux**: ``System`` AB -> :func:`ab_mag_to_njy`; Vega -> :func:`vega_mag_to_njy`.
- **Bands kept**: the lower-case filters ``u g r i z y`` (ZTF, SDSS, Pan-STARRS, DECam,
  KeplerCam, LT, LCO, P60, ... all SDSS/PS1-like), mapped to the same canonical band. Every
  other filter (ATLAS ``orange``/``cyan``, Gaia ``G``, Johnson ``UBVRI``, Swift UV, near-IR,
  PS1 ``w``, HST) is counted in ``batch.dropped`` under ``filter <name>``.
- **Upper limits** (``UL`` True): the magnitude is the limit; flux 0 and error
  :func:`limiting_mag_to_njy_err` (flux of the limit / 5, as the ZTF alert reader does for
  ``diffmaglim``), ``detected=False``. Detections have ``detected=True``.
- **Dropped points**: rows flagged ``Ignore`` by the catalogue, filters not kept, non-finite
  magnitude or time, detections with a magnitude error that is not positive, unknown system.
- **Labels**: ``SLSN-I`` for every object. **Metadata**: ``ra``, ``dec``, ``redshift``,
  ``ebv``, ``explosion_mjd``, ``peak_mjd``; ``quality`` and ``survey`` (str).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from astro_classifier.core.counts import count
from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import BAND_INDEX, LightCurveBatch
from astro_classifier.core.units import (
    VEGA_TO_AB,
    ab_mag_to_njy,
    limiting_mag_to_njy_err,
    vega_mag_to_njy,
)

SLSNE_TABLE = "sne_data.txt"
SLSNE_TABLE_COLUMNS = ("Name", "RA_deg", "DEC_deg", "Redshift", "EBV", "Explosion", "Peak")
SLSNE_PHOT_COLUMNS = (
    "MJD", "Mag", "Raw", "MagErr", "Telescope", "Instrument", "Filter", "UL", "System", "Ignore",
)  # fmt: skip
SLSNE_BANDS = ("u", "g", "r", "i", "z", "y")
# R_band = A_band / E(B-V) that the catalogue used (median of (Raw - Mag) / EBV per filter;
# y is not measurable there and takes the Fitzpatrick-like value for PS1 y).
SLSNE_EXTINCTION_R: dict[str, float] = {
    "u": 4.77, "g": 3.75, "r": 2.68, "i": 2.01, "z": 1.51, "y": 1.30,
}  # fmt: skip
SLSNE_LABEL = "SLSN-I"


def slsne_table_path(path: str | Path) -> Path | None:
    """The slsne package's ``sne_data.txt``: ``path`` itself, or found under the folder."""
    path = Path(path)
    if path.is_file():
        return path if path.name == SLSNE_TABLE else None
    for candidate in (path / SLSNE_TABLE, path / "ref_data" / SLSNE_TABLE):
        if candidate.is_file():
            return candidate
    found = sorted(path.rglob(SLSNE_TABLE)) if path.is_dir() else []
    return found[0] if found else None


def _read_whitespace_table(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = [line.split() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise InputError(path, "file is empty")
    return lines[0], lines[1:]


def looks_like_slsne(path: str | Path) -> bool:
    """True for the ``slsne`` package data: ``sne_data.txt`` with its header and ``supernovae/``."""
    table = slsne_table_path(path)
    if table is None or not (table.parent / "supernovae").is_dir():
        return False
    try:
        with table.open(encoding="utf-8") as fh:
            header = fh.readline().split()
    except (OSError, UnicodeDecodeError):
        return False
    return all(c in header for c in SLSNE_TABLE_COLUMNS)


def read_slsne(path: str | Path) -> LightCurveBatch:
    """Read the SLSN-I catalogue; see the module docstring."""
    table = slsne_table_path(path)
    if table is None or not looks_like_slsne(table):
        raise InputError(path, f"expected the slsne package data ({SLSNE_TABLE} and supernovae/)")
    header, rows = _read_whitespace_table(table)
    col = {name: header.index(name) for name in header}
    objects = [r[col["Name"]] for r in rows]

    def meta(name: str) -> np.ndarray:
        return np.array([_num(r[col[name]]) for r in rows], np.float64)

    ebv = meta("EBV")
    dropped: dict[str, int] = {}
    ids: list[str] = []
    fields: dict[str, list[str]] = {name: [] for name in SLSNE_PHOT_COLUMNS}
    for name in objects:
        phot = table.parent / "supernovae" / name / f"{name}.txt"
        if not phot.is_file():
            continue
        head, points = _read_whitespace_table(phot)
        missing = [c for c in SLSNE_PHOT_COLUMNS if c not in head]
        if missing:
            raise InputError(
                phot, f"missing column(s) {missing}; expected {list(SLSNE_PHOT_COLUMNS)}"
            )
        index = [head.index(c) for c in SLSNE_PHOT_COLUMNS]
        for point in points:
            if len(point) != len(head):
                count(dropped, "row with a wrong number of fields", 1)
                continue
            ids.append(name)
            for c, k in zip(SLSNE_PHOT_COLUMNS, index, strict=True):
                fields[c].append(point[k])

    ids_arr = np.asarray(ids, dtype=str)
    filt = np.asarray(fields["Filter"], dtype=str)
    system = np.asarray(fields["System"], dtype=str)
    ignore = np.asarray(fields["Ignore"]) == "True"
    upper = np.asarray(fields["UL"]) == "True"
    time = np.array([_num(v) for v in fields["MJD"]])
    mag = np.array([_num(v) for v in fields["Mag"]])
    raw = np.array([_num(v) for v in fields["Raw"]])
    mag_err = np.array([_num(v) for v in fields["MagErr"]])

    count(dropped, "flagged Ignore in the catalogue", ignore.sum())
    ok = ~ignore
    kept_band = np.isin(filt, SLSNE_BANDS)
    for name in np.unique(filt[ok & ~kept_band]):
        count(dropped, f"filter {name}", (ok & ~kept_band & (filt == name)).sum())
    ok &= kept_band
    known_system = np.isin(system, ["AB", "Vega"])
    count(dropped, "unknown magnitude system", (ok & ~known_system).sum())
    ok &= known_system

    order = {n: k for k, n in enumerate(objects)}
    ebv_of_point = ebv[np.fromiter((order[n] for n in ids), np.int64, len(ids))]
    r_band = np.array([SLSNE_EXTINCTION_R.get(b, np.nan) for b in filt.tolist()])
    observed = np.where(np.isfinite(raw), raw, mag + r_band * ebv_of_point)
    finite = np.isfinite(time) & np.isfinite(observed)
    count(dropped, "non-finite time or magnitude", (ok & ~finite).sum())
    ok &= finite
    bad_err = ~upper & ~(mag_err > 0)  # NaN or <= 0 for a detection
    count(dropped, "detection without a positive magnitude error", (ok & bad_err).sum())
    ok &= ~bad_err

    flux = np.full(len(ids), np.nan)
    flux_err = np.full(len(ids), np.nan)
    vega = system == "Vega"
    ab_mag = np.where(vega, np.nan, observed)
    det = ok & ~upper
    flux[det & ~vega], flux_err[det & ~vega] = ab_mag_to_njy(
        ab_mag[det & ~vega], mag_err[det & ~vega]
    )
    flux[det & vega], flux_err[det & vega] = vega_mag_to_njy(
        observed[det & vega], mag_err[det & vega], filt[det & vega]
    )
    lim = ok & upper
    # A Vega limit -> AB by the same offset as a Vega detection.
    lim_ab = observed.copy()
    lim_ab[lim & vega] = observed[lim & vega] + np.array(
        [VEGA_TO_AB[b] for b in filt[lim & vega].tolist()]
    )
    flux[lim] = 0.0
    flux_err[lim] = limiting_mag_to_njy_err(lim_ab[lim])

    batch = LightCurveBatch.from_points(
        ids_arr[ok],
        time[ok],
        np.array([BAND_INDEX[b] for b in filt[ok].tolist()], np.int8),
        flux[ok],
        flux_err[ok],
        det[ok],
        objects=objects,
        metadata={
            "ra": meta("RA_deg"),
            "dec": meta("DEC_deg"),
            "redshift": meta("Redshift"),
            "ebv": ebv,
            "explosion_mjd": meta("Explosion"),
            "peak_mjd": meta("Peak"),
            **{
                key.lower(): np.array([r[col[key]] if key in col else "" for r in rows], str)
                for key in ("Quality", "Survey")
            },
        },
        label=np.full(len(objects), SLSNE_LABEL),
    )
    batch.dropped = dropped
    return batch


def _num(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
