"""No training/serving skew: the same real objects through both paths give the same tensors.

Training path: TrainingDataset.build -> save -> load -> truncated(...) ->
light_curves_to_inputs(sub, spec, tabular=stored features).
Serving path (classify, evaluate): light_curves_to_inputs(batch, spec), features computed
from the light curves on the spot.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from astro_classifier.core.lightcurve import LightCurveBatch
from astro_classifier.features.preprocess import (
    ModelInputs,
    PreprocessingSpec,
    light_curves_to_inputs,
    truncate_for_model,
)
from astro_classifier.formats.plasticc import read_plasticc
from astro_classifier.training.dataset import TrainingDataset, content_hash

TRUNCATION_DAYS = [8.0, 32.0, np.inf]
SPECS = {
    # As atat-lsst: every band, host metadata, curves longer than max_length get cut.
    "lsst": PreprocessingSpec(
        max_length=256,
        metadata_features=("hostgal_photoz", "hostgal_photoz_err", "mwebv", "ddf", "distmod"),
    ),
    # As atat-ztf: three of the six PLAsTiCC bands, no metadata.
    "gri": PreprocessingSpec(bands=("g", "r", "i"), max_length=192),
}


def assert_same_inputs(got: ModelInputs, expected: ModelInputs) -> None:
    for name in ModelInputs.names():
        a, b = getattr(got, name), getattr(expected, name)
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)  # NaN == NaN here


@pytest.fixture(scope="module")
def objects(shared_data: Path) -> LightCurveBatch:
    """~20 real PLAsTiCC objects: the first of every class plus the six longest curves."""
    folder = shared_data / "lightcurves" / "plasticc"
    batch = read_plasticc(
        folder / "plasticc_train_lightcurves.csv.gz", folder / "plasticc_train_metadata.csv.gz"
    )
    _, first_of_class = np.unique(batch.label, return_index=True)
    longest = np.argsort(batch.lengths, kind="stable")[-6:]
    picked = np.unique(np.concatenate([first_of_class, longest]))
    return batch.select(picked)


@pytest.fixture(scope="module", params=sorted(SPECS))
def dataset(request, objects, tmp_path_factory) -> TrainingDataset:
    """The training dataset of ``objects``, written to HDF5 and read back."""
    spec = SPECS[request.param]
    built = TrainingDataset.build(objects, spec, TRUNCATION_DAYS, source="test")
    path = tmp_path_factory.mktemp("dataset") / f"{request.param}.h5"
    built.save(path)
    loaded = TrainingDataset.load(path)
    np.testing.assert_array_equal(loaded.features, built.features)
    return loaded


def test_objects_cover_all_classes_and_long_curves(objects: LightCurveBatch) -> None:
    assert len(objects) >= 18
    assert len(set(objects.label.tolist())) == 14
    assert objects.lengths.max() > SPECS["lsst"].max_length  # the cut is exercised


def test_dataset_round_trip_keeps_everything(dataset: TrainingDataset, objects) -> None:
    assert dataset.spec in SPECS.values()
    np.testing.assert_array_equal(dataset.truncation_days, TRUNCATION_DAYS)
    np.testing.assert_array_equal(dataset.batch.object_id, objects.object_id)
    np.testing.assert_array_equal(dataset.batch.label, objects.label)
    assert dataset.features.shape == (3, len(objects), len(dataset.spec.feature_names))
    assert dataset.content_hash == content_hash(dataset.batch)
    for key, col in objects.metadata.items():
        np.testing.assert_array_equal(dataset.batch.metadata[key], col)


def test_whole_curves_give_the_same_inputs(dataset: TrainingDataset, objects) -> None:
    # A shuffled order: the training path selects objects by index.
    index = np.random.default_rng(0).permutation(len(objects))
    full = np.full(len(index), len(TRUNCATION_DAYS) - 1)
    sub, feats = dataset.truncated(index, full)
    training = light_curves_to_inputs(sub, dataset.spec, tabular=feats)
    serving = light_curves_to_inputs(objects.select(index), dataset.spec)
    assert_same_inputs(training, serving)
    assert training.mask.shape[1] <= dataset.spec.max_length
    if dataset.spec.metadata_features:  # galactic objects have no distmod: NaN compared too
        assert np.isnan(serving.tabular).any()


def test_serving_bucket_width_changes_only_padding(dataset: TrainingDataset, objects) -> None:
    full = np.full(len(objects), len(TRUNCATION_DAYS) - 1)
    sub, feats = dataset.truncated(np.arange(len(objects)), full)
    training = light_curves_to_inputs(sub, dataset.spec, tabular=feats)
    bucket = light_curves_to_inputs(objects, dataset.spec, width=dataset.spec.max_length)
    assert_same_inputs(bucket.take(np.arange(len(objects)), training.mask.shape[1]), training)
    assert not bucket.mask[:, training.mask.shape[1] :].any()


def _truncated_case(dataset: TrainingDataset, objects: LightCurveBatch, days: float):
    level = TRUNCATION_DAYS.index(days)
    index = np.arange(len(objects))
    sub, feats = dataset.truncated(index, np.full(len(index), level))
    training = light_curves_to_inputs(sub, dataset.spec, tabular=feats)
    # What evaluate() does for truncated evaluation: cut the light curves, then classify.
    serving = light_curves_to_inputs(truncate_for_model(objects, dataset.spec, days), dataset.spec)
    return training, serving


def test_truncated_curves_give_the_same_inputs(
    dataset: TrainingDataset, objects, request: pytest.FixtureRequest
) -> None:
    training, serving = _truncated_case(dataset, objects, 32.0)
    assert_same_inputs(training, serving)
    assert training.mask.sum() < light_curves_to_inputs(objects, dataset.spec).mask.sum()


def test_mixed_truncation_levels_in_one_call(objects) -> None:
    """Training cuts every object of a batch at its own level; each row must still match."""
    spec = SPECS["lsst"]
    dataset = TrainingDataset.build(objects, spec, TRUNCATION_DAYS, source="test")
    index = np.arange(len(objects))
    level = index % len(TRUNCATION_DAYS)
    sub, feats = dataset.truncated(index, level)
    training = light_curves_to_inputs(sub, spec, tabular=feats)
    days = np.asarray(TRUNCATION_DAYS)[level]
    serving = light_curves_to_inputs(truncate_for_model(objects, spec, days), spec)
    assert_same_inputs(training, serving)


def test_train_loss_is_per_head_of_the_heads_the_model_returned():
    import torch
    import torch.nn.functional as F

    from astro_classifier.families.base import multi_head_loss

    torch.manual_seed(0)
    target = torch.tensor([0, 1, 2, 1])
    one = {"mix": torch.randn(4, 3)}
    loss, n = multi_head_loss(one, target, ("lc", "tab", "mix"))
    assert n == 1
    assert torch.isclose(loss / n, F.cross_entropy(one["mix"], target))
    three = {"lc": torch.randn(4, 3), "tab": torch.randn(4, 3), "mix": torch.randn(4, 3)}
    loss, n = multi_head_loss(three, target, ("lc", "tab", "mix"))
    expected = sum(F.cross_entropy(v, target) for v in three.values()) / 3
    assert n == 3 and torch.isclose(loss / n, expected)
    with pytest.raises(ValueError, match="none of the heads"):
        multi_head_loss({"other": torch.randn(4, 3)}, target, ("mix",))
