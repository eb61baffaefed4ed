"""Open Supernova Catalog objects (``objects.parquet`` + ``photometry.parquet``) -> batch.

Layout: a folder holding ``objects.parquet`` (``name``, ``claimedtype``, ``redshift``, ``ra``,
``dec`` sexagesimal, ``ebv``, ...) and ``photometry.parquet`` (one row per measurement:
``name``, ``time`` with ``u_time`` ``MJD``, ``band``, ``system``, ``magnitude``,
``e_magnitude``, ``upperlimit``, ...). ``path`` is the folder or either file.

Conventions:

- **Bands kept**: ``u g r i z y``, the primed SDSS names ``u' g' r' i' z'`` and the
  Pan-STARRS1 names ``gP1 .. yP1``, mapped to the same canonical letter. Every other band (Johnson/Cousins ``UBVRI``, unfiltered ``C``/
  ``clear``, Swift UV, near-IR, PS1 ``w``, Gaia ``G``, ...) is counted in ``batch.dropped``
  under ``band <name>``.
- **System**: empty, ``AB``, ``SDSS`` and ``Swope`` (CSP natural, within a few hundredths of
  AB in ugri) -> :func:`ab_mag_to_njy`; ``Vega`` -> :func:`vega_mag_to_njy`; any other system
  is dropped and counted (``system <name>``).
- **Upper limits** (``upperlimit`` True): flux 0 and error :func:`limiting_mag_to_njy_err`
  (flux of the limit / 5, as the ZTF alert reader does for ``diffmaglim``), ``detected=False``.
  Most OSC rows are upper limits (Pan-STARRS1 Medium Deep nightly limits).
- **Detections without ``e_magnitude``** (about 60 % of the detections, almost all Pan-STARRS1
  Medium Deep): by default they get ``missing_mag_err`` = 0.1 mag (:data:`OSC_MISSING_MAG_ERR`)
  and are counted per object in metadata ``n_mag_err_imputed``; with ``missing_mag_err=None``
  they are dropped and counted.
- **Dropped points**: bands or systems not kept, time not in MJD, non-finite time or
  magnitude, a detection error that is not positive.
- **Johnson-Cousins bands** (``johnson_cousins=True``, off by default so the ``osc`` format
  keeps its ugrizy-only light curves): ``U B R I`` are kept as the nearest canonical band by
  effective wavelength (U 366 nm -> u, B 438 -> g, R 641 -> r, I 798 -> i; an approximation:
  the colours differ by a few tenths of a magnitude), with an empty system read as Vega
  (Landolt) and converted with :data:`JOHNSON_VEGA_TO_AB` (Blanton & Roweis 2007). ``V``
  (551 nm, halfway between g and r) is dropped and counted rather than mixed into either.
  Of the 647 objects with a spectrum, 151 have >= 3 ugrizy detections and 559 with U B R I.
- **Labels**: :func:`sn_type_label` of ``claimedtype`` (``Ia`` -> ``SNIa``, ``II P`` ->
  ``SNII``, ``Ic BL`` -> ``SNIbc``, ...; ambiguous types -> ``SN``); ``claimedtype`` itself is
  kept in metadata (str).
- **Metadata**: ``ra``, ``dec`` (degrees), ``redshift``, ``ebv``, ``claimedtype`` (str),
  ``n_mag_err_imputed``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from astro_classifier.catalogs.realsky import sexagesimal_to_degrees, sn_type_label
from astro_classifier.core.counts import count
from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import BAND_INDEX, LightCurveBatch
from astro_classifier.core.units import (
    VEGA_TO_AB,
    ab_mag_to_njy,
    limiting_mag_to_njy_err,
    vega_mag_to_njy,
)

OSC_OBJECTS = "objects.parquet"
OSC_PHOTOMETRY = "photometry.parquet"
OSC_OBJECT_COLUMNS = ("name", "claimedtype", "redshift", "ra", "dec", "ebv")
OSC_PHOT_COLUMNS = (
    "name",
    "time",
    "u_time",
    "band",
    "system",
    "magnitude",
    "e_magnitude",
    "upperlimit",
)
# OSC band name -> canonical band.
OSC_BANDS: dict[str, str] = {
    **{b: b for b in "ugrizy"},
    **{f"{b}'": b for b in "ugriz"},
    **{f"{b}P1": b for b in "grizy"},  # Pan-STARRS1 names
}
OSC_AB_SYSTEMS = ("", "AB", "SDSS", "Swope")
# Johnson-Cousins band -> (nearest canonical band, m_AB - m_Vega of the Johnson band itself).
JOHNSON_BANDS: dict[str, str] = {"U": "u", "B": "g", "R": "r", "I": "i"}
JOHNSON_VEGA_TO_AB: dict[str, float] = {"U": 0.79, "B": -0.09, "V": 0.02, "R": 0.21, "I": 0.45}
OSC_MISSING_MAG_ERR = 0.1  # magnitudes; given to detections that carry no error


def _folder(path: str | Path) -> Path:
    path = Path(path)
    return path.parent if path.is_file() else path


def looks_like_osc(path: str | Path) -> bool:
    """True for a folder (or one of its two files) with the OSC objects and photometry Parquet."""
    folder = _folder(path)
    try:
        objects = pq.read_schema(folder / OSC_OBJECTS).names
        photometry = pq.read_schema(folder / OSC_PHOTOMETRY).names
    except (OSError, ValueError):
        return False
    return all(c in objects for c in OSC_OBJECT_COLUMNS) and all(
        c in photometry for c in OSC_PHOT_COLUMNS
    )


def read_osc(
    path: str | Path,
    missing_mag_err: float | None = OSC_MISSING_MAG_ERR,
    johnson_cousins: bool = False,
) -> LightCurveBatch:
    """Read the OSC supernovae; see the module docstring."""
    folder = _folder(path)
    if not looks_like_osc(folder):
        raise InputError(
            path,
            f"expected {OSC_OBJECTS} (columns {list(OSC_OBJECT_COLUMNS)}) and {OSC_PHOTOMETRY} "
            f"(columns {list(OSC_PHOT_COLUMNS)})",
        )
    objects = pq.read_table(folder / OSC_OBJECTS, columns=list(OSC_OBJECT_COLUMNS)).to_pydict()
    phot = pq.read_table(folder / OSC_PHOTOMETRY, columns=list(OSC_PHOT_COLUMNS)).to_pydict()
    names = np.asarray(objects["name"], dtype=str)
    dropped: dict[str, int] = {}

    point_name = np.asarray(phot["name"], dtype=str)
    in_table = np.isin(point_name, names)
    count(dropped, "object not in objects.parquet", (~in_table).sum())
    band_name = np.array(["" if b is None else b for b in phot["band"]], dtype=str)
    system = np.array(["" if s is None else s for s in phot["system"]], dtype=str)
    u_time = np.array(["" if u is None else u for u in phot["u_time"]], dtype=str)
    time = _floats(phot["time"])
    mag = _floats(phot["magnitude"])
    mag_err = _floats(phot["e_magnitude"])
    upper = np.array([bool(u) for u in phot["upperlimit"]])

    ok = in_table.copy()
    bands = {**OSC_BANDS, **(JOHNSON_BANDS if johnson_cousins else {})}
    johnson = (
        np.isin(band_name, list(JOHNSON_BANDS)) if johnson_cousins else np.zeros(len(ok), bool)
    )
    system = np.where(johnson & (system == ""), "Vega", system)  # Landolt magnitudes
    kept_band = np.isin(band_name, list(bands))
    for name in np.unique(band_name[ok & ~kept_band]):
        count(dropped, f"band {name or '(none)'}", (ok & ~kept_band & (band_name == name)).sum())
    ok &= kept_band
    known_system = np.isin(system, [*OSC_AB_SYSTEMS, "Vega"])
    for name in np.unique(system[ok & ~known_system]):
        count(dropped, f"system {name}", (ok & ~known_system & (system == name)).sum())
    ok &= known_system
    mjd = u_time == "MJD"
    count(dropped, "time not in MJD", (ok & ~mjd).sum())
    ok &= mjd
    finite = np.isfinite(time) & np.isfinite(mag)
    count(dropped, "non-finite time or magnitude", (ok & ~finite).sum())
    ok &= finite
    det = ok & ~upper
    no_err = det & np.isnan(mag_err)
    if missing_mag_err is None:
        count(dropped, "detection without magnitude error", no_err.sum())
        ok &= ~no_err
        det &= ~no_err
        imputed = np.zeros(len(ok), bool)
    else:
        mag_err = np.where(no_err, missing_mag_err, mag_err)
        imputed = no_err
    bad_err = det & ~(mag_err > 0)
    count(dropped, "detection with magnitude error <= 0", bad_err.sum())
    ok &= ~bad_err
    det &= ~bad_err
    imputed &= ok

    canonical = np.array([bands.get(b, "g") for b in band_name.tolist()])
    vega = system == "Vega"
    # a Johnson-Cousins band's own Vega -> AB offset, applied before the AB conversion
    if johnson_cousins:
        jvega = johnson & vega
        jmag = np.array([JOHNSON_VEGA_TO_AB.get(b, 0.0) for b in band_name.tolist()])
        mag = np.where(jvega, mag + jmag, mag)
        vega = vega & ~johnson
    flux = np.full(len(ok), np.nan)
    flux_err = np.full(len(ok), np.nan)
    sel = det & ~vega
    flux[sel], flux_err[sel] = ab_mag_to_njy(mag[sel], mag_err[sel])
    sel = det & vega
    flux[sel], flux_err[sel] = vega_mag_to_njy(mag[sel], mag_err[sel], canonical[sel])
    lim = ok & upper
    offset = np.where(vega, [VEGA_TO_AB[b] for b in canonical.tolist()], 0.0)  # jvega: in mag
    flux[lim] = 0.0
    flux_err[lim] = limiting_mag_to_njy_err(mag[lim] + offset[lim])

    index_of = {n: k for k, n in enumerate(names.tolist())}
    n_imputed = np.bincount(
        [index_of[n] for n in point_name[imputed].tolist()], minlength=len(names)
    ).astype(np.float64)
    radec = np.array(
        [
            sexagesimal_to_degrees(r or "", d or "")
            for r, d in zip(objects["ra"], objects["dec"], strict=True)
        ]
    ).reshape(-1, 2)
    batch = LightCurveBatch.from_points(
        point_name[ok],
        time[ok],
        np.array([BAND_INDEX[b] for b in canonical[ok].tolist()], np.int8),
        flux[ok],
        flux_err[ok],
        det[ok],
        objects=names,
        metadata={
            "ra": radec[:, 0],
            "dec": radec[:, 1],
            "redshift": _floats(objects["redshift"]),
            "ebv": _floats(objects["ebv"]),
            "claimedtype": np.array([t or "" for t in objects["claimedtype"]], dtype=str),
            "n_mag_err_imputed": n_imputed,
        },
        label=np.array([sn_type_label(t) for t in objects["claimedtype"]], dtype=str),
    )
    batch.dropped = dropped
    return batch


def _floats(values: list) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
