"""Training-set augmentation: move simulated objects to the distances, depths and noise of
the survey a model will serve, so that brightness stops being a shortcut.

PLAsTiCC simulates LSST's spectroscopic training set: bright, nearby transients at LSST depth.
A model trained on it as is learns "this bright means that class". Real ZTF transients are
brighter still (nearby); the PLAsTiCC test set is fainter and farther. Following avocado
(Boone 2019), each augmented copy of an object is the same event seen at another distance:

- **extragalactic** objects (host redshift z0 > 0) are moved to a new redshift z1: fluxes
  scale by (d_L(z0) / d_L(z1))^2 (flat LambdaCDM, H0 = 70, Omega_m = 0.3; no K-correction:
  the bands are not shifted, a known approximation), times stretch by (1 + z1) / (1 + z0)
  about the first point, and the host redshift, its error and the distance modulus follow;
- **galactic** objects (z0 = 0) are scaled in brightness only (their distance is unknown);
- **noise** is re-simulated for the target survey: each point's noise becomes
  max(scaled noise, target noise) by adding Gaussian noise of the missing variance, and a
  point is "detected" when its flux exceeds 5 sigma.

Targets (:class:`AugmentSpec`):

- ``ztf``: the peak of every copy lands at a magnitude drawn uniformly from ZTF's range
  (``peak_mag``), the noise follows ZTF's 5-sigma limiting magnitude (``limit_mag``, drawn per
  point), and half of the copies are made alert-like (non-detections become flux 0 with the
  limit's noise, history older than 30 days before the first detection is dropped), the
  other half keep forced photometry on every epoch.
- ``fainter``: extragalactic copies move to a higher redshift (log(1 + z) uniform between
  z0 and ``max_redshift_factor`` times it), galactic ones get fainter by up to ``max_dimming``
  magnitudes; the noise stays the original survey's. This is the PLAsTiCC training -> test
  shift (a photometrically, not spectroscopically, selected sample).

- ``difference``: each copy is the object with every band's median flux subtracted, as a
  difference-imaging survey reports a variable star against its reference image (EROS-1
  gives total magnitudes; ZTF and Rubin alerts carry difference fluxes).

Every draw comes from one seeded generator: the same spec and seed give the same copies.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np

from astro_classifier.core.lightcurve import LightCurveBatch
from astro_classifier.core.units import AB_ZERO_POINT_NJY
from astro_classifier.features.render import ALERT_HISTORY_DAYS, DETECTION_SIGMA

H0_KM_S_MPC = 70.0
OMEGA_M = 0.3
C_KM_S = 299792.458

_Z_GRID = np.concatenate([[0.0], np.geomspace(1e-4, 5.0, 4000)])


def _luminosity_distance_table() -> np.ndarray:
    """d_L (Mpc) on _Z_GRID, flat LambdaCDM, by the trapezoidal rule on a fine grid."""
    inv_e = 1.0 / np.sqrt(OMEGA_M * (1 + _Z_GRID) ** 3 + (1 - OMEGA_M))
    comoving = np.concatenate([[0.0], np.cumsum(0.5 * (inv_e[1:] + inv_e[:-1]) * np.diff(_Z_GRID))])
    return (1 + _Z_GRID) * comoving * C_KM_S / H0_KM_S_MPC


_DL_MPC = _luminosity_distance_table()


def luminosity_distance_mpc(z: np.ndarray) -> np.ndarray:
    """Luminosity distance in Mpc (flat LambdaCDM, H0 = 70, Omega_m = 0.3)."""
    return np.interp(np.asarray(z, np.float64), _Z_GRID, _DL_MPC)


def redshift_at_distance(d_mpc: np.ndarray) -> np.ndarray:
    """Inverse of :func:`luminosity_distance_mpc` (distances beyond z = 5 clip there)."""
    return np.interp(np.asarray(d_mpc, np.float64), _DL_MPC, _Z_GRID)


def distance_modulus(z: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):  # z = 0 (galactic): -inf, never used
        return 5.0 * np.log10(luminosity_distance_mpc(z) * 1e6 / 10.0)


def mag_to_njy(mag: np.ndarray | float) -> np.ndarray:
    return 10.0 ** ((AB_ZERO_POINT_NJY - np.asarray(mag, np.float64)) / 2.5)


@dataclass(frozen=True)
class AugmentSpec:
    """How augmented copies are drawn (see the module docstring)."""

    target: Literal["ztf", "fainter", "difference"]
    copies: int = 3
    keep_original: bool = True
    peak_mag: tuple[float, float] = (14.5, 20.0)  # ztf: peak magnitude range of the copies
    limit_mag: tuple[float, float] = (19.8, 20.8)  # ztf: 5-sigma limiting magnitude range
    alert_like_fraction: float = 0.5  # ztf: share of copies turned into alert-style curves
    max_redshift_factor: float = 2.5  # fainter: z1 up to this factor times z0 (in 1 + z)
    max_dimming: float = 1.5  # fainter: galactic objects dim by up to this many magnitudes
    seed: int = 0


def augment(batch: LightCurveBatch, spec: AugmentSpec) -> LightCurveBatch:
    """Original objects (if ``spec.keep_original``) followed by ``spec.copies`` copies of each.

    Metadata gains ``augment_parent`` (row of the original in ``batch``) and ``augment_copy``
    (0 for an original, 1.. for copies), so that splits can keep an object and its copies on
    the same side. Object ids of copies get the suffix ``~aug<k>``. Labels are kept.
    """
    rng = np.random.default_rng(spec.seed)
    parents = np.arange(len(batch), dtype=np.float64)
    pieces = []
    if spec.keep_original:
        original = batch.select(np.arange(len(batch)))
        original.metadata = {
            **original.metadata,
            "augment_parent": parents,
            "augment_copy": np.zeros(len(batch)),
        }
        pieces.append(original)
    for k in range(1, spec.copies + 1):
        if spec.target == "difference":
            copy = difference_flux(batch, np.ones(len(batch), bool))
        else:
            copy = _one_copy(batch, spec, rng)
        copy.object_id = np.char.add(batch.object_id.astype(str), f"~aug{k}")
        copy.metadata = {
            **copy.metadata,
            "augment_parent": parents,
            "augment_copy": np.full(len(batch), float(k)),
        }
        pieces.append(copy)
    return LightCurveBatch.concat(pieces)


def _redshift(batch: LightCurveBatch) -> np.ndarray:
    """Host redshift per object (spectroscopic where known, else photometric); 0 = galactic."""
    n = len(batch)
    z = np.full(n, np.nan)
    for name in ("hostgal_specz", "hostgal_photoz"):
        if name in batch.metadata:
            z = np.where(np.isfinite(z), z, batch.metadata[name])
    return np.where(np.isfinite(z) & (z > 1e-4), z, 0.0)


def _peak_flux(batch: LightCurveBatch) -> np.ndarray:
    """Brightest flux per object (0 for an object without a positive flux)."""
    obj = batch.point_object_index()
    peak = np.zeros(len(batch))
    np.maximum.at(peak, obj, batch.flux.astype(np.float64))
    return peak


def _one_copy(
    batch: LightCurveBatch, spec: AugmentSpec, rng: np.random.Generator
) -> LightCurveBatch:
    n = len(batch)
    obj = batch.point_object_index()
    z0 = _redshift(batch)
    extragalactic = z0 > 0
    peak = _peak_flux(batch)

    if spec.target == "ztf":
        target_peak = mag_to_njy(rng.uniform(*spec.peak_mag, n))
        scale = np.where(peak > 0, target_peak / np.maximum(peak, 1e-30), 1.0)
        d1 = luminosity_distance_mpc(z0) / np.sqrt(scale)
        z1 = np.where(extragalactic, np.maximum(redshift_at_distance(d1), 1e-3), 0.0)
        # the clipped redshift sets the final scale, so flux and distance agree
        scale = np.where(
            extragalactic,
            (luminosity_distance_mpc(z0) / np.maximum(luminosity_distance_mpc(z1), 1e-9)) ** 2,
            scale,
        )
    else:
        log_span = np.log1p(z0) * (spec.max_redshift_factor - 1)
        z1 = np.where(extragalactic, np.expm1(np.log1p(z0) + rng.uniform(0, 1, n) * log_span), 0.0)
        scale = np.where(
            extragalactic,
            (luminosity_distance_mpc(z0) / np.maximum(luminosity_distance_mpc(z1), 1e-9)) ** 2,
            10.0 ** (-rng.uniform(0, spec.max_dimming, n) / 2.5),
        )

    # time dilation about each object's first point
    stretch = np.where(extragalactic, (1 + z1) / (1 + z0), 1.0)
    first = np.zeros(n)
    has_points = batch.lengths > 0
    first[has_points] = batch.time[batch.offsets[:-1][has_points]]
    time = first[obj] + (batch.time - first[obj]) * stretch[obj]

    # flux and noise
    s = scale[obj]
    flux = batch.flux.astype(np.float64) * s
    err = batch.flux_err.astype(np.float64) * s
    if spec.target == "ztf":
        target_noise = mag_to_njy(rng.uniform(*spec.limit_mag, len(flux))) / DETECTION_SIGMA
    else:
        target_noise = batch.flux_err.astype(np.float64)
    extra = np.sqrt(np.maximum(target_noise**2 - err**2, 0.0))
    flux = flux + rng.normal(0.0, 1.0, len(flux)) * extra
    err = np.maximum(err, target_noise)
    detected = flux > DETECTION_SIGMA * err

    metadata = dict(batch.metadata)
    if "hostgal_photoz" in metadata:
        photoz_err = metadata.get("hostgal_photoz_err", np.zeros(n))
        relative = np.where(z0 > 0, np.nan_to_num(photoz_err) / np.maximum(z0, 1e-3), 0.0)
        metadata["hostgal_photoz"] = np.where(extragalactic, z1, metadata["hostgal_photoz"])
        metadata["hostgal_photoz_err"] = np.where(extragalactic, relative * z1, photoz_err)
    if "hostgal_specz" in metadata:
        metadata["hostgal_specz"] = np.where(extragalactic, z1, metadata["hostgal_specz"])
    if "distmod" in metadata:
        metadata["distmod"] = np.where(extragalactic, distance_modulus(z1), metadata["distmod"])

    copy = dataclasses.replace(
        batch, time=time, flux=flux, flux_err=err, detected=detected, metadata=metadata
    )
    if spec.target == "ztf":
        alert_like = rng.random(n) < spec.alert_like_fraction
        copy = _alert_like(copy, alert_like)
    return copy


def _alert_like(batch: LightCurveBatch, which: np.ndarray) -> LightCurveBatch:
    """For objects ``which``: non-detections become flux 0 with their noise (an upper limit),
    and points older than ALERT_HISTORY_DAYS before the first detection are dropped, as in a
    ZTF alert's history."""
    obj = batch.point_object_index()
    pick = which[obj]
    flux = np.where(pick & ~batch.detected, 0.0, batch.flux)
    first = batch.first_detection_time()
    keep = ~pick | (batch.time >= first[obj] - ALERT_HISTORY_DAYS)
    return dataclasses.replace(batch, flux=flux).select_points(keep)


def difference_flux(batch: LightCurveBatch, which: np.ndarray) -> LightCurveBatch:
    """For objects ``which``: subtract each band's median flux, as a difference-imaging survey
    reports a variable star against its reference image (EROS-1 gives total magnitudes)."""
    obj = batch.point_object_index()
    flux = batch.flux.astype(np.float64).copy()
    key = obj * 8 + batch.band
    for k in np.unique(key[which[obj]]):
        members = key == k
        flux[members] -= np.median(flux[members])
    return dataclasses.replace(batch, flux=flux)
