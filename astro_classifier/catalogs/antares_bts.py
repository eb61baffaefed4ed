"""ZTF Bright Transient Survey transients as ANTARES alert light curves (HSE-LAMBDA
light_curve_approx ``data/ANTARES/``) -> batch.

Layout (a folder, or one of its files):

- ``labels.csv``: ``ZTFID``, ``IAUID``, ``RA``/``Dec`` (sexagesimal), ``type`` (the BTS
  spectroscopic type: ``SN Ia``, ``SN II``, ``SN Ic-BL``, ``SLSN-I``, ``TDE``, ``nova``, ...),
  ``redshift`` (empty or ``-`` when unknown), ``peakmag``, ``peakfilt`` (``g``/``r``); the BTS
  catalogue (``ZTF_BTS_02_02__02_04_2021.csv``) joined to the light curves;
- ``antares_lightcurves.tar.gz``: ``data/ANTARES/<ZTFID>.csv`` with columns (an unnamed
  index), ``ant_mjd`` (MJD), ``ant_passband`` (``g``, ``R`` for ZTF r), ``ant_mag``,
  ``ant_magerr``. The tarball is read in one pass, in memory (nothing is extracted to disk).

Conventions, as the BTS SN Ia reader's (:mod:`astro_classifier.catalogs.ztf_bts`):

- **Flux**: ``ant_mag``/``ant_magerr`` are ZTF PSF magnitudes (AB) of detections only (no
  upper limits) -> nJy with :func:`ab_mag_to_njy`; every point has ``detected=True``.
- **Bands**: ``g`` -> g, ``R`` -> r (ZTF r).
- **Objects**: one per row of ``labels.csv``, in its order, id ``ZTFID``; a row without a
  light curve in the tarball gets an empty light curve (none in the staged set: its 2,705 rows
  and 2,705 light curves match one to one). Light curves of ZTFIDs absent from ``labels.csv``
  are dropped and counted.
- **Labels**: :func:`sn_type_label` of ``type`` (``SN Ia``, ``-91T``, ``-pec``, ``-CSM`` ->
  ``SNIa``; ``SN Ia-91bg`` -> ``SNIa-91bg``; ``SN Iax`` -> ``SNIax``; ``SN II``, ``IIP``,
  ``II-pec`` -> ``SNII``; ``SN IIn`` -> ``SNIIn``; ``SN IIb`` -> ``SNIIb``; ``SN Ib``, ``Ic``,
  ``Ib/c``, ``Ibn``, ``Ib-pec`` -> ``SNIbc``; ``SLSN-I``, ``SLSN-II``, ``TDE`` as they are;
  ``LBV``, ``ILRT``, ``LRN``, ``Ca-rich``, ``other`` -> ``SN``), with three additions
  (:data:`BTS_EXTRA_TYPES` and a retry without the ``SN`` prefix): ``SN Ic-BL`` and ``SN Icn``
  (stripped-envelope) -> ``SNIbc``, ``nova`` -> ``CV/Nova`` (the project's class for novae).
  The raw type is kept in metadata ``type`` (str).
- **Metadata**: ``ra``, ``dec`` (degrees), ``redshift`` (NaN when unknown), ``peak_mag`` (the
  BTS peak magnitude), ``peak_band`` (``g``/``r``, str), ``type`` (str).
- **Dropped points** (``batch.dropped``): non-finite time, magnitude or error, error <= 0,
  an unknown band, or a light curve whose ZTFID is not in ``labels.csv``.
"""

from __future__ import annotations

import csv
import io
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np

from astro_classifier.catalogs.realsky import (
    GENERIC_SN,
    magnitude_points,
    parse_floats,
    sexagesimal_to_degrees,
    sn_type_label,
)
from astro_classifier.core.counts import count
from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import LightCurveBatch

ANTARES_LABELS = "labels.csv"
ANTARES_TARBALL = "antares_lightcurves.tar.gz"
ANTARES_MEMBER_DIR = "data/ANTARES"
ANTARES_LABEL_COLUMNS = ("ZTFID", "RA", "Dec", "type", "redshift")
ANTARES_LC_COLUMNS = ("ant_mjd", "ant_passband", "ant_mag", "ant_magerr")
# ANTARES passband -> canonical band (ZTF R is ZTF r).
ANTARES_BANDS: dict[str, str] = {"g": "g", "R": "r"}
# BTS types that sn_type_label leaves generic but the project has a class for.
BTS_EXTRA_TYPES: dict[str, str] = {"SN Icn": "SNIbc", "nova": "CV/Nova"}


