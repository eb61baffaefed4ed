"""Golden test of the shipped models: fixed real inputs, stored expected probabilities.

The expected values live in tests/data/golden_probabilities.json, written by
tests/data/make_golden.py. A retrained or re-exported model changes them: regenerate the
file deliberately (the version check below makes a silent model swap fail here).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from astro_classifier.core.lightcurve import LightCurveBatch
from astro_classifier.formats.plasticc import read_plasticc
from astro_classifier.formats.ztf import read_ztf_avro
from astro_classifier.inference.classify import classify
from astro_classifier.inference.model import LoadedModel, read_metadata

PROJECT_ROOT = Path(__file__).resolve().parent.parent
GOLDEN = json.loads((PROJECT_ROOT / "tests" / "data" / "golden_probabilities.json").read_text())
ATOL = 1e-5


def _plasticc_inputs(entry: dict, shared_data: Path | None) -> LightCurveBatch:
    files = entry["inputs"]
    examples = read_plasticc(PROJECT_ROOT / files["light_curves"], PROJECT_ROOT / files["metadata"])
    ids = examples.object_id.tolist()
    return examples.select([ids.index(o) for o in entry["object_ids"]])


def _ztf_inputs(entry: dict, shared_data: Path) -> LightCurveBatch:
    folder = shared_data / entry["inputs"]["shared_data"]
    return read_ztf_avro([folder / name for name in entry["inputs"]["files"]])


CASES = {"atat-lsst": _plasticc_inputs, "atat-ztf": _ztf_inputs}


@pytest.fixture(params=sorted(CASES))
def model_name(request) -> str:
    return request.param


@pytest.fixture
def golden_batch(model_name: str, request) -> LightCurveBatch:
    entry = GOLDEN[model_name]
    # The PLAsTiCC examples are committed; the ZTF alerts come from the shared data folder.
    shared = request.getfixturevalue("shared_data") if model_name == "atat-ztf" else None
    return CASES[model_name](entry, shared)


def test_golden_file_matches_the_shipped_model_versions(model_name: str) -> None:
    entry = GOLDEN[model_name]
    meta = read_metadata(model_name)
    assert entry["model"] == meta.name == model_name
    assert entry["model_version"] == meta.version, (
        f"{model_name} is now version {meta.version}, the golden file holds "
        f"{entry['model_version']}: if the model was retrained on purpose, rerun "
        "`python tests/data/make_golden.py` and review the changed probabilities"
    )
    assert entry["labels"] == meta.labels
    assert len(entry["object_ids"]) >= 5
    assert np.asarray(entry["probabilities"]).shape == (len(entry["object_ids"]), len(meta.labels))


def test_shipped_model_reproduces_golden_probabilities(
    model_name: str, golden_batch: LightCurveBatch
) -> None:
    entry = GOLDEN[model_name]
    model = LoadedModel.load(model_name, provider="cpu")
    assert model.providers == ["CPUExecutionProvider"]
    result = classify(golden_batch, model)
    table = result.to_arrow()
    assert not result.skipped
    assert table.column("object_id").to_pylist() == entry["object_ids"]
    assert table.column("alert_id").to_pylist() == entry["alert_ids"]
    assert set(table.column("model").to_pylist()) == {entry["model"]}
    assert set(table.column("model_version").to_pylist()) == {entry["model_version"]}
    proba = np.stack([table.column(f"prob_{c}").to_numpy() for c in entry["labels"]], axis=1)
    expected = np.asarray(entry["probabilities"])
    np.testing.assert_allclose(proba, expected, atol=ATOL, rtol=0)
    # The top class and its probability follow from the same numbers.
    labels = np.asarray(entry["labels"])
    assert table.column("class").to_pylist() == labels[expected.argmax(axis=1)].tolist()
    np.testing.assert_allclose(
        table.column("probability").to_numpy(), expected.max(axis=1), atol=ATOL
    )
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
