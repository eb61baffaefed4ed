"""Class-conditional Gaussians on a classifier's embeddings: the Mahalanobis OOD scores.

numpy only. :func:`fit_gaussians` fits, on the embeddings of training objects and their
classes, one Gaussian per class with a shared ("tied") covariance, the class means and the
pooled within-class covariance (Lee et al. 2018), and one background Gaussian on all the
embeddings with its own mean and covariance (Ren et al. 2021). Both covariances are shrunk
towards a multiple of the identity by the Ledoit-Wolf estimate (Ledoit & Wolf 2004), their
eigenvalues floored at :data:`EIGEN_FLOOR` times their mean, so the precision exists
however few objects or correlated dimensions there are.

With ``d_k(x) = (x - mu_k)^T S^-1 (x - mu_k)`` (squared Mahalanobis distance to class k,
tied covariance S) and ``d_0(x)`` the same to the background Gaussian, the scores (higher =
less like the training data) are

- ``mahalanobis``: ``min_k d_k(x)``;
- ``relative_mahalanobis``: ``min_k d_k(x) - d_0(x)``;
- ``mahalanobis_energy``: ``(min_k d_k(x) - a) / b + (E(z) - c) / d``, the Mahalanobis score
  plus the energy ``E(z) = -logsumexp(z)`` of the same object's logits z, each standardised
  by its mean and standard deviation on validation objects (:func:`with_standardisation`),
  so that both weigh alike.

:class:`GaussianTables` holds them in the form a graph evaluates: a (D, D) ``transform`` A
with ``A A^T = S^-1`` and the transformed means ``m_k = mu_k A``, so that
``d_k(x) = ||x A - m_k||^2`` (the same for the background). Classes without a training
object get no Gaussian (``classes`` lists the ones that have one).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from astro_classifier.inference.model import energy_score

GaussianScore = Literal["mahalanobis", "relative_mahalanobis", "mahalanobis_energy"]
EIGEN_FLOOR = 1e-6  # smallest covariance eigenvalue kept, relative to their mean


@dataclass(frozen=True)
class Standardisation:
    """``(x - mean) / std`` of a score, mean and std from validation objects."""

    mean: float
    std: float

    @classmethod
    def of(cls, values: np.ndarray) -> Standardisation:
        v = np.asarray(values, np.float64)
        std = float(v.std())
        return cls(float(v.mean()), std if std > 0 else 1.0)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, np.float64) - self.mean) / self.std


@dataclass
class GaussianTables:
    """Fitted Gaussians in graph form (float64); see the module docstring."""

    transform: np.ndarray  # (D, D): A with A A^T = inverse of the tied class covariance
    means: np.ndarray  # (K', D): class means times A
    classes: np.ndarray  # (K',) int64: class index of each row of ``means``
    background_transform: np.ndarray  # (D, D): the same for the background Gaussian
    background_mean: np.ndarray  # (D,)
    shrinkage: float  # Ledoit-Wolf weight of the identity target, class covariance
    background_shrinkage: float
    n_objects: int
    # mahalanobis_energy only (with_standardisation): of min_k d_k and of the energy
    distance_scale: Standardisation | None = None
    energy_scale: Standardisation | None = None

    @property
    def dim(self) -> int:
        return int(self.transform.shape[0])


def ledoit_wolf(centred: np.ndarray) -> tuple[np.ndarray, float]:
    """(shrunk covariance, shrinkage) of rows already centred: ``(1 - s) C + s (tr C / D) I``
    with C the empirical covariance (divided by N) and s the Ledoit-Wolf estimate."""
    x = np.asarray(centred, np.float64)
    n, d = x.shape
    cov = x.T @ x / n
    mu = np.trace(cov) / d
    x2 = x**2
    # beta: how noisy C is; delta: how far C is from mu I (both per dimension)
    beta = (np.sum(x2.T @ x2) / n - np.sum(cov**2)) / (d * n)
    delta = (np.sum(cov**2) - 2.0 * mu * np.trace(cov) + d * mu**2) / d
    shrinkage = 0.0 if delta <= 0 else float(min(max(beta, 0.0), delta) / delta)
    return (1.0 - shrinkage) * cov + shrinkage * mu * np.eye(d), shrinkage


def whitening(cov: np.ndarray) -> np.ndarray:
    """A (D, D) with ``A A^T`` the inverse of ``cov`` (eigenvalues floored first)."""
    w, v = np.linalg.eigh(np.asarray(cov, np.float64))
    w = np.maximum(w, EIGEN_FLOOR * max(float(w.mean()), np.finfo(np.float64).tiny))
    return v / np.sqrt(w)


def fit_gaussians(embeddings: np.ndarray, y: np.ndarray, n_classes: int) -> GaussianTables:
    """Class Gaussians with a tied covariance and the background Gaussian of
    ``embeddings`` (N, D) with class indices ``y`` (N,) in ``[0, n_classes)``."""
    x = np.asarray(embeddings, np.float64)
    y = np.asarray(y, np.int64)
    if x.ndim != 2 or len(x) != len(y) or len(x) < 2:
        raise ValueError(f"need (N, D) embeddings and N labels, N >= 2; got {x.shape}, {y.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings hold NaN or infinite values")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"class indices outside [0, {n_classes})")
    classes = np.unique(y)
    mu = np.stack([x[y == k].mean(axis=0) for k in classes])
    within = x - mu[np.searchsorted(classes, y)]
    cov, shrinkage = ledoit_wolf(within)
    transform = whitening(cov)
    center = x.mean(axis=0)
    background_cov, background_shrinkage = ledoit_wolf(x - center)
    background = whitening(background_cov)
    return GaussianTables(
        transform=transform,
        means=mu @ transform,
        classes=classes,
        background_transform=background,
        background_mean=center @ background,
        shrinkage=shrinkage,
        background_shrinkage=background_shrinkage,
        n_objects=len(x),
    )


def class_distances(tables: GaussianTables, embeddings: np.ndarray) -> np.ndarray:
    """(N, K') squared Mahalanobis distances to each fitted class (float64)."""
    z = np.asarray(embeddings, np.float64) @ tables.transform
    return ((z[:, None, :] - tables.means[None]) ** 2).sum(axis=-1)


def background_distance(tables: GaussianTables, embeddings: np.ndarray) -> np.ndarray:
    """(N,) squared Mahalanobis distance to the background Gaussian (float64)."""
    z = np.asarray(embeddings, np.float64) @ tables.background_transform
    return ((z - tables.background_mean) ** 2).sum(axis=-1)


def with_standardisation(
    tables: GaussianTables, embeddings: np.ndarray, logits: np.ndarray
) -> GaussianTables:
    """``tables`` with the standardisations of ``mahalanobis_energy``, from the embeddings
    and logits of validation objects."""
    distance = class_distances(tables, embeddings).min(axis=1)
    return replace(
        tables,
        distance_scale=Standardisation.of(distance),
        energy_scale=Standardisation.of(energy_score(logits)),
    )


def gaussian_score(
    tables: GaussianTables,
    embeddings: np.ndarray,
    kind: GaussianScore,
    logits: np.ndarray | None = None,
) -> np.ndarray:
    """OOD score per row (float64; higher = less like the training data); ``logits``:
    ``mahalanobis_energy`` only."""
    score = class_distances(tables, embeddings).min(axis=1)
    if kind == "mahalanobis":
        return score
    if kind == "relative_mahalanobis":
        return score - background_distance(tables, embeddings)
    if kind != "mahalanobis_energy":
        raise ValueError(f"unknown Gaussian score {kind!r}")
    if logits is None or tables.distance_scale is None or tables.energy_scale is None:
        raise ValueError("mahalanobis_energy needs logits and with_standardisation's tables")
    return tables.distance_scale(score) + tables.energy_scale(energy_score(logits))
