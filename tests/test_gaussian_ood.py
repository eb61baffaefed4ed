"""Class Gaussians with a tied covariance and the Mahalanobis OOD scores (numpy), and their
graph form (torch) against the numpy one."""

from __future__ import annotations

import numpy as np
import pytest

from astro_classifier.export.gaussian_ood import (
    background_distance,
    class_distances,
    fit_gaussians,
    gaussian_score,
    ledoit_wolf,
    with_standardisation,
)
from astro_classifier.inference.model import energy_score

MEANS = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
# one shared covariance, correlated and of unequal scales
COV = np.array([[4.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.25]])


def _clusters(n_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.multivariate_normal(m, COV, n_per_class) for m in MEANS])
    return x, np.repeat(np.arange(len(MEANS)), n_per_class)


def _symmetric_clusters() -> tuple[np.ndarray, np.ndarray]:
    """Each class: its mean +- each of three orthogonal offsets o_i, so the class means are
    exact and the pooled within-class covariance is (1/3) sum_i o_i o_i^T = diag(3, 1/3, 4/3)."""
    offsets = np.array([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    x = np.concatenate([m + s * offsets for m in MEANS for s in (1.0, -1.0)])
    y = np.repeat(np.arange(len(MEANS)), 2 * len(offsets))
    return x, y


def test_ledoit_wolf_shrinks_towards_the_scaled_identity() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 30)) @ rng.normal(size=(30, 30))
    x -= x.mean(axis=0)
    cov, s = ledoit_wolf(x)
    empirical = x.T @ x / len(x)
    target = np.trace(empirical) / 30 * np.eye(30)
    assert 0 < s < 1
    np.testing.assert_allclose(cov, (1 - s) * empirical + s * target, rtol=1e-12, atol=1e-9)
    assert np.linalg.eigvalsh(cov).min() > 0  # invertible although N is close to D
    sklearn = pytest.importorskip("sklearn.covariance")
    expected, expected_s = sklearn.ledoit_wolf(x, assume_centered=True)
    np.testing.assert_allclose(cov, expected, rtol=1e-10, atol=1e-10)
    assert s == pytest.approx(expected_s, rel=1e-10)


def test_known_means_covariance_and_distances() -> None:
    x, y = _symmetric_clusters()
    tables = fit_gaussians(x, y, n_classes=3)
    # class means exactly; covariance = LW shrinkage of the known within-class covariance
    within = x - MEANS[y]
    cov, s = ledoit_wolf(within)
    assert tables.shrinkage == pytest.approx(s)
    np.testing.assert_allclose(
        np.diag(within.T @ within / len(x)), [3.0, 1.0 / 3.0, 4.0 / 3.0], rtol=1e-12
    )
    precision = np.linalg.inv(cov)
    np.testing.assert_allclose(tables.transform @ tables.transform.T, precision, rtol=1e-9)
    points = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [5.0, 5.0, 1.0], [-30.0, 40.0, 7.0]])
    d = class_distances(tables, points)
    expected = np.array(
        [[(p - m) @ precision @ (p - m) for m in MEANS] for p in points], dtype=np.float64
    )
    np.testing.assert_allclose(d, expected, rtol=1e-9, atol=1e-9)
    assert d[0, 0] == pytest.approx(0.0, abs=1e-9) and d[1, 1] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(gaussian_score(tables, points, "mahalanobis"), expected.min(1))
    # background: one Gaussian of all the points, its own mean and shrunk covariance
    bg_cov, _ = ledoit_wolf(x - x.mean(axis=0))
    diff = points - x.mean(axis=0)
    bg = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(bg_cov), diff)
    np.testing.assert_allclose(background_distance(tables, points), bg, rtol=1e-9)
    np.testing.assert_allclose(
        gaussian_score(tables, points, "relative_mahalanobis"), expected.min(1) - bg, rtol=1e-9
    )


def test_sampled_clusters_recover_the_gaussians_and_flag_outliers() -> None:
    x, y = _clusters(4000)
    tables = fit_gaussians(x, y, n_classes=4)  # class 3 has no object: no Gaussian
    assert tables.classes.tolist() == [0, 1, 2] and tables.means.shape == (3, 3)
    precision = tables.transform @ tables.transform.T
    np.testing.assert_allclose(np.linalg.inv(precision), COV, atol=0.15)
    np.testing.assert_allclose(
        np.linalg.solve(tables.transform.T, tables.means.T).T, MEANS, atol=0.1
    )
    fresh, _ = _clusters(500, seed=7)
    inside = gaussian_score(tables, fresh, "mahalanobis")
    # squared distances of Gaussian points: chi-square with 3 degrees of freedom (mean 3)
    assert inside.mean() == pytest.approx(3.0, abs=0.3)
    outliers = np.array([[5.0, 5.0, 0.0], [0.0, 0.0, 5.0], [100.0, -50.0, 20.0]])
    assert (gaussian_score(tables, outliers, "mahalanobis") > np.quantile(inside, 0.99)).all()


def test_mahalanobis_energy_standardises_both_terms_on_validation() -> None:
    x, y = _clusters(1000)
    tables = fit_gaussians(x, y, n_classes=3)
    rng = np.random.default_rng(3)
    val, _ = _clusters(300, seed=4)
    logits = rng.normal(size=(len(val), 3)) * 3
    with pytest.raises(ValueError, match="with_standardisation"):
        gaussian_score(tables, val, "mahalanobis_energy", logits=logits)
    tables = with_standardisation(tables, val, logits)
    score = gaussian_score(tables, val, "mahalanobis_energy", logits=logits)
    distance = gaussian_score(tables, val, "mahalanobis")
    energy = energy_score(logits)
    expected = (distance - distance.mean()) / distance.std() + (
        energy - energy.mean()
    ) / energy.std()
    np.testing.assert_allclose(score, expected, rtol=1e-9, atol=1e-9)
    assert score.mean() == pytest.approx(0.0, abs=1e-9)


def test_fit_refuses_bad_input() -> None:
    x, y = _clusters(10)
    with pytest.raises(ValueError, match="NaN"):
        fit_gaussians(np.where(np.arange(x.size).reshape(x.shape) == 3, np.nan, x), y, 3)
    with pytest.raises(ValueError, match="outside"):
        fit_gaussians(x, y + 1, 3)
    with pytest.raises(ValueError, match="unknown"):
        gaussian_score(fit_gaussians(x, y, 3), x, "euclid")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["mahalanobis", "relative_mahalanobis", "mahalanobis_energy"])
def test_graph_form_matches_numpy(kind: str) -> None:
    torch = pytest.importorskip("torch")
    from astro_classifier.export.onnx_export import GaussianOOD

    x, y = _clusters(500)
    tables = fit_gaussians(x, y, n_classes=3)
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(len(x), 3))
    tables = with_standardisation(tables, x, logits)
    points = np.concatenate([x[:50], rng.normal(scale=20, size=(10, 3))])
    z = logits[: len(points)]
    module = GaussianOOD.from_tables(tables, kind)
    with torch.no_grad():
        got = module(
            torch.tensor(points, dtype=torch.float32), torch.tensor(z, dtype=torch.float32)
        ).numpy()
    expected = gaussian_score(tables, points, kind, logits=z)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
