"""Tests against truth, not against snapshots of our own output.

- The PLAsTiCC reader against values computed by hand from the survey's definitions.
- The shipped model against the true classes of the committed example (and of its golden
  objects), so that a model that regressed fails here even if someone regenerated the golden
  file.
- The preprocessing against an independent, loop-by-loop NumPy reference written from the
  ModelInputs contract, for three real objects.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from astro_classifier.cli.app import app
from astro_classifier.core.lightcurve import BAND_INDEX, LightCurveBatch
from astro_classifier.features.preprocess import light_curves_to_inputs, tabular_features
from astro_classifier.formats.plasticc import read_plasticc
from astro_classifier.formats.registry import read_light_curves
from astro_classifier.inference.classify import classify
from astro_classifier.inference.model import LoadedModel

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_LC = PROJECT_ROOT / "examples" / "plasticc" / "lightcurves.csv"
EXAMPLE_META = PROJECT_ROOT / "examples" / "plasticc" / "metadata.csv"
GOLDEN = json.loads((PROJECT_ROOT / "tests" / "data" / "golden_probabilities.json").read_text())
runner = CliRunner(env={"COLUMNS": "240"})


# -- the PLAsTiCC reader, by hand ---------------------------------------------------------
def _write_plasticc(tmp_path: Path, targets: list[str]) -> tuple[Path, Path]:
    lc = tmp_path / "lc.csv"
    lc.write_text(
        "object_id,mjd,passband,flux,flux_err,detected_bool\n"
        "7,60000.5,2,100.0,10.0,1\n"
        "7,60001.5,0,-2.5,1.0,0\n"
        "9,60002.0,5,1.0,0.5,1\n"
    )
    meta = tmp_path / "meta.csv"
    meta.write_text(
        "object_id,hostgal_photoz,target\n"
        + "\n".join(f"{o},0.1,{t}" for o, t in zip((7, 9), targets, strict=True))
        + "\n"
    )
    return lc, meta


def test_plasticc_fluxcal_to_njy_and_class_ids_by_hand(tmp_path):
    lc, meta = _write_plasticc(tmp_path, ["90", "16"])
    batch = read_plasticc(lc, meta)
    # FLUXCAL has zero point 27.5, nJy has AB zero point 31.4: factor 10 ** (3.9 / 2.5)
    factor = 36.30780547701014
    np.testing.assert_allclose(batch.flux, [100.0 * factor, -2.5 * factor, 1.0 * factor], rtol=1e-6)
    np.testing.assert_allclose(
        batch.flux_err, [10.0 * factor, 1.0 * factor, 0.5 * factor], rtol=1e-6
    )
    assert batch.band.tolist() == [BAND_INDEX["r"], BAND_INDEX["u"], BAND_INDEX["y"]]
    assert batch.detected.tolist() == [True, False, True]
    assert batch.label.tolist() == ["SNIa", "EB"]  # PLAsTiCC ids 90 and 16


@pytest.mark.parametrize("placeholders", [["0", "0"], ["-1", "0"], ["", ""]])
def test_placeholder_targets_mean_no_labels(tmp_path, placeholders):
    lc, meta = _write_plasticc(tmp_path, placeholders)
    assert read_plasticc(lc, meta).label is None


def test_classify_runs_on_a_test_file_with_placeholder_targets(tmp_path):
    meta = tmp_path / "meta.csv"
    lines = EXAMPLE_META.read_text().splitlines()
    header = [name.strip('"') for name in lines[0].split(",")]
    target = header.index("target")
    rows = []
    for line in lines[1:]:
        cells = line.split(",")
        truth = cells[target]
        cells[target] = "0"  # as in every released PLAsTiCC test file
        rows.append(",".join([*cells, truth]))
    meta.write_text(",".join([*header, "true_target"]) + "\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out.parquet"
    result = runner.invoke(
        app, ["classify", str(EXAMPLE_LC), "--metadata", str(meta), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.exists()
    # evaluate finds the truth where it is told to, and says so
    evaluated = runner.invoke(
        app,
        [
            "evaluate",
            "atat-lsst",
            str(EXAMPLE_LC),
            "--metadata",
            str(meta),
            "--label-column",
            "true_target",
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert "true_target" in evaluated.output and "42 of 42 objects labelled" in evaluated.output
    refused = runner.invoke(
        app, ["evaluate", "atat-lsst", str(EXAMPLE_LC), "--metadata", str(meta)]
    )
    assert refused.exit_code == 1 and "no labels found" in refused.output


# -- the shipped model against the truth --------------------------------------------------
@pytest.fixture(scope="module")
def example_result():
    batch = read_light_curves(EXAMPLE_LC, metadata=EXAMPLE_META)
    result = classify(batch, LoadedModel.load("atat-lsst", provider="cpu"))
    return batch, result


def test_accuracy_on_the_committed_example(example_result):
    batch, result = example_result
    assert len(result) == len(batch) == 42
    predicted = result.classes.astype(str)
    accuracy = float((predicted == batch.label[result.rows]).mean())
    assert accuracy >= 0.6, f"atat-lsst accuracy on the committed example fell to {accuracy:.3f}"


def test_golden_objects_top_class_is_their_true_class(example_result):
    batch, result = example_result
    predicted = dict(zip(result.object_id.tolist(), result.classes.tolist(), strict=True))
    truth = dict(zip(batch.object_id.tolist(), batch.label.tolist(), strict=True))
    golden = GOLDEN["atat-lsst"]["object_ids"]
    wrong = {o: (truth[o], predicted[o]) for o in golden if truth[o] != predicted[o]}
    # atat-lsst 0.2.0 calls the golden kilonova (46553925) an SLSN-I, its one miss of ten; a
    # second miss is a regression
    assert len(wrong) <= 1, f"golden objects classified wrongly (truth, predicted): {wrong}"


# -- preprocessing against an independent reference ---------------------------------------
def _reference_inputs(batch, spec, k: int, width: int) -> dict[str, np.ndarray]:
    """ModelInputs row of object ``k``, point by point from the contract's words."""
    s = slice(batch.offsets[k], batch.offsets[k + 1])
    points = [
        (t, b, f, e, d)
        for t, b, f, e, d in zip(
            batch.time[s],
            batch.band[s],
            batch.flux[s],
            batch.flux_err[s],
            batch.detected[s],
            strict=True,
        )
        if "ugrizy"[b] in spec.bands
    ]
    if spec.nightly_bin:  # one point per band and night (night = floor(MJD + 0.25))
        nights: dict[tuple[int, int], list] = {}
        for p in points:
            nights.setdefault((p[1], math.floor(p[0] + 0.25)), []).append(p)
        points = []
        for group in nights.values():
            w = [1.0 / float(e) ** 2 for _, _, _, e, _ in group]
            points.append(
                (
                    sum(wi * t for wi, (t, *_) in zip(w, group, strict=True)) / sum(w),
                    group[0][1],
                    sum(wi * f for wi, (_, _, f, _, _) in zip(w, group, strict=True)) / sum(w),
                    1.0 / math.sqrt(sum(w)),
                    any(d for *_, d in group),
                )
            )
    points.sort(key=lambda p: p[0])
    detected_times = [p[0] for p in points if p[4]]
    t0 = min(detected_times) if detected_times else points[0][0]  # first detection, else first
    kept = points
    if len(points) > spec.max_length:  # a window of max_length around the brightest point
        snr = [f / e for _, _, f, e, _ in points]
        peak = snr.index(max(snr))
        end = min(max(peak + spec.max_length // 2 + 1, spec.max_length), len(points))
        kept = points[end - spec.max_length : end]
    row = {name: np.zeros(width, np.float64) for name in ("flux", "flux_err", "time", "band")}
    row["mask"] = np.zeros(width, bool)
    for j, (t, b, f, e, _) in enumerate(kept):
        row["flux"][j] = np.arcsinh(f / spec.flux_scale_njy)
        row["flux_err"][j] = np.arcsinh(e / spec.flux_scale_njy)
        row["time"][j] = t - t0
        row["band"][j] = spec.bands.index("ugrizy"[b])
        row["mask"][j] = True
    return row


def test_preprocessing_matches_an_independent_reference(shared_data):
    model = LoadedModel.load("atat-ztf", provider="cpu")
    spec = model.metadata.preprocessing
    alerts = sorted((shared_data / "alerts/ztf/ztf-avro-alert").glob("*.avro"))
    alerts_batch = read_light_curves([alerts[0], alerts[1], alerts[-1]])  # short, medium, forced
    # and a multi-year light curve longer than the model's window, peaking early
    n = 3 * spec.max_length
    time = 58000.0 + np.arange(n) * 3.0
    flux = 200.0 + 5000.0 * np.exp(-0.5 * ((np.arange(n) - 40) / 6.0) ** 2)
    long = LightCurveBatch.from_points(
        np.full(n, "long"),
        time,
        np.where(np.arange(n) % 2, 1, 2),
        flux,
        np.full(n, 50.0),
        flux > 400,
    )
    batch = LightCurveBatch.concat([alerts_batch, long])
    inputs = light_curves_to_inputs(batch, spec, tabular=tabular_features(batch, spec))
    width = inputs.flux.shape[1]
    for k in range(len(batch)):
        expected = _reference_inputs(batch, spec, k, width)
        for name in ("flux", "flux_err", "time", "band"):
            np.testing.assert_allclose(
                getattr(inputs, name)[k], expected[name], rtol=1e-5, atol=1e-4, err_msg=name
            )
        np.testing.assert_array_equal(inputs.mask[k], expected["mask"])
