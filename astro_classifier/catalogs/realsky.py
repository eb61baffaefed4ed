"""Helpers shared by the readers of labelled real-sky sets (BTS, manyTDE, SLSNe, OSC, ALeRCE).

- :func:`sn_type_label`: a catalogue's supernova type string -> the project's canonical
  label (:func:`astro_classifier.core.taxonomy.canonical_label` first, then the subtypes below);
- :func:`sexagesimal_to_degrees`: "hh:mm:ss.s" / "+dd:mm:ss" -> degrees;
- :func:`parse_floats`: a column of catalogue values -> float64 (NaN where not a number);
- :func:`magnitude_points`: flat columns of magnitude photometry -> the usable points in nJy,
  every unusable point counted by reason.
"""

from __future__ import annotations

import re

import numpy as np

from astro_classifier.core.counts import count
from astro_classifier.core.lightcurve import BAND_INDEX
from astro_classifier.core.taxonomy import canonical_label
from astro_classifier.core.units import ab_mag_to_njy

# Subtypes that taxonomy.canonical_label does not know, folded into the project's classes.
# Keys are lower-case with every non-alphanumeric character removed.
_SN_SUBTYPES: dict[str, str] = {
    # Type Ia subtypes that PLAsTiCC's SNIa class covers (normal, 91T-like, peculiar, CSM, HV)
    "ia91t": "SNIa",
    "snia91t": "SNIa",
    "iapec": "SNIa",
    "sniapec": "SNIa",
    "iacsm": "SNIa",
    "sniacsm": "SNIa",
    "iahv": "SNIa",
    "lensedsnia": "SNIa",
    "ia02cx": "SNIax",
    # stripped-envelope core collapse
    "blic": "SNIbc",
    "ibn": "SNIbc",
    "ibpec": "SNIbc",
    # hydrogen-rich core collapse
    "iipec": "SNII",
    # superluminous
    "slsnir": "SLSN-I",
    "slsnr": "SLSN-I",
    "superluminousic": "SLSN-I",
}
GENERIC_SN = "SN"  # a supernova whose type is ambiguous or outside the project's classes


def sn_type_label(raw: str | None) -> str:
    """Canonical label of a supernova type string (``"SN Ia"`` -> ``"SNIa"``).

    A trailing ``?`` is ignored. Types that are ambiguous (``"Ib/IIb"``, ``"I"``, ``"CC"``) or
    unknown to the project (``"Ca-rich"``, ``".Ia"``, ``"LBV to IIn"``) become ``"SN"``: still a transient for
    broad-class scoring, but no fine class of any model.
    """
    if raw is None:
        return GENERIC_SN
    text = str(raw).strip().rstrip("?").strip()
    if not text or text.startswith("."):  # ".Ia": a helium-shell transient, not a type Ia
        return GENERIC_SN
    label = canonical_label(text)
    if label is not None:
        return label
    key = re.sub(r"[^a-z0-9]", "", text.lower())
    if key in _SN_SUBTYPES:
        return _SN_SUBTYPES[key]
    if key.startswith("sn") and key[2:] in _SN_SUBTYPES:
        return _SN_SUBTYPES[key[2:]]
    return GENERIC_SN


def sexagesimal_to_degrees(ra: str, dec: str) -> tuple[float, float]:
    """``"08:29:47.59"``, ``"+33:54:22.8"`` -> (127.448..., 33.906...); NaN when unparsable.

    Values that already parse as plain numbers are taken as degrees.
    """

    def parts(text: str) -> list[float] | None:
        try:
            return [float(p) for p in str(text).strip().split(":")]
        except ValueError:
            return None

    r, d = parts(ra), parts(dec)
    if r is None or d is None or not r or not d:
        return float("nan"), float("nan")
    if len(r) == 1 and len(d) == 1:
        return r[0], d[0]
    ra_deg = 15.0 * sum(v / 60**k for k, v in enumerate(r))
    sign = -1.0 if str(dec).strip().startswith("-") else 1.0
    dec_deg = sign * sum(abs(v) / 60**k for k, v in enumerate(d))
    return ra_deg, dec_deg


def parse_floats(values: list) -> np.ndarray:
    """Strings or bytes -> float64; anything unparsable (``-``, ``>19.4``, empty) is NaN."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        pass
    out = np.full(len(values), np.nan)
    for k, v in enumerate(values):
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def magnitude_points(
    ids: list[str],
    times: list,
    bands: list[str],
    mags: list,
    errs: list,
    band_names: dict[str, str],
    dropped: dict[str, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flat per-point columns of AB magnitude photometry -> (object id, time, band index,
    flux nJy, flux error nJy) of the usable points.

    ``band_names`` maps the catalogue's band letters to canonical bands. A point in another
    band, with a non-finite time, magnitude or error, or with an error <= 0 is left out and
    counted in ``dropped`` under its reason.
    """
    time, mag, err = (parse_floats(v) for v in (times, mags, errs))
    band_letter = np.asarray(bands, dtype=str)
    known_band = np.isin(band_letter, list(band_names))
    for letter in np.unique(band_letter[~known_band]).tolist():
        count(dropped, f"unknown band {letter!r}", (band_letter == letter).sum())
    finite = np.isfinite(time) & np.isfinite(mag) & np.isfinite(err)
    count(dropped, "non-finite time, magnitude or error", (known_band & ~finite).sum())
    positive = finite & (err > 0)
    count(dropped, "magnitude error <= 0", (known_band & finite & ~positive).sum())
    keep = known_band & positive
    flux, flux_err = ab_mag_to_njy(mag[keep], err[keep])
    band_of = {letter: BAND_INDEX[band] for letter, band in band_names.items()}
    band = np.array([band_of[b] for b in band_letter[keep].tolist()], np.int8)
    return np.asarray(ids, dtype=str)[keep], time[keep], band, flux, flux_err
