"""TDSS repeat-quasar-spectroscopy light curves (broulston/TDSS-RQS-ViP ``Lightcurves``) -> batch.

Layout (a folder, or one of its files):

- ``gband.tar.gz``, ``rband.tar.gz``: ``<band>band/<name>``, one text file per quasar and band,
  a ``#MJD mag error`` header then whitespace-separated rows (MJD, AB magnitude, error);
  ``<name>`` is the SDSS name ``hhmmss.ss+ddmmss.s`` (J2000) of a spectroscopically confirmed
  quasar (SDSS DR7Q/DR12Q, SDSS-IV) observed by TDSS. Each tarball is read in one pass, in
  memory (nothing is extracted to disk).
- ``README.txt`` (the survey's notes) and ``LICENSE`` are not read.

Conventions:

- **Flux**: the magnitudes are *total* (PSF) magnitudes of the quasar, not difference
  magnitudes: -> nJy with :func:`ab_mag_to_njy`, every point ``detected=True``. A model for
  difference-imaging alerts needs them rendered as difference flux against a reference epoch
  (training does that).
- **Two surveys, not put on one system**: SDSS points (before ~MJD 54900; most before ~54500,
  a few thousand per band at MJD 54700-54900) and Pan-STARRS1 points (after ~MJD 55000) are
  given as they are, with no colour term or offset between the SDSS and PS1 g/r systems.
- **Bands**: the g tarball -> g, the r tarball -> r.
- **Objects**: one per name in either tarball (the union; the staged set has the same 11,738
  names in both), sorted by name. The survey's internal ids (numeric names of quasars without an
  SDSS name, none in the staged set) are read too, with NaN coordinates.
- **Labels**: ``QSO`` for every object (the training ``label_map`` maps it to ``AGN``).
- **Metadata**: ``ra``, ``dec`` (degrees) decoded from the name.
- **Dropped points** (``batch.dropped``): non-finite time, magnitude or error, or error <= 0.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np

from astro_classifier.catalogs.realsky import parse_floats, sexagesimal_to_degrees
from astro_classifier.core.counts import count
from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import BAND_INDEX, LightCurveBatch
from astro_classifier.core.units import ab_mag_to_njy

TDSS_BANDS = ("g", "r")
TDSS_TARBALL = "{band}band.tar.gz"  # members <band>band/<name>
TDSS_LABEL = "QSO"
TDSS_COLUMNS = 3  # MJD, mag, error
# SDSS name "hhmmss.ss+ddmmss.s" -> (hh, mm, ss.ss, sign, dd, mm, ss.s)
_SDSS_NAME = re.compile(r"^(\d\d)(\d\d)(\d\d(?:\.\d*)?)([+-])(\d\d)(\d\d)(\d\d(?:\.\d*)?)$")


def _folder(path: str | Path) -> Path:
    path = Path(path)
    return path.parent if path.is_file() else path


def sdss_name_to_degrees(name: str) -> tuple[float, float]:
    """``"103438.89+305336.6"`` -> (158.662..., 30.893...); NaN for any other name."""
    match = _SDSS_NAME.match(name.strip())
    if match is None:
        return float("nan"), float("nan")
    h, m, s, sign, d, dm, ds = match.groups()
    return sexagesimal_to_degrees(f"{h}:{m}:{s}", f"{sign}{d}:{dm}:{ds}")


def looks_like_tdss_quasars(path: str | Path) -> bool:
    """True for a folder (or one of its files) holding ``gband.tar.gz`` and ``rband.tar.gz``;
    the tarballs are not opened."""
    folder = _folder(path)
    return all((folder / TDSS_TARBALL.format(band=b)).is_file() for b in TDSS_BANDS)


def _read_band(tarball: Path, band: str) -> tuple[list[str], list[int], np.ndarray]:
    """(names, points per name, values (n, 3)) of one band's tarball."""
    names: list[str] = []
    sizes: list[int] = []
    tokens: list[bytes] = []
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                path = PurePosixPath(member.name)
                if not member.isfile() or path.parent.name != f"{band}band":
                    continue
                if path.name.startswith("."):
                    continue
                fh = tar.extractfile(member)
                if fh is None:
                    continue
                raw = fh.read()
                if b"#" in raw:
                    raw = b"\n".join(
                        line for line in raw.splitlines() if not line.lstrip().startswith(b"#")
                    )
                values = raw.split()
                if len(values) % TDSS_COLUMNS:
                    raise InputError(
                        f"{tarball}:{member.name}",
                        f"expected {TDSS_COLUMNS} whitespace-separated values a line "
                        "(MJD, mag, error)",
                    )
                names.append(path.name)
                sizes.append(len(values) // TDSS_COLUMNS)
                tokens += values
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InputError(tarball, f"cannot read the tarball ({exc})") from exc
    return names, sizes, parse_floats(tokens).reshape(-1, TDSS_COLUMNS)


def read_tdss_quasars(path: str | Path) -> LightCurveBatch:
    """Read the TDSS quasar folder (or one of its files); see the module docstring."""
    folder = _folder(path)
    if not looks_like_tdss_quasars(folder):
        raise InputError(
            path,
            "expected a folder with "
            + " and ".join(TDSS_TARBALL.format(band=b) for b in TDSS_BANDS)
            + " (<band>band/<SDSS name>: #MJD mag error)",
        )
    ids, bands, values = [], [], []
    for band in TDSS_BANDS:
        names, sizes, table = _read_band(folder / TDSS_TARBALL.format(band=band), band)
        ids.append(np.repeat(np.asarray(names, dtype=str), sizes))
        bands.append(np.full(len(table), BAND_INDEX[band], np.int8))
        values.append(table)
    object_ids = np.concatenate(ids)
    band = np.concatenate(bands)
    time, mag, err = np.concatenate(values).T

    dropped: dict[str, int] = {}
    finite = np.isfinite(time) & np.isfinite(mag) & np.isfinite(err)
    count(dropped, "non-finite time, magnitude or error", (~finite).sum())
    keep = finite & (err > 0)
    count(dropped, "magnitude error <= 0", (finite & ~keep).sum())
    flux, flux_err = ab_mag_to_njy(mag[keep], err[keep])

    objects = np.unique(object_ids)  # sorted union of both bands' names
    radec = np.array([sdss_name_to_degrees(o) for o in objects.tolist()]).reshape(-1, 2)
    batch = LightCurveBatch.from_points(
        object_ids[keep],
        time[keep],
        band[keep],
        flux,
        flux_err,
        np.ones(int(keep.sum()), bool),
        objects=objects,
        metadata={"ra": radec[:, 0], "dec": radec[:, 1]},
        label=np.full(len(objects), TDSS_LABEL),
    )
    batch.dropped = dropped
    return batch
