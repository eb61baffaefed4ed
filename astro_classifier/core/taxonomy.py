"""The broad kind of every class, as ALeRCE's top level: transient, stochastic, periodic.

Every model maps its fine classes onto :data:`BROAD_CLASSES`; the mapping is stored in the
model's metadata (``broad_classes``) so that serving needs nothing else. :func:`broad_class_of`
is the project's default mapping, used when a model is exported and by evaluations of labelled
data whose labels come from other catalogues (OSC ``claimedtype``, ALeRCE classes, EROS-1
types): one table, so that every number computed on the broad kind uses the same definition.
"""

from __future__ import annotations

import re

BROAD_CLASSES: tuple[str, ...] = ("transient", "stochastic", "periodic")

# Canonical fine labels (the names the project's models and readers use) -> broad kind.
_BROAD: dict[str, str] = {
    # transients: explosive or one-off events
    "SNIa": "transient",
    "SNIa-91bg": "transient",
    "SNIax": "transient",
    "SNII": "transient",
    "SNIIn": "transient",
    "SNIIb": "transient",
    "SNIbc": "transient",
    "SLSN": "transient",
    "SLSN-I": "transient",
    "SLSN-II": "transient",
    "TDE": "transient",
    "KN": "transient",
    "muLens-Single": "transient",
    "SN": "transient",
    # stochastic variability
    "AGN": "stochastic",
    "QSO": "stochastic",
    "Blazar": "stochastic",
    "M-dwarf": "stochastic",
    "YSO": "stochastic",
    "CV": "stochastic",
    "CV/Nova": "stochastic",
    # periodic variables
    "RRL": "periodic",
    "EB": "periodic",
    "Cepheid": "periodic",
    "CEP": "periodic",
    "Mira": "periodic",
    "LPV": "periodic",
    "DSCT": "periodic",
    "Periodic-Other": "periodic",
}

# Other catalogues' spellings -> canonical fine labels (case- and punctuation-insensitive).
_ALIASES: dict[str, str] = {
    "ia": "SNIa",
    "snia": "SNIa",
    "ia91bg": "SNIa-91bg",
    "snia91bg": "SNIa-91bg",
    "iax": "SNIax",
    "sniax": "SNIax",
    "ii": "SNII",
    "snii": "SNII",
    "iip": "SNII",
    "iil": "SNII",
    "sniip": "SNII",
    "iin": "SNIIn",
    "sniin": "SNIIn",
    "iib": "SNIIb",
    "sniib": "SNIIb",
    "ib": "SNIbc",
    "ic": "SNIbc",
    "ibc": "SNIbc",
    "icbl": "SNIbc",
    "snib": "SNIbc",
    "snic": "SNIbc",
    "snibc": "SNIbc",
    "slsn": "SLSN",
    "slsni": "SLSN-I",
    "slsnii": "SLSN-II",
    "tde": "TDE",
    "kn": "KN",
    "kilonova": "KN",
    "agn": "AGN",
    "qso": "QSO",
    "blazar": "Blazar",
    "yso": "YSO",
    "cv": "CV",
    "cvnova": "CV/Nova",
    "rrl": "RRL",
    "rrlyrae": "RRL",
    "eb": "EB",
    "binary": "EB",
    "ceph": "Cepheid",
    "cep": "Cepheid",
    "cepheid": "Cepheid",
    "mira": "Mira",
    "lpv": "LPV",
    "dsct": "DSCT",
}


def _key(label: str) -> str:
    return re.sub(r"[^a-z0-9]", "", label.lower())


def canonical_label(label: str) -> str | None:
    """The project's name for a class label from any catalogue (``"Ia"`` -> ``"SNIa"``),
    or None when the label is not one the project knows."""
    if label in _BROAD:
        return label
    return _ALIASES.get(_key(label))


def broad_class_of(label: str) -> str | None:
    """``transient``, ``stochastic`` or ``periodic`` for a fine label; None when unknown."""
    canonical = canonical_label(label)
    return None if canonical is None else _BROAD[canonical]


def broad_mapping_or_none(labels: list[str]) -> dict[str, str]:
    """:func:`broad_mapping`, or {} when no label has a broad kind (labels of another axis,
    e.g. the alert labels Real/Bogus or SolarSystem/NotSolarSystem): such a model's output
    leaves the broad columns null. A mix of known and unknown labels is still refused."""
    if all(broad_class_of(label) is None for label in labels):
        return {}
    return broad_mapping(labels)


def broad_mapping(labels: list[str]) -> dict[str, str]:
    """The fine -> broad mapping of a model's labels; raises ValueError naming any unknown."""
    unknown = [label for label in labels if broad_class_of(label) is None]
    if unknown:
        raise ValueError(
            f"no broad class (one of {list(BROAD_CLASSES)}) known for label(s) {unknown}; "
            "add them to astro_classifier/core/taxonomy.py"
        )
    return {label: broad_class_of(label) for label in labels}  # type: ignore[misc]
