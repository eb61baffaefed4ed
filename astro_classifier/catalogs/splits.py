"""Stratified folds and train/validation splits (numpy only, deterministic for a seed).

Every class is spread evenly: its objects are shuffled with
``np.random.default_rng(seed)`` and dealt out like cards. The deal continues across
classes (class ``k+1`` starts at the fold after the one where class ``k`` stopped), so
fold sizes are balanced overall as well as per class.
"""

from __future__ import annotations

import hashlib

import numpy as np


def _class_members(labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices of each class (classes in sorted order), each shuffled with ``rng``."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-d, got shape {labels.shape}")
    _, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse)
    groups = np.split(order, np.cumsum(counts)[:-1]) if len(order) else []
    return [rng.permutation(group) for group in groups]


def stratified_folds(labels: np.ndarray, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold index (0 .. n_folds-1) of every row, (N,) int64.

    ``labels`` (N,) holds any sortable class labels (ints or strings). In every fold each
    class has ``floor(n_c / n_folds)`` or ``ceil(n_c / n_folds)`` of its ``n_c`` objects,
    and fold sizes differ by at most one.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    rng = np.random.default_rng(seed)
    folds = np.full(len(np.asarray(labels)), -1, dtype=np.int64)
    start = 0
    for members in _class_members(labels, rng):
        folds[members] = (start + np.arange(len(members))) % n_folds
        start = (start + len(members)) % n_folds
    return folds


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into (train_idx, val_idx), each sorted int64, stratified by class.

    ``fraction`` in (0, 1) is the share of each class that goes to validation:
    ``round(fraction * n_c)`` objects of a class with ``n_c`` objects, except that a
    class with at least two objects always keeps one in each side.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie strictly between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for members in _class_members(labels, rng):
        n_c = len(members)
        n_val = int(np.floor(fraction * n_c + 0.5))
        if n_c >= 2:
            n_val = min(max(n_val, 1), n_c - 1)
        val.append(members[:n_val])
        train.append(members[n_val:])
    empty = np.zeros(0, np.int64)
    train_idx = np.sort(np.concatenate(train)) if train else empty
    val_idx = np.sort(np.concatenate(val)) if val else empty
    return train_idx.astype(np.int64), val_idx.astype(np.int64)


REAL_SKY_TEST_FRACTION = 0.3
REAL_SKY_SALT = "astroclf-real-sky-v1"


def real_sky_split(
    object_ids: np.ndarray, test_fraction: float = REAL_SKY_TEST_FRACTION
) -> np.ndarray:
    """Object-level test split of the real-sky sets: (N,) bool, True for a test object.

    Decided by the object id alone (SHA-256 of ``REAL_SKY_SALT:<id>``, first 8 bytes as a
    fraction of 2**64, below ``test_fraction``), so it is the same in every run, on every
    machine, whatever the order or subset of objects read: a training run can take the
    objects where this is False and an evaluation the ones where it is True.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    ids = np.asarray(object_ids).astype(str).reshape(-1)
    scale = float(2**64)
    values = np.array(
        [
            int.from_bytes(hashlib.sha256(f"{REAL_SKY_SALT}:{o}".encode()).digest()[:8], "big")
            / scale
            for o in ids.tolist()
        ],
        dtype=np.float64,
    )
    return values < test_fraction
