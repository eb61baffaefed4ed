"""Stratified folds and splits: deterministic, balanced, disjoint and complete."""

from __future__ import annotations

import numpy as np
import pytest

from astro_classifier.catalogs.splits import stratified_folds, stratified_split


def _labels(seed: int = 0) -> np.ndarray:
    # Uneven classes, including ones smaller than the number of folds.
    counts = {"SNIa": 231, "SNII": 119, "EB": 92, "KN": 10, "Mira": 3, "rare": 1}
    labels = np.concatenate([np.full(n, name) for name, n in counts.items()])
    return np.random.default_rng(seed).permutation(labels)


def test_folds_are_deterministic_and_seed_dependent() -> None:
    labels = _labels()
    a = stratified_folds(labels, 5, seed=0)
    np.testing.assert_array_equal(a, stratified_folds(labels, 5, seed=0))
    assert not np.array_equal(a, stratified_folds(labels, 5, seed=1))


@pytest.mark.parametrize("n_folds", [2, 5, 7])
def test_every_class_spread_evenly(n_folds: int) -> None:
    labels = _labels()
    folds = stratified_folds(labels, n_folds, seed=0)
    assert folds.dtype == np.int64 and folds.shape == labels.shape
    assert set(folds.tolist()) <= set(range(n_folds))
    for name in np.unique(labels):
        per_fold = np.bincount(folds[labels == name], minlength=n_folds)
        even = (labels == name).sum() / n_folds
        assert np.all(np.abs(per_fold - even) < 1), (name, per_fold)
    sizes = np.bincount(folds, minlength=n_folds)
    assert sizes.max() - sizes.min() <= 1


def test_folds_work_with_integer_labels() -> None:
    labels = np.repeat([6, 15, 90], [12, 7, 30])
    folds = stratified_folds(labels, 3, seed=2)
    for c in (6, 15, 90):
        counts = np.bincount(folds[labels == c], minlength=3)
        assert counts.max() - counts.min() <= 1


def test_split_is_disjoint_complete_and_stratified() -> None:
    labels = _labels()
    train, val = stratified_split(labels, 0.2, seed=0)
    assert train.dtype == np.int64 and val.dtype == np.int64
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    for name in np.unique(labels):
        n_c = int((labels == name).sum())
        n_val = int((labels[val] == name).sum())
        assert abs(n_val - 0.2 * n_c) <= 1, (name, n_val, n_c)
        if n_c >= 2:
            assert 1 <= n_val <= n_c - 1


def test_split_is_deterministic() -> None:
    labels = _labels()
    first = stratified_split(labels, 0.25, seed=3)
    second = stratified_split(labels, 0.25, seed=3)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    other = stratified_split(labels, 0.25, seed=4)
    assert not np.array_equal(first[1], other[1])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_folds"):
        stratified_folds(np.array([0, 1]), 1)
    with pytest.raises(ValueError, match="fraction"):
        stratified_split(np.array([0, 1]), 1.0, seed=0)
