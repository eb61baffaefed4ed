"""IOBinding calls (what CUDA serving uses) give exactly what ``session.run`` gives; tested
on the CPU device, where the same binding code runs."""

from __future__ import annotations

import numpy as np

from astro_classifier.features.preprocess import ModelInputs
from astro_classifier.inference.model import LoadedModel


def _inputs(rng, batch: int, length: int, n_features: int) -> ModelInputs:
    return ModelInputs(
        flux=rng.normal(size=(batch, length)).astype(np.float32),
        flux_err=np.ones((batch, length), np.float32),
        time=np.tile(np.arange(length, dtype=np.float32) * 3, (batch, 1)),
        band=rng.integers(0, 6, (batch, length)),
        mask=rng.random((batch, length)) < 0.8,
        tabular=rng.normal(size=(batch, n_features)).astype(np.float32),
    )


def test_bound_calls_match_session_run_and_keep_one_buffer_set_per_shape() -> None:
    plain = LoadedModel.load("atat-lsst", provider="cpu")
    bound = LoadedModel.load("atat-lsst", provider="cpu", io_binding=True)
    assert plain.bound is None and bound.bound is not None
    rng = np.random.default_rng(0)
    n_features = len(plain.metadata.feature_names)
    shapes = [(3, 16), (5, 64), (3, 16), (7, 16), (3, 16)]
    results = []
    for batch, length in shapes:
        x = _inputs(rng, batch, length, n_features)
        a, b = plain.predict(x), bound.predict(x)
        np.testing.assert_array_equal(a.probabilities, b.probabilities)
        np.testing.assert_array_equal(a.logits, b.logits)
        results.append((x, b.probabilities.copy(), b.probabilities))
    assert len(bound.bound._calls) == 3  # (3, 16), (5, 64), (7, 16)
    # a later call of the same shape does not overwrite what an earlier one returned
    for _, kept, returned in results:
        np.testing.assert_array_equal(kept, returned)


def test_io_binding_is_off_on_the_cpu_unless_asked() -> None:
    assert LoadedModel.load("atat-ztf", provider="cpu").bound is None
