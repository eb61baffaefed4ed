"""Training that cannot use the catalogue shortcut: rendered copies, nightly binning, masked
catalogue features (the pieces of configs/atat_ztf.yaml that data/render.py feeds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from astro_classifier.core.lightcurve import LightCurveBatch
from astro_classifier.features.preprocess import (
    PreprocessingSpec,
    keep_model_bands,
    tabular_features,
)
from astro_classifier.features.render import PROCESSINGS
from astro_classifier.training.config import RenderSection, TrainConfig
from astro_classifier.training.sources import add_rendered_copies, grouped_splits


def _batch(labels: list[str], points: int = 30, seed: int = 0) -> LightCurveBatch:
    """Objects with two points per night in g and r: a rising and falling transient shape."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    nights = np.repeat(np.arange(points // 2, dtype=np.float64) * 2.0, 2)
    time = np.tile(58000.0 + nights + np.tile([0.1, 0.2], points // 2), n)
    band = np.tile(np.tile([1, 2], points // 2), n).astype(np.int8)
    shape = np.exp(-(((nights - 15.0) / 6.0) ** 2)) * 5000.0
    flux = (np.tile(shape, n) + rng.normal(0, 50, n * points)).astype(np.float32)
    return LightCurveBatch(
        object_id=[f"o{k}" for k in range(n)],
        offsets=np.arange(n + 1) * points,
        time=time,
        band=band,
        flux=flux,
        flux_err=np.full(n * points, 50.0, np.float32),
        detected=flux > 250,
        label=np.array(labels),
        metadata={"augment_copy": np.zeros(n), "split_group": np.arange(n, dtype=float)},
    )


def test_masked_features_are_given_as_missing_and_must_exist() -> None:
    spec = PreprocessingSpec(bands=("g", "r"), masked_features=("n_detections", "mean_g"))
    plain = PreprocessingSpec(bands=("g", "r"))
    batch = _batch(["SNIa", "SNII"])
    masked, full = tabular_features(batch, spec), tabular_features(batch, plain)
    names = spec.feature_names
    for name in ("n_detections", "mean_g"):
        assert np.isnan(masked[:, names.index(name)]).all()
        assert np.isfinite(full[:, names.index(name)]).all()
    others = [j for j, n in enumerate(names) if n not in ("n_detections", "mean_g")]
    np.testing.assert_array_equal(masked[:, others], full[:, others])
    with pytest.raises(ValidationError, match="not tabular features"):
        PreprocessingSpec(bands=("g", "r"), masked_features=("mean_i",))


def test_nightly_binning_is_part_of_every_door() -> None:
    batch = _batch(["SNIa"])
    binned, outside = keep_model_bands(batch, PreprocessingSpec(bands=("g", "r"), nightly_bin=True))
    same, _ = keep_model_bands(batch, PreprocessingSpec(bands=("g", "r")))
    assert outside == 0 and len(same.flux) == 30
    assert len(binned.flux) == 30  # one point per band and night already
    doubled = LightCurveBatch(  # the same object's points twice: two points per band and night
        object_id=["o0"],
        offsets=[0, 60],
        time=np.concatenate([batch.time, batch.time + 0.01]),
        band=np.concatenate([batch.band, batch.band]),
        flux=np.concatenate([batch.flux, batch.flux]),
        flux_err=np.concatenate([batch.flux_err, batch.flux_err]),
        detected=np.concatenate([batch.detected, batch.detected]),
    )
    binned, _ = keep_model_bands(doubled, PreprocessingSpec(bands=("g", "r"), nightly_bin=True))
    assert len(binned.flux) == 30
    np.testing.assert_allclose(np.sort(binned.flux), np.sort(batch.flux), rtol=1e-6)


def test_rendered_copies_stay_with_their_object_in_every_split() -> None:
    labels = ["SNIa"] * 40 + ["RRL"] * 40
    batch = _batch(labels)
    spec = RenderSection(copies=2, baseline=True, seed=3)
    out = add_rendered_copies(batch, spec)
    assert len(out) == 3 * len(batch)
    copy = out.metadata["augment_copy"]
    assert sorted(set(copy.tolist())) == [0.0, 1.0, 2.0]
    processing = out.metadata["processing"]
    assert (processing[copy == 0] == -1).all()
    names = list(PROCESSINGS)
    assert {names[int(p)] for p in processing[copy > 0]} <= set(spec.processings)
    np.testing.assert_array_equal(out.label[copy == 1], batch.label)
    np.testing.assert_array_equal(out.metadata["split_group"][copy == 2], np.arange(80.0))
    # a baseline (epochs before the first point) only for transients
    first = [out.time[out.offsets[k]] for k in range(len(out))]
    rrl_copies = [k for k in range(len(out)) if copy[k] > 0 and out.label[k] == "RRL"]
    assert all(first[k] >= 58000.0 for k in rrl_copies)
    # the same seed renders the same copies
    again = add_rendered_copies(_batch(labels), spec)
    np.testing.assert_array_equal(again.flux, out.flux)

    cfg = TrainConfig.model_validate(
        {
            "data": {"light_curves": "unused.csv", "holdout_fold": 0},
            "export": {"name": "test"},
        }
    )
    train, val, hold = grouped_splits(out, cfg)
    groups = out.metadata["split_group"]
    assert not set(groups[train]) & set(groups[val]) and not set(groups[train]) & set(groups[hold])
    assert (copy[val] == 0).all() and (copy[hold] == 0).all()  # evaluated as read


def test_max_per_class_balances_a_source() -> None:
    batch = _batch(["SNIa"] * 30 + ["SNII"] * 5)
    out = add_rendered_copies(batch, RenderSection(copies=1, max_per_class=10))
    copies = out.label[out.metadata["augment_copy"] > 0]
    assert (copies == "SNIa").sum() == 10 and (copies == "SNII").sum() == 5


def test_render_section_refuses_unknown_processings() -> None:
    with pytest.raises(ValidationError, match="unknown processing"):
        RenderSection(processings=["alert", "forced-ish"])


def test_leave_one_source_out_configs_drop_exactly_that_source() -> None:
    import yaml

    from benchmarks.loso_configs import SOURCE_PATHS, loso_config

    config = Path(__file__).resolve().parent.parent / "configs" / "atat_ztf.yaml"
    doc = yaml.safe_load(config.read_text())
    paths = [e["path"] for e in doc["data"]["extra_sources"]]
    for source, fragment in SOURCE_PATHS.items():
        out = loso_config(doc, source, epochs=5)
        assert out is not None, source  # every meter source is a source of the shipped config
        kept = [e["path"] for e in out["data"]["extra_sources"]]
        assert [p for p in paths if p not in kept] == [p for p in paths if fragment in p]
        assert len(kept) == len(paths) - 1 and out["training"]["epochs"] == 5
        assert out["data"]["light_curves"] == doc["data"]["light_curves"]  # simulation kept
        TrainConfig.model_validate(out)  # still a valid config
    assert doc["training"]["epochs"] != 5  # the original is untouched