def _folder(path: str | Path) -> Path:
    path = Path(path)
    return path.parent if path.is_file() else path


def _header(path: Path) -> list[str]:
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            line = next((line for line in fh if line.strip()), "")
    except OSError:
        return []
    return [c.strip() for c in line.split(",")]


def bts_type_label(raw: str) -> str:
    """Canonical label of a BTS ``type``; see the module docstring."""
    text = str(raw).strip()
    if text in BTS_EXTRA_TYPES:
        return BTS_EXTRA_TYPES[text]
    label = sn_type_label(text)
    if label == GENERIC_SN and text[:3].lower() == "sn ":
        label = sn_type_label(text[3:])  # "SN Ic-BL": the taxonomy knows "Ic-BL"
    return label


def looks_like_antares_bts(path: str | Path) -> bool:
    """True for a folder (or one of its files) with ``labels.csv`` (BTS columns) beside
    ``antares_lightcurves.tar.gz``; the tarball is not opened."""
    folder = _folder(path)
    if not (folder / ANTARES_TARBALL).is_file():
        return False
    header = _header(folder / ANTARES_LABELS)
    return all(c in header for c in ANTARES_LABEL_COLUMNS)


def read_antares_bts(path: str | Path) -> LightCurveBatch:
    """Read the BTS/ANTARES folder (or one of its files); see the module docstring."""
    folder = _folder(path)
    if not looks_like_antares_bts(folder):
        raise InputError(
            path,
            f"expected a folder with {ANTARES_LABELS} (columns {list(ANTARES_LABEL_COLUMNS)}) "
            f"and {ANTARES_TARBALL} ({ANTARES_MEMBER_DIR}/<ZTFID>.csv)",
        )
    text = (folder / ANTARES_LABELS).read_text(encoding="utf-8", errors="replace").lstrip()
    rows = list(csv.DictReader(io.StringIO(text)))
    known = {r["ZTFID"] for r in rows}
    dropped: dict[str, int] = {}
    ids, times, bands, mags, errs = [], [], [], [], []
    tarball = folder / ANTARES_TARBALL
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                name = PurePosixPath(member.name)
                if not member.isfile() or name.suffix != ".csv":
                    continue
                if str(name.parent) != ANTARES_MEMBER_DIR:
                    continue
                fh = tar.extractfile(member)
                if fh is None:
                    continue
                lines = fh.read().decode("utf-8", errors="replace").splitlines()
                source = f"{tarball}:{member.name}"
                header = [c.strip() for c in lines[0].split(",")] if lines else []
                if not all(c in header for c in ANTARES_LC_COLUMNS):
                    raise InputError(source, f"expected columns {list(ANTARES_LC_COLUMNS)}")
                it, ib, im, ie = (header.index(c) for c in ANTARES_LC_COLUMNS)
                points = [line.split(",") for line in lines[1:] if line.strip()]
                width = len(header)
                if any(len(p) != width for p in points):
                    raise InputError(source, f"expected {width} comma-separated fields a line")
                if name.stem not in known:
                    count(dropped, "light curve of a ZTFID not in labels.csv", len(points))
                    continue
                ids += [name.stem] * len(points)
                times += [p[it] for p in points]
                bands += [p[ib].strip() for p in points]
                mags += [p[im] for p in points]
                errs += [p[ie] for p in points]
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InputError(tarball, f"cannot read the tarball ({exc})") from exc

    point_ids, time, band, flux, flux_err = magnitude_points(
        ids, times, bands, mags, errs, ANTARES_BANDS, dropped
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
            "redshift": parse_floats([r.get("redshift", "") for r in rows]),
            "peak_mag": parse_floats([r.get("peakmag", "") for r in rows]),
            "peak_band": np.array([(r.get("peakfilt") or "").strip() for r in rows], dtype=str),
            "type": np.array([r["type"] for r in rows], dtype=str),
        },
        label=np.array([bts_type_label(r["type"]) for r in rows], dtype=str),
    )
    batch.dropped = dropped
    return batch
