"""Training-set augmentation and the object-level splits that keep copies together.

Physics checks against hand-computable cases: fluxes scale as the inverse square of the
luminosity distance, times stretch by (1 + z1) / (1 + z0), the noise never drops below the
target survey's, and the ZTF target puts every copy's peak in ZTF's magnitude range.
"""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console

from astro_classifier.core.lightcurve import LightCurveBatch
from astro_classifier.formats.plasticc import read_plasticc
from astro_classifier.training.augment import (
    AugmentSpec,
    augment,
    difference_flux,
    luminosity_distance_mpc,
    mag_to_njy,
    redshift_at_distance,
)
from astro_classifier.training.config import TrainConfig

pytest.importorskip("torch")  # the training package's other modules import torch

from astro_classifier.training.sources import grouped_splits  # noqa: E402


def _plasticc_sample(shared_data, n: int = 200) -> LightCurveBatch:
    folder = shared_data / "lightcurves/plasticc"
    batch = read_plasticc(
        folder / "plasticc_train_lightcurves.csv.gz", folder / "plasticc_train_metadata.csv.gz"
    )
    return batch.select(np.arange(n))


def test_luminosity_distance_matches_known_values():
    # flat LambdaCDM H0 = 70, Om = 0.3: d_L(z = 0.1) = 460.0 Mpc, d_L(1) = 6607.7 Mpc
    np.testing.assert_allclose(luminosity_distance_mpc([0.1, 1.0]), [460.0, 6607.7], rtol=2e-3)
    np.testing.assert_allclose(
        redshift_at_distance(luminosity_distance_mpc([0.05, 0.7])), [0.05, 0.7], rtol=1e-3
    )


def test_fainter_copies_follow_distance_and_time_dilation(shared_data):
    batch = _plasticc_sample(shared_data)
    spec = AugmentSpec(target="fainter", copies=1, keep_original=False, seed=3)
    copy = augment(batch, spec)
    z0 = np.where(np.isfinite(batch.metadata["hostgal_specz"]), batch.metadata["hostgal_specz"], 0)
    extragalactic = np.flatnonzero((z0 > 1e-4) & (batch.lengths > 3))
    assert len(extragalactic) > 20
    for k in extragalactic[:20]:
        z1 = copy.metadata["hostgal_specz"][k]
        assert z1 >= z0[k]
        s0, s1 = (
            slice(batch.offsets[k], batch.offsets[k + 1]),
            slice(copy.offsets[k], copy.offsets[k + 1]),
        )
        dt0 = batch.time[s0][-1] - batch.time[s0][0]
        dt1 = copy.time[s1][-1] - copy.time[s1][0]
        assert dt1 == pytest.approx(dt0 * (1 + z1) / (1 + z0[k]), rel=1e-9)
        # the noise stays the survey's (no point gets less noisy than it was)
        assert (copy.flux_err[s1] >= batch.flux_err[s0] * (1 - 1e-6)).all()
        expected_distmod = 5 * np.log10(luminosity_distance_mpc(z1) * 1e5)
        assert copy.metadata["distmod"][k] == pytest.approx(expected_distmod, abs=1e-6)


def test_ztf_copies_peak_in_ztf_range_with_ztf_noise(shared_data):
    batch = _plasticc_sample(shared_data)
    spec = AugmentSpec(target="ztf", copies=2, keep_original=False, alert_like_fraction=0.0, seed=1)
    copies = augment(batch, spec)
    assert len(copies) == 2 * len(batch)
    assert copies.object_id[0].endswith("~aug1") and copies.object_id[len(batch)].endswith("~aug2")
    floor = mag_to_njy(spec.limit_mag[1]) / 5  # the quietest ZTF point's noise
    assert (copies.flux_err >= floor * (1 - 1e-6)).all()
    obj = copies.point_object_index()
    peak = np.zeros(len(copies))
    np.maximum.at(peak, obj, copies.flux.astype(np.float64))
    bright = peak > 10 * mag_to_njy(spec.limit_mag[0]) / 5  # clearly above the noise
    peak_mag = 31.4 - 2.5 * np.log10(peak[bright])
    assert peak_mag.min() > spec.peak_mag[0] - 1.0 and peak_mag.max() < spec.peak_mag[1] + 1.0
    assert (copies.detected == (copies.flux > 5 * copies.flux_err)).all()
    # same seed, same copies
    again = augment(batch, spec)
    np.testing.assert_array_equal(again.flux, copies.flux)


