"""Shared fixtures: where the real data lives, and the tiny models several modules train.

Tests read real data from ``ASTROCLF_SHARED_DATA`` (default ``../shared/data`` relative to
the project root). Outside CI a test that needs it is skipped with the reason when it is
absent; in CI (``CI=true``) its absence is an error.

A test that trains or exports a model, or runs several worker processes against the broker
(kill -9, scale-out), is marked ``slow`` (``pytest -m "not slow"`` skips it; CI runs it). The trained models that more than one module needs are session fixtures here, trained
once per session; a test that requests one of them is marked ``slow`` at collection even if
its module forgot the mark (``TRAINED_FIXTURES``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _shared_data_dir() -> Path:
    return Path(os.environ.get("ASTROCLF_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; skip (or fail in CI) when it is absent."""
    path = _shared_data_dir()
    if not path.is_dir():
        message = (
            f"real data folder {path} not found; set ASTROCLF_SHARED_DATA to the folder "
            "holding alerts/ and lightcurves/"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


pytest_plugins = ["tests.kafka_broker"]

# Session fixtures that train a model: every test that uses one is slow.
TRAINED_FIXTURES = frozenset({"image_model", "atat_tiny_run"})


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if TRAINED_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def image_model(shared_data: Path, tmp_path_factory) -> tuple[Path, Path]:
    """(run dir, exported ONNX file) of the tiny alert CLIP with an image tower
    (configs/clip_tiny_alerts.yaml: stamps + light curve + metadata of real ZTF alerts,
    labelled SolarSystem / NotSolarSystem by the alerts' own ssdistnr). Needs torch."""
    pytest.importorskip("torch")
    import torch
    from rich.console import Console

    from astro_classifier.export.onnx_export import export_run
    from astro_classifier.training.config import TrainConfig
    from astro_classifier.training.train import train

    cfg = TrainConfig.from_yaml(
        PROJECT_ROOT / "configs" / "clip_tiny_alerts.yaml",
        [f"data.light_curves={shared_data / 'alerts' / 'ztf' / 'fink-v4.02'}"],
    )
    run_dir = tmp_path_factory.mktemp("image-model") / "run"
    threads = torch.get_num_threads()
    try:
        train(cfg, run_dir, console=Console(quiet=True))
    finally:
        torch.set_num_threads(threads)
    out = run_dir / "clip-tiny-alerts.onnx"
    export_run(run_dir, out)
    return run_dir, out


@pytest.fixture(scope="session")
def atat_tiny_run(shared_data: Path, tmp_path_factory):
    """(CliRunner result, run dir) of `astroclf train configs/atat_tiny.yaml` cut to one
    epoch on 120 real PLAsTiCC objects with only the whole-curve level
    (``data.truncation_days=[.inf]``). Read-only: a test that changes the run directory
    copies it first. Needs torch."""
    pytest.importorskip("torch")
    import torch
    from typer.testing import CliRunner

    from astro_classifier.cli.app import app

    run_dir = tmp_path_factory.mktemp("atat-tiny") / "run"
    threads = torch.get_num_threads()  # training.num_threads sets it for the whole process
    try:
        result = CliRunner().invoke(
            app,
            [
                "train",
                str(PROJECT_ROOT / "configs" / "atat_tiny.yaml"),
                "-o",
                str(run_dir),
                "--set",
                "data.truncation_days=[.inf]",
                "--set",
                "data.max_objects=120",
                "--set",
                "training.epochs=1",
                "--set",
                "training.num_threads=1",
            ],
            env={"ASTROCLF_SHARED_DATA": str(shared_data)},
        )
    finally:
        torch.set_num_threads(threads)
    return result, run_dir
