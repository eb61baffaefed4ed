"""Temperature scaling (Guo et al. 2017) and the abstention threshold, fitted at export.

numpy only. ``fit_temperature`` finds the T > 0 that minimises the mean negative log
likelihood of softmax(logits / T) on labelled (validation) objects: a one-dimensional,
unimodal problem in log T, solved by a golden-section search over a bounded interval.
"""

from __future__ import annotations

import math

import numpy as np

from astro_classifier.inference.model import logsumexp

TEMPERATURE_BOUNDS = (0.05, 20.0)
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """log softmax(logits / T) per row, float64."""
    z = np.asarray(logits, np.float64) / temperature
    return z - logsumexp(z)[:, None]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T) per row, float64."""
    return np.exp(log_softmax(logits, temperature))


def nll_at(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean -log softmax(logits / T)[true class] (nats)."""
    y = np.asarray(y, np.int64)
    return float(-np.mean(log_softmax(logits, temperature)[np.arange(len(y)), y]))


def fit_temperature(
    logits: np.ndarray,
    y: np.ndarray,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    tol: float = 1e-5,
) -> float:
    """The temperature T in ``bounds`` minimising the mean NLL of softmax(logits / T) for
    true classes ``y``; golden-section search over log T to within ``tol`` (in log T)."""
    logits = np.asarray(logits, np.float64)
    y = np.asarray(y, np.int64)
    if logits.ndim != 2 or len(logits) != len(y) or len(y) == 0:
        raise ValueError(f"need (N, C) logits and N labels, N > 0; got {logits.shape}, {y.shape}")
    if not np.isfinite(logits).all():
        raise ValueError("logits hold NaN or infinite values")
    f = lambda log_t: nll_at(logits, y, math.exp(log_t))  # noqa: E731
    a, b = math.log(bounds[0]), math.log(bounds[1])
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = f(d)
    # The NLL is convex in 1/T (a log-sum-exp of linear functions minus a linear one), so it
    # is unimodal in log T and the search finds its minimum (or the nearer bound).
    return math.exp((a + b) / 2.0)


def ood_threshold(scores: np.ndarray, quantile: float) -> float:
    """The ``quantile`` of the validation objects' OOD scores (abstain above it)."""
    scores = np.asarray(scores, np.float64)
    if scores.size == 0 or not np.isfinite(scores).all():
        raise ValueError("OOD threshold needs finite scores of at least one object")
    return float(np.quantile(scores, quantile))
