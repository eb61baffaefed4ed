"""classify(): skip reasons, buckets, output order, and agreement with unbucketed calls."""

from __future__ import annotations

import numpy as np
import pytest

from astro_classifier.core.lightcurve import LightCurveBatch
from astro_classifier.features.preprocess import light_curves_to_inputs
from astro_classifier.formats.plasticc import read_plasticc
from astro_classifier.inference.classify import (
    SKIP_NO_POINTS,
    SKIP_NON_FINITE,
    bucket_for,
    classify,
)
from astro_classifier.inference.model import LoadedModel, default_length_buckets
from tests.conftest import PROJECT_ROOT

EXAMPLE = PROJECT_ROOT / "examples" / "plasticc"


def contract_columns(labels: list[str]) -> list[str]:
    """The output contract (README.md), in order."""
    return [
        "object_id", "alert_id", "model", "model_version", "class", "probability",
        *[f"prob_{label}" for label in labels],
        "broad_class", "prob_transient", "prob_stochastic", "prob_periodic",
        "ood_score", "abstain",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def ztf_model() -> LoadedModel:
    return LoadedModel.load("atat-ztf", provider="cpu")


@pytest.fixture(scope="module")
def example() -> LightCurveBatch:
    return read_plasticc(EXAMPLE / "lightcurves.csv", EXAMPLE / "metadata.csv")


def _curve(object_id: str, n: int, band: int = 1, flux: float = 100.0) -> dict:
    return {
        "object_id": [object_id] * n,
        "time": list(60000.0 + np.arange(n)),
        "band": [band] * n,
        "flux": [flux] * n,
    }


def _batch(*curves: dict) -> LightCurveBatch:
    cols = {k: sum((c[k] for c in curves), []) for k in ("object_id", "time", "band", "flux")}
    n = len(cols["time"])
    return LightCurveBatch.from_points(
        cols["object_id"],
        cols["time"],
        cols["band"],
        cols["flux"],
        np.full(n, 10.0),
        np.ones(n, bool),
    )


def test_objects_that_cannot_be_classified_are_counted_and_named(ztf_model: LoadedModel) -> None:
    batch = _batch(_curve("ok", 6), _curve("nan", 6, flux=np.nan), _curve("u-only", 4, band=0))
    result = classify(batch, ztf_model)
    assert result.to_arrow().column("object_id").to_pylist() == ["ok"]
    assert result.skipped == {SKIP_NON_FINITE: 1, SKIP_NO_POINTS: 1}
    skipped = {
        reason: batch.object_id[rows].tolist() for reason, rows in result.skipped_rows.items()
    }
    assert skipped == {SKIP_NON_FINITE: ["nan"], SKIP_NO_POINTS: ["u-only"]}
    assert result.points_outside_bands == 4


def test_empty_batch_gives_empty_table_with_contract_columns(ztf_model: LoadedModel) -> None:
    result = classify(_batch(_curve("u-only", 3, band=0)), ztf_model)
    assert result.to_arrow().num_rows == 0
    assert result.to_arrow().column_names == contract_columns(ztf_model.metadata.labels)


def test_buckets_bound_padding_and_keep_input_order(example: LightCurveBatch) -> None:
    model = LoadedModel.load("atat-lsst", provider="cpu")
    result = classify(example, model, batch_size=7)
    assert result.to_arrow().column("object_id").to_pylist() == example.object_id.tolist()
    assert result.padding_efficiency > 0.6
    # Same probabilities as one unbucketed call padded to the longest light curve.
    inputs = light_curves_to_inputs(example, model.metadata.preprocessing)
    expected = model.predict(inputs).probabilities
    got = result.probabilities
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_bucket_for_picks_smallest_bucket_that_holds_the_curve() -> None:
    buckets = default_length_buckets(256)
    assert buckets == [8, 16, 32, 64, 128, 192, 256]
    assert bucket_for(np.array([1, 8, 9, 200, 256]), buckets).tolist() == [0, 0, 1, 6, 6]
    assert default_length_buckets(100) == [8, 16, 32, 64, 100]
