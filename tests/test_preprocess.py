"""light_curves_to_inputs and PreprocessingSpec on small hand-built batches."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest

from astro_classifier.core.lightcurve import LightCurveBatch
from astro_classifier.features.preprocess import (
    InputLayout,
    ModelInputs,
    PreprocessingSpec,
    light_curves_to_inputs,
    tabular_features,
    window_start,
)
from tests.builders import make_batch

SCALE = 1000.0  # nJy, PreprocessingSpec's default flux_scale_njy
NO_FEATURES = PreprocessingSpec(light_curve_features=False)  # skips the light-curve package


def _three_objects() -> LightCurveBatch:
    return make_batch(
        {
            "a": [
                (100.0, "g", 500.0, 50.0, False),
                (101.0, "r", 1500.0, 60.0, True),
                (102.5, "g", -200.0, 40.0, True),
                (104.0, "i", 3000.0, 80.0, True),
                (110.0, "r", 800.0, 70.0, False),
            ],
            "b": [(200.0, "z", 10.0, 5.0, True), (203.0, "y", 20.0, 6.0, True)],
            "c": [(300.0, "u", 7.0, 1.0, True)],
        },
        metadata={"hostgal_photoz": [0.1, np.nan, 0.3], "mwebv": [0.02, 0.03, 0.04]},
    )


def _row(inputs: ModelInputs, k: int, n: int) -> dict[str, np.ndarray]:
    return {name: getattr(inputs, name)[k, :n] for name in ("flux", "flux_err", "time", "band")}


# -- shapes and dtypes -------------------------------------------------------------------


def test_shapes_and_dtypes_match_the_model_inputs_contract() -> None:
    spec = PreprocessingSpec(metadata_features=("hostgal_photoz", "mwebv"))
    inputs = light_curves_to_inputs(_three_objects(), spec)
    assert ModelInputs.names() == ["flux", "flux_err", "time", "band", "mask", "tabular"]
    assert list(inputs.as_dict()) == ModelInputs.names()
    expected = {
        "flux": np.float32,
        "flux_err": np.float32,
        "time": np.float32,
        "band": np.int64,
        "mask": np.bool_,
    }
    for name, dtype in expected.items():
        value = getattr(inputs, name)
        assert value.dtype == dtype, name
        assert value.shape == (3, 5), name  # B objects, L = longest kept curve
    assert inputs.tabular.dtype == np.float32
    assert inputs.tabular.shape == (3, len(spec.feature_names))
    assert inputs.tabular.flags.c_contiguous
    assert len(inputs) == 3


def test_values_are_asinh_scaled_flux_time_and_band_ids() -> None:
    inputs = light_curves_to_inputs(_three_objects(), NO_FEATURES)
    row = _row(inputs, 0, 5)
    flux = np.array([500.0, 1500.0, -200.0, 3000.0, 800.0], np.float32)
    err = np.array([50.0, 60.0, 40.0, 80.0, 70.0], np.float32)
    np.testing.assert_allclose(row["flux"], np.arcsinh(flux / SCALE), rtol=1e-6)
    np.testing.assert_allclose(row["flux_err"], np.arcsinh(err / SCALE), rtol=1e-6)
    # First detection of "a" is the r point at 101.0; the g point before it is negative.
    np.testing.assert_array_equal(row["time"], np.array([-1.0, 0.0, 1.5, 3.0, 9.0], np.float32))
    np.testing.assert_array_equal(row["band"], [1, 2, 1, 3, 2])  # g r g i r in u g r i z y
    assert inputs.flux.dtype == np.float32


def test_padding_positions_are_zero_and_masked() -> None:
    inputs = light_curves_to_inputs(_three_objects(), NO_FEATURES)
    np.testing.assert_array_equal(inputs.mask.sum(axis=1), [5, 2, 1])
    for k, n in enumerate([5, 2, 1]):
        assert inputs.mask[k, :n].all()
        assert not inputs.mask[k, n:].any()
        for name in ("flux", "flux_err", "time", "band"):
            assert (getattr(inputs, name)[k, n:] == 0).all(), (name, k)


def test_empty_light_curve_is_all_padding() -> None:
    batch = make_batch({"a": [(1.0, "g", 1.0, 1.0, True)], "empty": []})
    inputs = light_curves_to_inputs(batch, NO_FEATURES)
    assert inputs.mask.shape == (2, 1)
    assert not inputs.mask[1].any()
    assert inputs.flux[1, 0] == 0 and inputs.time[1, 0] == 0


# -- cutting to max_length and measuring time --------------------------------------------


def test_most_recent_max_length_points_are_kept() -> None:
    points = [(50.0 + k, "r", 100.0 * k, 10.0, True) for k in range(10)]
    spec = PreprocessingSpec(max_length=4, light_curve_features=False)
    inputs = light_curves_to_inputs(make_batch({"long": points, "short": points[:2]}), spec)
    assert inputs.mask.shape == (2, 4)
    assert inputs.mask[0].all()
    # The last four points (k = 6..9), in time order, at times counted from the first point.
    np.testing.assert_array_equal(inputs.time[0], [6.0, 7.0, 8.0, 9.0])
    np.testing.assert_allclose(inputs.flux[0], np.arcsinh(np.arange(6, 10) * 100.0 / SCALE))
    # A curve shorter than max_length keeps all its points.
    np.testing.assert_array_equal(inputs.mask[1], [True, True, False, False])


def test_time_counts_from_first_detection_of_the_whole_curve() -> None:
    # Non-detections before the first detection (at 103) and a cut that drops it.
    points = [
        (100.0, "g", 1.0, 5.0, False),
        (101.0, "r", 2.0, 5.0, False),
        (103.0, "g", 900.0, 5.0, True),
        (104.0, "r", 950.0, 5.0, False),
        (107.0, "g", 990.0, 5.0, True),
        (111.0, "r", 800.0, 5.0, True),
    ]
    spec = PreprocessingSpec(max_length=2, light_curve_features=False)
    inputs = light_curves_to_inputs(make_batch({"a": points}), spec)
    np.testing.assert_array_equal(inputs.time[0], [4.0, 8.0])  # 107 - 103, 111 - 103
    # Without a cut, the points before the first detection get negative times.
    full = light_curves_to_inputs(make_batch({"a": points}), NO_FEATURES)
    np.testing.assert_array_equal(full.time[0], [-3.0, -2.0, 0.0, 1.0, 4.0, 8.0])


def test_time_counts_from_first_point_when_nothing_is_detected() -> None:
    points = [(10.0, "g", 1.0, 1.0, False), (12.5, "g", 2.0, 1.0, False)]
    inputs = light_curves_to_inputs(make_batch({"quiet": points}), NO_FEATURES)
    np.testing.assert_array_equal(inputs.time[0], [0.0, 2.5])


# -- bands -------------------------------------------------------------------------------


def test_bands_outside_the_spec_are_dropped_and_ids_index_spec_bands() -> None:
    points = [
        (100.0, "u", 1.0, 1.0, True),  # dropped
        (101.0, "g", 2.0, 1.0, True),
        (102.0, "r", 3.0, 1.0, True),
        (103.0, "i", 4.0, 1.0, True),  # dropped
        (104.0, "g", 5.0, 1.0, True),
        (105.0, "y", 6.0, 1.0, True),  # dropped
        (106.0, "r", 7.0, 1.0, True),
    ]
    # Deliberately not in canonical order: ids follow spec.bands, so r -> 0 and g -> 1.
    spec = PreprocessingSpec(bands=("r", "g"), max_length=3, light_curve_features=False)
    inputs = light_curves_to_inputs(make_batch({"a": points}), spec)
    assert inputs.mask.shape == (1, 3)  # dropped points take no place and no length slot
    assert inputs.mask.all()
    np.testing.assert_array_equal(inputs.band[0], [0, 1, 0])  # r g r
    np.testing.assert_allclose(inputs.flux[0], np.arcsinh(np.array([3.0, 5.0, 7.0]) / SCALE))
    # Times count from the first detection among the model's bands (g at 101), as in training,
    # whose dataset keeps only the model's bands.
    np.testing.assert_array_equal(inputs.time[0], [1.0, 3.0, 5.0])


def test_object_without_points_in_spec_bands_is_all_padding() -> None:
    batch = make_batch({"a": [(1.0, "g", 1.0, 1.0, True)], "u_only": [(1.0, "u", 1.0, 1.0, True)]})
    spec = PreprocessingSpec(bands=("g",), light_curve_features=False)
    inputs = light_curves_to_inputs(batch, spec)
    np.testing.assert_array_equal(inputs.mask, [[True], [False]])


# -- width (serving buckets) -------------------------------------------------------------


def test_width_pads_to_a_bucket() -> None:
    batch = _three_objects()
    natural = light_curves_to_inputs(batch, NO_FEATURES)
    padded = light_curves_to_inputs(batch, NO_FEATURES, width=8)
    for name in ("flux", "flux_err", "time", "band", "mask"):
        value = getattr(padded, name)
        assert value.shape == (3, 8), name
        np.testing.assert_array_equal(value[:, :5], getattr(natural, name), err_msg=name)
        assert (value[:, 5:] == 0).all(), name
    exact = light_curves_to_inputs(batch, NO_FEATURES, width=5)
    np.testing.assert_array_equal(exact.mask, natural.mask)


def test_width_shorter_than_the_longest_curve_raises() -> None:
    with pytest.raises(ValueError, match="width 4 is shorter"):
        light_curves_to_inputs(_three_objects(), NO_FEATURES, width=4)


def test_width_counts_kept_points_after_the_max_length_cut() -> None:
    points = [(float(k), "g", 1.0, 1.0, True) for k in range(20)]
    spec = PreprocessingSpec(max_length=8, light_curve_features=False)
    inputs = light_curves_to_inputs(make_batch({"a": points}), spec, width=8)
    assert inputs.mask.shape == (1, 8) and inputs.mask.all()


# -- tabular -----------------------------------------------------------------------------


def test_nan_metadata_stays_nan_in_tabular() -> None:
    spec = PreprocessingSpec(
        metadata_features=("hostgal_photoz", "distmod", "mwebv"), light_curve_features=False
    )
    inputs = light_curves_to_inputs(_three_objects(), spec)
    expected = np.array(
        [[0.1, np.nan, 0.02], [np.nan, np.nan, 0.03], [0.3, np.nan, 0.04]], np.float32
    )  # distmod is absent from the batch: NaN for every object
    np.testing.assert_array_equal(inputs.tabular, expected)


def test_precomputed_tabular_is_used_as_given() -> None:
    spec = PreprocessingSpec(metadata_features=("mwebv",))
    given = np.arange(3 * len(spec.feature_names), dtype=np.float64).reshape(3, -1)
    inputs = light_curves_to_inputs(_three_objects(), spec, tabular=given)
    assert inputs.tabular.dtype == np.float32
    np.testing.assert_array_equal(inputs.tabular, given.astype(np.float32))


@pytest.mark.parametrize(
    "spec",
    [
        PreprocessingSpec(),
        PreprocessingSpec(bands=("g", "r", "i")),
        PreprocessingSpec(metadata_features=("hostgal_photoz", "mwebv", "ddf")),
        PreprocessingSpec(metadata_features=("mwebv",), light_curve_features=False),
        PreprocessingSpec(light_curve_features=False),
    ],
    ids=["default", "gri", "metadata+lc", "metadata-only", "nothing"],
)
def test_feature_names_length_equals_tabular_width(spec: PreprocessingSpec) -> None:
    batch = _three_objects()
    assert tabular_features(batch, spec).shape == (3, len(spec.feature_names))
    assert light_curves_to_inputs(batch, spec).tabular.shape == (3, len(spec.feature_names))
    names = spec.feature_names
    assert names[: len(spec.metadata_features)] == list(spec.metadata_features)
    assert len(set(names)) == len(names)


# -- PreprocessingSpec -------------------------------------------------------------------


def test_spec_defaults_and_json_round_trip() -> None:
    spec = PreprocessingSpec()
    assert spec.bands == ("u", "g", "r", "i", "z", "y")
    assert spec.metadata_features == ()
    custom = PreprocessingSpec(bands=("g", "r"), max_length=64, metadata_features=("mwebv",))
    assert PreprocessingSpec.model_validate_json(custom.model_dump_json()) == custom


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bands": ("g", "x")},
        {"bands": ()},
        {"bands": ("G",)},
        {"metadata_features": ("hostgal_specz",)},  # deliberately not a model input
        {"max_length": 0},
        {"flux_scale_njy": 0.0},
        {"unknown_field": 1},
    ],
)
def test_spec_rejects_invalid_values(kwargs: dict) -> None:
    with pytest.raises(pydantic.ValidationError):
        PreprocessingSpec(**kwargs)


def test_spec_is_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        PreprocessingSpec().max_length = 3  # type: ignore[misc]


def test_take_selects_rows_and_cuts_length() -> None:
    spec = PreprocessingSpec(metadata_features=("mwebv",), light_curve_features=False)
    inputs = light_curves_to_inputs(_three_objects(), spec)
    part = inputs.take(np.array([2, 0]), length=2)
    assert part.flux.shape == (2, 2) and part.tabular.shape == (2, 1)
    np.testing.assert_array_equal(part.mask, inputs.mask[[2, 0], :2])
    np.testing.assert_array_equal(part.tabular, inputs.tabular[[2, 0]])


# -- the vectorised assembly against plain per-object loops ----------------------------------
def _random_batch(seed: int, n: int = 60) -> LightCurveBatch:
    """Objects of 0..400 points (some longer than the window), random bands, S/N ties."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 400, n)
    lengths[:3] = [0, 1, 300]
    ids = np.repeat(np.arange(n), lengths)
    flux = rng.choice([-5.0, 10.0, 50.0, 50.0, 200.0], len(ids)) * rng.random(len(ids))
    flux[rng.random(len(ids)) < 0.05] = 400.0  # exact S/N ties within an object
    return LightCurveBatch.from_points(
        object_id=ids.astype(str),
        time=60000 + rng.random(len(ids)) * 900,
        band=rng.integers(0, 6, len(ids)),
        flux=flux,
        flux_err=np.full(len(ids), 2.0),
        detected=rng.random(len(ids)) < 0.3,
        objects=np.arange(n).astype(str),
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_select_and_first_detection_match_per_object_loops(seed: int) -> None:
    batch = _random_batch(seed)
    index = np.random.default_rng(seed).permutation(len(batch))[:40]
    sub = batch.select(index)
    for row, k in enumerate(index):
        a, b = batch.offsets[k], batch.offsets[k + 1]
        c, d = sub.offsets[row], sub.offsets[row + 1]
        assert np.array_equal(sub.time[c:d], batch.time[a:b])
        assert np.array_equal(sub.flux[c:d], batch.flux[a:b])
    first = batch.first_detection_time()
    for k in range(len(batch)):
        t, det = (
            batch.time[batch.offsets[k] : batch.offsets[k + 1]],
            batch.detected[batch.offsets[k] : batch.offsets[k + 1]],
        )
        expected = np.nan if len(t) == 0 else (t[det].min() if det.any() else t.min())
        assert np.array_equal(first[k], expected, equal_nan=True)


@pytest.mark.parametrize("max_length", [1, 64, 256])
def test_window_start_matches_a_per_object_argmax(max_length: int) -> None:
    batch = _random_batch(2)
    start = window_start(batch, max_length)
    snr = batch.flux / batch.flux_err
    for k, n in enumerate(batch.lengths):
        if n <= max_length:
            assert start[k] == 0
            continue
        peak = int(np.argmax(snr[batch.offsets[k] : batch.offsets[k + 1]]))
        end = min(max(peak + max_length // 2 + 1, max_length), int(n))
        assert start[k] == end - max_length


def test_layout_calls_equal_whole_batch_inputs() -> None:
    """Any subset through one layout equals building that subset on its own."""
    batch = _random_batch(3)
    spec = PreprocessingSpec(bands=("g", "r", "i"), max_length=64, light_curve_features=False)
    tabular = np.zeros((len(batch), 0), np.float32)
    layout = InputLayout(batch, spec)
    index = np.array([5, 2, 40, 0, 17])
    got = layout.inputs(index, tabular[index], width=64)
    alone = light_curves_to_inputs(batch.select(index), spec, tabular=tabular[index], width=64)
    for name, value in alone.as_dict().items():
        assert np.array_equal(getattr(got, name), value), name
