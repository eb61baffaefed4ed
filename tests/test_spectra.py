"""Spectra: readers of the real files (values checked by hand against the raw files), the one
resampling (flux-conserving) and the one normalisation, bad spectra counted by reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from astro_classifier.catalogs.spectra import read_osc_spectra, read_slsne_spectra
from astro_classifier.core.errors import InputError
from astro_classifier.core.spectra import Spectra
from astro_classifier.core.spectra import SpectrumBuilder as _Builder
from astro_classifier.features.spectra import grid_centres, model_input, normalise, resample


def _one(w, f, e=None, obj="a", time=np.nan) -> Spectra:
    b = _Builder()
    b.add(obj, w, f, e, time, 0.1, "erg/s/cm^2/Angstrom", "test")
    return b.build()


@pytest.fixture(scope="module")
def osc(shared_data: Path) -> Spectra:
    return read_osc_spectra(shared_data / "multimodal" / "osc-sne")


@pytest.fixture(scope="module")
def slsne(shared_data: Path) -> Spectra:
    return read_slsne_spectra(shared_data / "lightcurves" / "slsne")


def test_osc_spectra_values_and_counts(osc, shared_data: Path) -> None:
    raw = pq.read_table(shared_data / "multimodal" / "osc-sne" / "spectra.parquet")
    # every raw spectrum is either kept or counted under a reason that refuses it
    refused = {k: v for k, v in osc.dropped.items() if not k.startswith(("points:", "error"))}
    assert len(osc) + sum(refused.values()) == raw.num_rows == 1854
    assert refused == {
        "wavelengths not strictly increasing": 74,  # scrambled columns, repeated wavelengths
        "wavelengths outside 500-100000 Å (another unit?)": 3,  # SN 2012au FIRE, in microns
    }
    assert osc.dropped["error column equals the flux (read as unknown)"] == 390
    # ASASSN-13ch, spectrum 0 (checked by hand in spectra.parquet and objects.parquet)
    i = int(np.flatnonzero(osc.object_id == "ASASSN-13ch")[0])
    w, f, e = osc.spectrum(i)
    assert w[0] == 3647.36328125 and f[0] == pytest.approx(4.117849826043834e-15, rel=1e-12)
    assert np.isnan(e).all()  # u_errors is null: no error
    assert osc.time[i] == 56533.0 and osc.redshift[i] == pytest.approx(0.01646)
    assert osc.flux_unit[i] == "erg/s/cm^2/Angstrom"
    # ASASSN-13co: its "error" column is a copy of the flux -> unknown
    j = int(np.flatnonzero(osc.object_id == "ASASSN-13co")[0])
    assert osc.spectrum(j)[1][0] == pytest.approx(5.03992226912834e-16, rel=1e-12)
    assert np.isnan(osc.spectrum(j)[2]).all()
    assert all(np.all(np.diff(osc.spectrum(k)[0]) > 0) for k in range(len(osc)))
    assert set(osc.flux_unit.tolist()) == {"erg/s/cm^2/Angstrom", "uncalibrated"}


def test_slsne_spectra_values_and_counts(slsne) -> None:
    assert len(slsne) == 238 and len(set(slsne.object_id.tolist())) == 238
    assert slsne.dropped["wavelengths not strictly increasing"] == 1
    # 2018bym_DBSP_ZTF_TNS_2018.0612.txt: "3299.8 2.139e-16", no Sigma column, no MJD header
    i = int(np.flatnonzero(slsne.object_id == "2018bym")[0])
    w, f, e = slsne.spectrum(i)
    assert (w[0], f[0], w[-1]) == (3299.8, 2.139e-16, 9199.8)
    assert np.isnan(e).all()
    assert slsne.time[i] == 58281.0  # 2018-06-12 from the file name
    assert np.isfinite(slsne.redshift).all()
    with_sigma = [k for k in range(len(slsne)) if np.isfinite(slsne.spectrum(k)[2]).any()]
    assert len(with_sigma) > 50


def test_readers_refuse_wrong_paths(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="spectra.parquet"):
        read_osc_spectra(tmp_path)
    with pytest.raises(InputError, match="sne_data.txt"):
        read_slsne_spectra(tmp_path)


def test_bad_spectra_are_counted_by_reason() -> None:
    b = _Builder()
    w = np.linspace(4000, 8000, 50)
    b.add("empty", [], [], None, np.nan, np.nan, "", "")
    b.add("decreasing", w[::-1], np.ones(50), None, np.nan, np.nan, "", "")
    b.add("microns", w / 1e4, np.ones(50), None, np.nan, np.nan, "", "")
    b.add("few", w[:5], np.ones(5), None, np.nan, np.nan, "", "")
    f = np.ones(50)
    f[3] = np.nan
    b.add("ok", w, f, np.full(50, -1.0), np.nan, np.nan, "", "")
    s = b.build()
    assert s.object_id.tolist() == ["ok"] and s.lengths.tolist() == [49]
    assert s.dropped == {
        "empty": 1,
        "wavelengths not strictly increasing": 1,
        "wavelengths outside 500-100000 Å (another unit?)": 1,
        "fewer than 10 finite points": 1,
        "points: non-finite wavelength or flux (removed)": 1,
        "points: error <= 0 (read as unknown)": 49,
    }


def test_resampling_is_exact_for_a_linear_spectrum_and_conserves_flux() -> None:
    w = np.linspace(3000.0, 10000.0, 3001)
    grid = (4000.0, 9000.0, 51)
    s = _one(w, 2.0 + 1e-3 * w)
    flux, _, coverage = resample(s, grid)
    assert coverage[0] == 1.0
    np.testing.assert_allclose(flux[0], 2.0 + 1e-3 * grid_centres(grid), rtol=1e-12)
    # a curved spectrum: the bins' integral equals the spectrum's over the grid's span
    w = np.arange(3000.0, 10000.5, 1.0)  # bin edges fall on pixels: the trapezoid is exact
    f = np.exp(-(((w - 6000.0) / 300.0) ** 2)) + 0.1
    flux, _, _ = resample(_one(w, f), grid)
    step = 100.0
    lo, hi = grid[0] - step / 2, grid[1] + step / 2
    inside = (w >= lo) & (w <= hi)
    expected = np.trapezoid(f[inside], w[inside])
    assert flux[0].sum() * step == pytest.approx(expected, rel=1e-6)


def test_partial_coverage_and_out_of_grid() -> None:
    grid = (4000.0, 9000.0, 51)  # bins 100 Å wide
    w = np.linspace(3000.0, 6020.0, 500)
    flux, err, coverage = resample(_one(w, np.ones(500)), grid)
    c = grid_centres(grid)
    assert np.isfinite(flux[0][c <= 6000]).all() and np.isnan(flux[0][c > 6030]).all()
    assert np.isnan(err).all()  # no error given
    assert coverage[0] == pytest.approx(np.isfinite(flux[0]).mean())
    s = Spectra.concat([_one(w, np.ones(500)), _one(np.linspace(10000, 12000, 50), np.ones(50))])
    arr, usable, dropped = model_input(s, grid)
    assert usable.tolist() == [True, False] and np.isnan(arr[1]).all()
    assert dropped == {"covers less than 10% of the model grid": 1}


def test_error_of_a_bin_averages_independent_pixels() -> None:
    w = np.arange(3000.0, 10000.0, 2.0)  # 2 Å pixels, 100 Å bins: 50 pixels per bin
    _, err, _ = resample(_one(w, np.ones(len(w)), np.full(len(w), 0.5)), (4000.0, 9000.0, 51))
    np.testing.assert_allclose(err[0], 0.5 / np.sqrt(50), rtol=1e-9)


def test_normalisation_is_scale_free_and_idempotent() -> None:
    rng = np.random.default_rng(0)
    flux = rng.normal(1, 0.3, (3, 40))
    flux[1, :10] = np.nan
    err = np.abs(flux) * 0.1
    f1, e1 = normalise(flux * 1e-17, err * 1e-17)
    f2, e2 = normalise(flux, err)
    np.testing.assert_allclose(f1, f2, rtol=1e-12)
    np.testing.assert_allclose(e1, e2, rtol=1e-12)
    rms = np.sqrt(np.nanmean(np.where(np.isnan(f2), 0, f2) ** 2, axis=1))
    np.testing.assert_allclose(rms, 1.0, rtol=1e-12)
    np.testing.assert_allclose(normalise(f2, e2)[0], f2, rtol=1e-12)
    assert np.isnan(f2[1, :10]).all()
    zero = normalise(np.zeros((1, 5)), np.zeros((1, 5)))[0]
    assert np.array_equal(zero, np.zeros((1, 5)))


def test_one_spectrum_per_object_rule() -> None:
    w = np.linspace(4000, 8000, 20)
    s = Spectra.concat(
        [
            _one(w, np.ones(20), obj="x", time=100.0),
            _one(w, np.ones(20) * 2, obj="x", time=50.0),
            _one(w, np.ones(20) * 3, obj="x", time=np.nan),
            _one(w, np.ones(20) * 4, obj="y", time=np.nan),
        ]
    )
    assert s.one_per_object().flux[::20].tolist() == [2.0, 4.0]  # earliest known time
    picked = s.one_per_object({"x": 95.0})
    assert picked.object_id.tolist() == ["x", "y"] and picked.time[0] == 100.0  # closest to peak
    assert s.index_of(["y", "z", "x"]).tolist() == [3, -1, 0]
