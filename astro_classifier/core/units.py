"""Flux unit conversions: one function per survey, all into nJy (the project's one unit).

AB magnitudes: f[nJy] = 10 ** ((31.4 - m) / 2.5), since the AB zero point is 3631 Jy and
2.5 log10(3631e9) = 31.4.
"""

from __future__ import annotations

import numpy as np

AB_ZERO_POINT_NJY = 31.4  # AB magnitude of 1 nJy
PLASTICC_ZERO_POINT = 27.5  # FLUXCAL zero point used by PLAsTiCC / SNANA
_LN10_OVER_2_5 = np.log(10.0) / 2.5


def ab_mag_to_njy(mag: np.ndarray, mag_err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AB magnitude and its error -> flux and flux error in nJy (first-order error propagation).

    The error keeps the sign of ``mag_err``: a negative magnitude error is corrupt data, and
    a negative flux error lets :mod:`astro_classifier.core.quality` drop and count it.
    """
    mag = np.asarray(mag, dtype=np.float64)
    with np.errstate(over="ignore"):
        flux = 10.0 ** ((AB_ZERO_POINT_NJY - mag) / 2.5)
    return flux, flux * _LN10_OVER_2_5 * np.asarray(mag_err, dtype=np.float64)


def plasticc_fluxcal_to_njy(
    flux: np.ndarray, flux_err: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """PLAsTiCC FLUXCAL (zero point 27.5) -> nJy: multiply by 10**((31.4 - 27.5) / 2.5) ~ 36.31."""
    scale = 10.0 ** ((AB_ZERO_POINT_NJY - PLASTICC_ZERO_POINT) / 2.5)
    return np.asarray(flux, np.float64) * scale, np.asarray(flux_err, np.float64) * scale


def ztf_difference_mag_to_njy(
    magpsf: np.ndarray, sigmapsf: np.ndarray, isdiffpos: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """ZTF ``magpsf``/``sigmapsf`` (AB mag of the difference image) and ``isdiffpos`` -> nJy.

    ``isdiffpos`` is 't'/'1' when the science image is brighter than the reference (positive
    flux), 'f'/'0' when fainter (negative flux).
    """
    flux, err = ab_mag_to_njy(magpsf, sigmapsf)
    sign = np.where(np.isin(np.asarray(isdiffpos).astype(str), ["f", "0"]), -1.0, 1.0)
    return sign * flux, err


def ztf_forced_flux_to_njy(
    forcediffimflux: np.ndarray, forcediffimfluxunc: np.ndarray, magzpsci: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """ZTF forced photometry (DN with science zero point ``magzpsci``) -> nJy."""
    scale = 10.0 ** ((AB_ZERO_POINT_NJY - np.asarray(magzpsci, np.float64)) / 2.5)
    return (
        np.asarray(forcediffimflux, np.float64) * scale,
        np.asarray(forcediffimfluxunc, np.float64) * scale,
    )


def rubin_flux_to_njy(
    psf_flux: np.ndarray, psf_flux_err: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rubin ``psfFlux``/``psfFluxErr`` are already nJy; returned as float64 arrays."""
    return np.asarray(psf_flux, np.float64), np.asarray(psf_flux_err, np.float64)


def eros_mag_to_njy(mag: np.ndarray, mag_err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """EROS-1 b/r magnitudes -> nJy, treating them as AB (EROS has no absolute AB calibration
    in this data; the scale only shifts features, the shape of the light curve is kept)."""
    return ab_mag_to_njy(mag, mag_err)


def mjd_from_jd(jd: np.ndarray) -> np.ndarray:
    """Julian date -> modified Julian date."""
    return np.asarray(jd, np.float64) - 2400000.5


def jy_to_njy(flux_jy: np.ndarray, flux_err_jy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flux density and its error in Jy -> nJy (times 1e9); signs (negative fluxes) are kept."""
    return np.asarray(flux_jy, np.float64) * 1e9, np.asarray(flux_err_jy, np.float64) * 1e9


# m_AB - m_Vega per canonical band, for Vega magnitudes in u g r i z y filters
# (SDSS u..z: Blanton & Roweis 2007, AJ 133, 734, table 1; y: Pan-STARRS1, Tonry et al. 2012).
VEGA_TO_AB: dict[str, float] = {
    "u": 0.91,
    "g": -0.08,
    "r": 0.16,
    "i": 0.37,
    "z": 0.54,
    "y": 0.54,
}


def vega_mag_to_njy(
    mag: np.ndarray, mag_err: np.ndarray, band: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Vega magnitudes in canonical bands (letters ``u g r i z y``) -> nJy.

    Adds ``m_AB - m_Vega`` (:data:`VEGA_TO_AB`) and converts with :func:`ab_mag_to_njy`.
    Raises KeyError for a band without an offset.
    """
    band = np.asarray(band).astype(str)
    offset = np.array([VEGA_TO_AB[b] for b in band.tolist()], dtype=np.float64)
    return ab_mag_to_njy(np.asarray(mag, np.float64) + offset, mag_err)


def limiting_mag_to_njy_err(limit_mag: np.ndarray, n_sigma: float = 5.0) -> np.ndarray:
    """An ``n_sigma`` limiting AB magnitude -> the 1-sigma flux noise it implies (nJy).

    A non-detection becomes a point with flux 0 and this error, as the ZTF alert reader does
    for ``diffmaglim`` (flux of the limit / 5).
    """
    limit_flux, _ = ab_mag_to_njy(limit_mag, np.zeros_like(np.asarray(limit_mag, np.float64)))
    return limit_flux / n_sigma
