"""Spectra: one canonical batch type, readers of the real spectra, one resampling onto a
model's wavelength grid and one normalisation (numpy and pyarrow only: serving imports it).

Canonical form (:class:`Spectra`): one row per spectrum, several spectra per object allowed;
per spectrum the object id, the observation time (MJD, NaN when unknown), the object's
redshift (NaN when unknown), the flux unit as the source states it, and ragged arrays of
wavelength (Å, **observer frame**, strictly increasing), flux (the source's unit; a model
only ever sees it normalised) and flux error (same unit, NaN when unknown).

Which spectrum a model uses (:meth:`Spectra.one_per_object`): the one observed closest to a
reference time (the light curve's peak) where both are known, else the earliest with a
known time, else the first in file order.

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

Bad spectra are refused and counted by reason in ``Spectra.dropped`` (never silently):
empty, fewer than :data:`MIN_POINTS` finite points, wavelengths not strictly increasing,
wavelengths outside 500-100000 Å, de-redshifted without a redshift, unreadable file.
Non-finite points of a kept spectrum are removed and counted (``points: ...``).

Resampling (:func:`resample`): **flux-conserving**: each grid bin gets the exact integral of
the linearly interpolated flux density over the part of the bin the spectrum covers, divided
by the covered width; a bin less than half covered is NaN (no data). The error of a bin is
the RMS native error over the bin divided by sqrt(number of native pixels in the bin, at
least 1), i.e. independent pixels averaged. The grid is ``spectrum_grid`` = (first centre,
last centre, bins) in Å, linear, observer frame (as :class:`ClipConfig` holds it).

Normalisation (:func:`normalise`): flux and error divided by the RMS of the flux over the
grid, bins without data counting as 0 (NaN stays NaN in the output). The CLIP spectrum tower
applies the same formula in the ONNX graph (it is idempotent: a normalised spectrum has RMS
1), so serving may feed :func:`model_input`'s output or a raw resampled spectrum alike; the
float64 normalisation here keeps fluxes of 1e-19 erg/s/cm^2/Å clear of float32 underflow.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from astro_classifier.core.errors import InputError

MIN_POINTS = 10
WAVELENGTH_RANGE = (500.0, 100_000.0)  # Å: anything outside is another unit or garbage
MIN_COVERAGE = 0.1  # share of the model grid a spectrum must cover to be used
OSC_SPECTRA = "spectra.parquet"
OSC_SPECTRA_COLUMNS = (
    "name", "time", "u_time", "u_wavelengths", "u_fluxes", "u_errors", "deredshifted",
    "wavelength", "flux", "flux_err", "instrument",
)  # fmt: skip
_MJD_OF_UNIX_EPOCH = 40587.0


def _count(counts: dict[str, int], reason: str, n: int = 1) -> None:
    if n:
        counts[reason] = counts.get(reason, 0) + int(n)


@dataclass
class Spectra:
    """A batch of spectra (see the module docstring); arrays of points are ragged by
    ``offsets`` (S + 1)."""

    object_id: np.ndarray  # (S,) str
    offsets: np.ndarray  # (S + 1,) int64
    wavelength: np.ndarray  # (P,) float64, Å, observer frame, increasing per spectrum
    flux: np.ndarray  # (P,) float64, unit flux_unit
    flux_err: np.ndarray  # (P,) float64, NaN = unknown
    time: np.ndarray  # (S,) float64 MJD, NaN = unknown
    redshift: np.ndarray  # (S,) float64, NaN = unknown
    flux_unit: np.ndarray  # (S,) str as the source states it ("" unstated)
    source: np.ndarray  # (S,) str: file or instrument
    dropped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.object_id = np.asarray(self.object_id).astype(str)
        self.offsets = np.asarray(self.offsets, np.int64)
        for name in ("wavelength", "flux", "flux_err", "time", "redshift"):
            setattr(self, name, np.asarray(getattr(self, name), np.float64))
        self.flux_unit = np.asarray(self.flux_unit).astype(str)
        self.source = np.asarray(self.source).astype(str)
        n = len(self.object_id)
        if len(self.offsets) != n + 1 or self.offsets[0] != 0:
            raise ValueError(f"offsets must have {n + 1} entries starting at 0")
        p = int(self.offsets[-1])
        for name in ("wavelength", "flux", "flux_err"):
            if len(getattr(self, name)) != p:
                raise ValueError(f"{name} has {len(getattr(self, name))} points, expected {p}")
        for name in ("time", "redshift", "flux_unit", "source"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, expected {n}")

    @classmethod
    def empty(cls) -> Spectra:
        z = np.zeros(0)
        return cls(np.zeros(0, str), np.zeros(1, np.int64), z, z, z, z, z, [], [])

    def __len__(self) -> int:
        return len(self.object_id)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def spectrum(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(wavelength, flux, flux_err) of spectrum ``i``."""
        s = slice(self.offsets[i], self.offsets[i + 1])
        return self.wavelength[s], self.flux[s], self.flux_err[s]

    def select(self, index: Sequence[int] | np.ndarray) -> Spectra:
        index = np.asarray(index, np.int64)
        lengths = self.lengths[index]
        points = (
            np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in index])
            if len(index)
            else np.zeros(0, np.int64)
        )
        return Spectra(
            self.object_id[index],
            np.concatenate([[0], np.cumsum(lengths)]),
            self.wavelength[points],
            self.flux[points],
            self.flux_err[points],
            self.time[index],
            self.redshift[index],
            self.flux_unit[index],
            self.source[index],
            dict(self.dropped),
        )

    @classmethod
    def concat(cls, parts: Sequence[Spectra]) -> Spectra:
        if not parts:
            return cls.empty()
        offsets, base = [np.zeros(1, np.int64)], 0
        for p in parts:
            offsets.append(p.offsets[1:] + base)
            base += int(p.offsets[-1])
        dropped: dict[str, int] = {}
        for p in parts:
            for k, v in p.dropped.items():
                _count(dropped, k, v)

        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts])

        return cls(
            cat("object_id"),
            np.concatenate(offsets),
            cat("wavelength"),
            cat("flux"),
            cat("flux_err"),
            cat("time"),
            cat("redshift"),
            cat("flux_unit"),
            cat("source"),
            dropped,
        )

    def one_per_object(self, reference_time: Mapping[str, float] | None = None) -> Spectra:
        """The spectrum a model uses per object: closest in time to ``reference_time[object]``
        (e.g. the light curve's peak) where both are finite, else the earliest with a known
        time, else the first in file order. Objects keep their first-appearance order."""
        reference_time = reference_time or {}
        chosen: dict[str, int] = {}
        for i, obj in enumerate(self.object_id.tolist()):
            if obj not in chosen:
                chosen[obj] = i
                continue
            j = chosen[obj]
            ref = reference_time.get(obj, np.nan)
            ti, tj = self.time[i], self.time[j]
            if np.isfinite(ref) and np.isfinite(ti):
                better = not np.isfinite(tj) or abs(ti - ref) < abs(tj - ref)
            else:
                better = np.isfinite(ti) and (not np.isfinite(tj) or ti < tj)
            if better:
                chosen[obj] = i
        return self.select(np.array(list(chosen.values()), np.int64))

    def index_of(self, object_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Row of each object's spectrum (the first when several; -1: none)."""
        first: dict[str, int] = {}
        for i, obj in enumerate(self.object_id.tolist()):
            first.setdefault(obj, i)
        return np.array([first.get(str(o), -1) for o in object_ids], np.int64)


# -- building from raw arrays (one cleaning rule for every reader) ------------------------


class _Builder:
    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.dropped: dict[str, int] = {}

    def add(
        self,
        object_id: str,
        wavelength,
        flux,
        flux_err,
        time: float,
        redshift: float,
        flux_unit: str,
        source: str,
    ) -> None:
        w = np.asarray(wavelength, np.float64)
        f = np.asarray(flux, np.float64)
        e = np.full(len(f), np.nan) if flux_err is None else np.asarray(flux_err, np.float64)
        if len(w) == 0 or len(f) == 0:
            _count(self.dropped, "empty")
            return
        if not (len(w) == len(f) == len(e)):
            _count(self.dropped, "wavelength, flux and error of different lengths")
            return
        finite = np.isfinite(w) & np.isfinite(f)
        _count(self.dropped, "points: non-finite wavelength or flux (removed)", (~finite).sum())
        w, f, e = w[finite], f[finite], e[finite]
        if len(w) < MIN_POINTS:
            _count(self.dropped, f"fewer than {MIN_POINTS} finite points")
            return
        if not np.all(np.diff(w) > 0):
            _count(self.dropped, "wavelengths not strictly increasing")
            return
        if w[0] < WAVELENGTH_RANGE[0] or w[-1] > WAVELENGTH_RANGE[1]:
            _count(self.dropped, "wavelengths outside 500-100000 Å (another unit?)")
            return
        if np.isfinite(e).any() and np.array_equal(e, f):
            _count(self.dropped, "error column equals the flux (read as unknown)")
            e = np.full(len(f), np.nan)
        bad_err = np.isfinite(e) & ~(e > 0)
        _count(self.dropped, "points: error <= 0 (read as unknown)", bad_err.sum())
        e = np.where(bad_err, np.nan, e)
        self.rows.append((object_id, w, f, e, time, redshift, flux_unit, source))

    def build(self) -> Spectra:
        if not self.rows:
            out = Spectra.empty()
            out.dropped = self.dropped
            return out
        cols = list(zip(*self.rows, strict=True))
        lengths = [len(w) for w in cols[1]]
        return Spectra(
            np.array(cols[0], str),
            np.concatenate([[0], np.cumsum(lengths)]),
            np.concatenate(cols[1]),
            np.concatenate(cols[2]),
            np.concatenate(cols[3]),
            np.array(cols[4], np.float64),
            np.array(cols[5], np.float64),
            np.array(cols[6], str),
            np.array(cols[7], str),
            self.dropped,
        )


# -- readers ---------------------------------------------------------------------------


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
    b = _Builder()
    for k in range(len(t["name"])):
        name = t["name"][k]
        z = redshift.get(name, np.nan)
        if (t["u_wavelengths"][k] or "Angstrom") != "Angstrom":
            _count(b.dropped, f"wavelength unit {t['u_wavelengths'][k]}")
            continue
        w = np.asarray(t["wavelength"][k] or [], np.float64)
        if t["deredshifted"][k]:
            if not np.isfinite(z):
                _count(b.dropped, "de-redshifted without a redshift")
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
    from astro_classifier.data.slsne import _table_path, looks_like_slsne

    table = _table_path(path)
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
    b = _Builder()
    for name in redshift:
        folder = table.parent / "supernovae" / name
        if not folder.is_dir():
            continue
        for file in sorted(folder.glob(f"{name}_*.txt")):
            try:
                header, columns, data = read_slsne_spectrum_file(file)
            except InputError:
                _count(b.dropped, "unreadable file")
                continue
            if data.shape[1] < 2:
                _count(b.dropped, "empty")
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


# -- the model's grid -------------------------------------------------------------------


def grid_centres(grid: Sequence[float]) -> np.ndarray:
    """Bin centres (Å) of ``grid`` = (first centre, last centre, bins)."""
    first, last, bins = float(grid[0]), float(grid[1]), int(grid[2])
    if not (bins >= 2 and last > first > 0):
        raise ValueError(
            f"spectrum grid {list(grid)}: expected (first > 0, last > first, bins >= 2)"
        )
    return np.linspace(first, last, bins)


def grid_edges(grid: Sequence[float]) -> np.ndarray:
    c = grid_centres(grid)
    half = 0.5 * (c[1] - c[0])
    return np.concatenate([[c[0] - half], 0.5 * (c[1:] + c[:-1]), [c[-1] + half]])


def _cumulative(w: np.ndarray, f: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Integral from w[0] to x of the linear interpolation of f (x clipped to [w0, w-1])."""
    x = np.clip(x, w[0], w[-1])
    seg = np.concatenate([[0.0], np.cumsum(0.5 * (f[1:] + f[:-1]) * np.diff(w))])
    k = np.clip(np.searchsorted(w, x, side="right") - 1, 0, len(w) - 2)
    dx = x - w[k]
    slope = (f[k + 1] - f[k]) / (w[k + 1] - w[k])
    return seg[k] + f[k] * dx + 0.5 * slope * dx * dx


def resample(spectra: Spectra, grid: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flux-conserving resampling onto ``grid`` (see the module docstring).

    Returns (flux (S, G), flux_err (S, G), coverage (S,)): float64, NaN where a bin is less
    than half covered (errors also NaN where unknown); coverage = share of bins with flux.
    """
    edges = grid_edges(grid)
    lo, hi = edges[:-1], edges[1:]
    width = hi - lo
    n, g = len(spectra), len(lo)
    flux = np.full((n, g), np.nan)
    err = np.full((n, g), np.nan)
    for i in range(n):
        w, f, e = spectra.spectrum(i)
        a, b = np.maximum(lo, w[0]), np.minimum(hi, w[-1])
        covered = np.clip(b - a, 0.0, None)
        ok = covered >= 0.5 * width
        if not ok.any():
            continue
        integral = _cumulative(w, f, b[ok]) - _cumulative(w, f, a[ok])
        flux[i, ok] = integral / covered[ok]
        if np.isfinite(e).all():
            var = _cumulative(w, e * e, b[ok]) - _cumulative(w, e * e, a[ok])
            pixel = np.interp(0.5 * (a[ok] + b[ok]), 0.5 * (w[1:] + w[:-1]), np.diff(w))
            n_pix = np.maximum(covered[ok] / pixel, 1.0)
            err[i, ok] = np.sqrt(var / covered[ok] / n_pix)
    coverage = np.isfinite(flux).mean(axis=1) if g else np.zeros(n)
    return flux, err, coverage


def normalise(flux: np.ndarray, flux_err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flux and error (S, G) divided by each spectrum's flux RMS over the grid (bins without
    data count as 0; NaN stays NaN; an all-zero spectrum is left as is)."""
    x = np.where(np.isfinite(flux), flux, 0.0)
    rms = np.sqrt((x * x).mean(axis=1, keepdims=True))
    rms = np.where(rms > 0, rms, 1.0)
    return flux / rms, flux_err / rms


def model_input(
    spectra: Spectra, grid: Sequence[float], min_coverage: float = MIN_COVERAGE
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """What a spectrum tower takes, for every spectrum: ((S, 2, G) float32 normalised flux and
    error on ``grid``, NaN = no data; (S,) bool usable; counts of the unusable by reason).
    A spectrum covering less than ``min_coverage`` of the grid is unusable (all NaN)."""
    flux, err, coverage = resample(spectra, grid)
    flux, err = normalise(flux, err)
    usable = coverage >= min_coverage
    dropped: dict[str, int] = {}
    _count(dropped, f"covers less than {min_coverage:.0%} of the model grid", (~usable).sum())
    out = np.stack([flux, err], axis=1).astype(np.float32)
    out[~usable] = np.nan
    return out, usable, dropped


def peak_times(object_id: np.ndarray, time: np.ndarray, flux: np.ndarray, owner: np.ndarray):
    """{object: time of its brightest point} from light-curve points (``owner`` = point ->
    object row); the reference time of :meth:`Spectra.one_per_object`."""
    out: dict[str, float] = {}
    order = np.lexsort((-np.nan_to_num(flux, nan=-np.inf), owner))
    first = np.concatenate([[True], owner[order][1:] != owner[order][:-1]]) if len(order) else []
    for p in order[np.asarray(first, bool)]:
        out[str(object_id[owner[p]])] = float(time[p])
    return out


# light-curve formats whose sources also hold spectra -> their spectra reader
SPECTRA_READERS = {"osc": read_osc_spectra, "slsne": read_slsne_spectra}


def read_spectra_of(paths: Sequence[str | Path], format: str | None = None) -> Spectra:
    """The spectra beside light-curve inputs (the inputs of `astroclf embed`): an ``osc``
    folder's ``spectra.parquet``, an ``slsne`` folder's spectrum files. Inputs of other
    formats hold none."""
    from astro_classifier.data.readers import detect_format

    parts = []
    for path in map(Path, paths):
        fmt = format or detect_format(path)
        if fmt in SPECTRA_READERS:
            parts.append(SPECTRA_READERS[fmt](path))
    return Spectra.concat(parts) if parts else Spectra.empty()


def spectra_for(batch, spectra: Spectra, grid: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """((N, 2, G) model-grid input, (N,) bool has one) for each object of the light-curve
    ``batch``: its spectrum closest to the light curve's brightest point, resampled and
    normalised as in training (:func:`model_input`)."""
    n_bins = int(grid[2])
    out = np.full((len(batch), 2, n_bins), np.nan, np.float32)
    has = np.zeros(len(batch), bool)
    if len(spectra) == 0 or len(batch) == 0:
        return out, has
    mine = spectra.select(np.flatnonzero(np.isin(spectra.object_id, batch.object_id)))
    peaks = peak_times(batch.object_id, batch.time, batch.flux, batch.point_object_index())
    one = mine.one_per_object(peaks)
    row = one.index_of(batch.object_id)
    arr, usable, _ = model_input(one, grid)
    has = row >= 0
    has[has] = usable[row[has]]
    out[has] = arr[row[has]]
    return out, has