def test_alert_like_copies_have_limits_and_a_30_day_history(shared_data):
    batch = _plasticc_sample(shared_data)
    copies = augment(
        batch, AugmentSpec(target="ztf", copies=1, keep_original=False, alert_like_fraction=1.0)
    )
    assert (copies.flux[~copies.detected] == 0).all()
    first = copies.first_detection_time()
    obj = copies.point_object_index()
    has_detection = np.bincount(obj, weights=copies.detected, minlength=len(copies)) > 0
    assert (copies.time[has_detection[obj]] >= first[obj][has_detection[obj]] - 30.0).all()


def test_difference_flux_removes_each_band_median():
    batch = LightCurveBatch.from_points(
        ["a"] * 6,
        np.arange(6.0),
        [1, 1, 1, 2, 2, 2],
        [10.0, 12.0, 20.0, 5.0, 7.0, 6.0],
        np.ones(6),
        np.ones(6, bool),
    )
    out = difference_flux(batch, np.array([True]))
    np.testing.assert_allclose(out.flux, [-2.0, 0.0, 8.0, -1.0, 1.0, 0.0])


def test_grouped_splits_keep_copies_with_their_original(shared_data, tmp_path):
    batch = _plasticc_sample(shared_data, 300)
    batch = augment(batch, AugmentSpec(target="fainter", copies=2, keep_original=True))
    batch.metadata["split_group"] = batch.metadata.pop("augment_parent")
    cfg = TrainConfig.model_validate(
        {"data": {"light_curves": "x", "val_fraction": 0.2}, "export": {"name": "m"}}
    )
    train, val, holdout = grouped_splits(batch, cfg)
    group = batch.metadata["split_group"]
    assert not set(group[train]) & set(group[val])
    assert not set(group[train]) & set(group[holdout])
    assert (batch.metadata["augment_copy"][val] == 0).all()  # originals evaluated
    assert (batch.metadata["augment_copy"][holdout] == 0).all()
    assert len(train) + len(val) + len(holdout) < len(batch)  # copies of held-out objects unused


def test_training_objects_from_several_sources_with_label_map(shared_data):
    from astro_classifier.training.sources import read_training_objects

    cfg = TrainConfig.model_validate(
        {
            "data": {
                "light_curves": str(shared_data / "lightcurves/eros1/train.csv"),
                "format": "eros1",
                "extra_sources": [
                    {
                        "path": str(shared_data / "lightcurves/manytde/data/sources"),
                        "split": "real-sky-train",
                    }
                ],
                "label_map": {"Mira": "LPV"},
                "classes": ["LPV", "TDE", "RRL"],
            },
            "export": {"name": "m"},
        }
    )
    batch = read_training_objects(cfg, Console(quiet=True))
    assert set(batch.label) == {"LPV", "TDE", "RRL"}
    tde = batch.label == "TDE"
    assert tde.sum() == 65  # manyTDE's 97 objects less the real-sky test split
    assert (batch.metadata["split_group"][tde] >= 1e7).all()  # second source's groups


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"model": {"name": "atat", "args": {"d_modle": 32}}}, "did you mean 'd_model'"),
        ({"model": {"name": "atta"}}, "did you mean 'atat'"),
    ],
)
def test_model_typos_are_refused_before_reading_data(override, message):
    from astro_classifier.families.registry import check_model_args

    cfg = TrainConfig.model_validate(
        {"data": {"light_curves": "missing.csv"}, "export": {"name": "m"}, **override}
    )
    with pytest.raises(ValueError, match=message):
        check_model_args(cfg.model.name, cfg.model.args)


def test_truncation_days_must_hold_the_whole_curve():
    with pytest.raises(ValueError, match="must include .inf"):
        TrainConfig.model_validate(
            {"data": {"light_curves": "x", "truncation_days": [8, 16]}, "export": {"name": "m"}}
        )
    cfg = TrainConfig.model_validate(
        {"data": {"light_curves": "x", "truncation_days": [float("inf")]}, "export": {"name": "m"}}
    )
    assert cfg.data.truncation_days == [float("inf")]


@pytest.mark.slow
def test_train_with_only_the_whole_curve_level_runs(atat_tiny_run):
    # `astroclf train configs/atat_tiny.yaml --set data.truncation_days=[.inf]` (conftest.py)
    result, run_dir = atat_tiny_run
    assert result.exit_code == 0, result.output
    assert (run_dir / "run.json").is_file() and (run_dir / "weights.pt").is_file()
