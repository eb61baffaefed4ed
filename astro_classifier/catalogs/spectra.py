"""Readers of the real spectra beside the labelled light curves (the Open Supernova Catalog,
the slsne package), into the canonical :class:`Spectra` batch
(:mod:`astro_classifier.core.spectra`; numpy and pyarrow only).

Facts found in the real files (and how the readers treat them):

- ``multimodal/osc-sne/spectra.parquet`` (1,854 spectra of 647 objects): wavelengths are all
  labelled Å and none is de-redshifted (``deredshifted`` False). Fluxes are
  ``erg/s/cm^2/Angstrom`` (1,277) or ``Uncalibrated`` (577: counts, or continuum-normalised
  echelle spectra around 1.0; the normalisation makes the unit irrelevant, the continuum
  shape of an uncalibrated spectrum is still not physical). 1,217 spectra carry no error;
  415 carry an "error" column identical to the flux at every pixel (a copy in the
  catalogue's own JSON, see ``raw_json_examples/PTF12hni.json``): read as unknown (NaN) and
  counted (390 of them; the other 25 are refused for another reason). 65 have scrambled wavelength columns (not increasing, negative values) and 9
  repeat wavelengths: refused (``wavelengths not strictly increasing``). Three SN 2012au
  FIRE spectra are in microns though labelled Å: refused (``wavelengths outside 500-100000
  Å``). The redshift is the object's (``objects.parquet``).
- ``lightcurves/slsne/.../supernovae/<name>/<name>_*.txt`` (239 spectra, one per object):
  ``#`` header lines (the first names the columns: ``Wavelength Flux`` or ``Wavelength Flux
  Sigma ...``; then ``KEY = value`` lines), whitespace columns. ``FLUX_UNITS`` is empty in
  169 files and otherwise erg/s/cm^2/Å in five spellings; median fluxes range from 6e-19 to
  15 (some are scaled or normalised): kept as the file states, unit ``""`` when unstated.
  Time: the ``MJD`` header (46 files), else ``JD`` - 2400000.5, else the ``YYYY.MMDD`` date
  that ends every file name (day resolution). The redshift is ``sne_data.txt``'s.

Bad spectra are refused and counted by reason in ``Spectra.dropped`` (never silently) by
:class:`SpectrumBuilder`, the one cleaning rule of every reader; a file that cannot be
read is counted too.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from astro_classifier.catalogs.slsne import looks_like_slsne, slsne_table_path
from astro_classifier.core.counts import count
from astro_classifier.core.errors import InputError
from astro_classifier.core.spectra import Spectra, SpectrumBuilder

OSC_SPECTRA = "spectra.parquet"
OSC_SPECTRA_COLUMNS = (
    "name", "time", "u_time", "u_wavelengths", "u_fluxes", "u_errors", "deredshifted",
    "wavelength", "flux", "flux_err", "instrument",
)  # fmt: skip
_MJD_OF_UNIX_EPOCH = 40587.0


def read_osc_spectra(path: str | Path) -> Spectra:
    """The Open Supernova Catalog spectra: ``path`` is the folder or its ``spectra.parquet``;
    redshifts come from ``objects.parquet`` beside it (NaN without it)."""
    path = Path(path)
    file = path / OSC_SPECTRA if path.is_dir() else path
    if file.name != OSC_SPECTRA:  # objects.parquet or photometry.parquet of the folder
        file = file.parent / OSC_SPECTRA
    try:
        schema = pq.read_schema(file).names
    except (OSError, ValueError) as exc:
        raise InputError(path, f"expected the OSC {OSC_SPECTRA} ({exc})") from exc
    missing = [c for c in OSC_SPECTRA_COLUMNS if c not in schema]
    if missing:
        raise InputError(file, f"missing column(s) {missing}; expected {list(OSC_SPECTRA_COLUMNS)}")
    t = pq.read_table(file, columns=list(OSC_SPECTRA_COLUMNS)).to_pydict()
    redshift: dict[str, float] = {}
    objects = file.parent / "objects.parquet"
    if objects.is_file():
        o = pq.read_table(objects, columns=["name", "redshift"]).to_pydict()
        redshift = {
            n: np.nan if z is None else float(z)
            for n, z in zip(o["name"], o["redshift"], strict=True)
        }
    b = SpectrumBuilder()
    for k in range(len(t["name"])):
        name = t["name"][k]
        z = redshift.get(name, np.nan)
        if (t["u_wavelengths"][k] or "Angstrom") != "Angstrom":
            count(b.dropped, f"wavelength unit {t['u_wavelengths'][k]}")
            continue
        w = np.asarray(t["wavelength"][k] or [], np.float64)
        if t["deredshifted"][k]:
            if not np.isfinite(z):
                count(b.dropped, "de-redshifted without a redshift")
                continue
            w = w * (1.0 + z)
        time = t["time"][k] if t["u_time"][k] == "MJD" and t["time"][k] is not None else np.nan
        unit = t["u_fluxes"][k] or ""
        unit = "uncalibrated" if unit.lower() == "uncalibrated" else unit
        err = t["flux_err"][k] if t["u_errors"][k] else None
        b.add(name, w, t["flux"][k] or [], err, time, z, unit, t["instrument"][k] or "")
    return b.build()


_DATE_SUFFIX = re.compile(r"_(\d{4})\.(\d{2})(\d{2})\.txt$")


def _date_to_mjd(year: int, month: int, day: int) -> float:
    days = (dt.date(year, month, day) - dt.date(1970, 1, 1)).days
    return _MJD_OF_UNIX_EPOCH + days


def _slsne_time(header: dict[str, str], name: str) -> float:
    for key, shift in (("MJD", 0.0), ("JD", 2400000.5)):
        try:
            value = float(header.get(key, ""))
        except ValueError:
            continue
        if np.isfinite(value) and value > 0:
            return value - shift
    m = _DATE_SUFFIX.search(name)
    if m:
        try:
            return _date_to_mjd(int(m[1]), int(m[2]), int(m[3]))
        except ValueError:
            return np.nan
    return np.nan


def read_slsne_spectrum_file(path: Path) -> tuple[dict[str, str], list[str], np.ndarray]:
    """(header KEY = value pairs, column names, (n, k) float array) of one slsne spectrum."""
    header: dict[str, str] = {}
    columns: list[str] = []
    rows: list[list[float]] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("#"):
            text = line[1:].strip()
            if "=" in text:
                key, value = text.split("=", 1)
                header.setdefault(key.strip(), value.strip())
            elif not columns and text:
                columns = text.split()
            continue
        parts = line.split()
        if parts:
            try:
                rows.append([float(v) for v in parts[:3]])
            except ValueError as exc:
                raise InputError(path, f"a data row that is not numbers: {line[:60]!r}") from exc
    if columns[:2] != ["Wavelength", "Flux"]:
        raise InputError(path, f"expected columns 'Wavelength Flux [Sigma]', got {columns}")
    width = min((len(r) for r in rows), default=0)
    return header, columns, np.array([r[:width] for r in rows], np.float64).reshape(-1, width)


def read_slsne_spectra(path: str | Path) -> Spectra:
    """The slsne package spectra (``<name>_*.txt`` beside each ``<name>.txt`` photometry);
    ``path`` is the package folder or any folder above ``ref_data``."""
    table = slsne_table_path(path)
    if table is None or not looks_like_slsne(table):
        raise InputError(path, "expected the slsne package data (sne_data.txt and supernovae/)")
    lines = [r.split() for r in table.read_text(encoding="utf-8").splitlines() if r.strip()]
    col = {c: k for k, c in enumerate(lines[0])}
    redshift = {}
    for r in lines[1:]:
        try:
            redshift[r[col["Name"]]] = float(r[col["Redshift"]])
        except ValueError:
            redshift[r[col["Name"]]] = np.nan
    b = SpectrumBuilder()
    for name in redshift:
        folder = table.parent / "supernovae" / name
        if not folder.is_dir():
            continue
        for file in sorted(folder.glob(f"{name}_*.txt")):
            try:
                header, columns, data = read_slsne_spectrum_file(file)
            except InputError:
                count(b.dropped, "unreadable file")
                continue
            if data.shape[1] < 2:
                count(b.dropped, "empty")
                continue
            err = (
                data[:, 2]
                if len(columns) > 2 and columns[2] == "Sigma" and data.shape[1] > 2
                else None
            )
            b.add(
                name,
                data[:, 0],
                data[:, 1],
                err,
                _slsne_time(header, file.name),
                redshift[name],
                header.get("FLUX_UNITS", ""),
                file.name,
            )
    return b.build()
