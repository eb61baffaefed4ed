"""Helpers shared by the readers of labelled real-sky sets (BTS, manyTDE, SLSNe, OSC, ALeRCE).

- :func:`sn_type_label`: a catalogue's supernova type string -> the project's canonical
  label (:func:`astro_classifier.core.taxonomy.canonical_label` first, then the subtypes below);
- :func:`sexagesimal_to_degrees`: "hh:mm:ss.s" / "+dd:mm:ss" -> degrees;
- :func:`parse_floats`: a column of catalogue values -> float64 (NaN where not a number).
"""

from __future__ import annotations

import re

import numpy as np

from astro_classifier.core.taxonomy import canonical_label

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
