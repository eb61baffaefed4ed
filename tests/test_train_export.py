"""Train the tiny ATAT on real PLAsTiCC objects, export it to ONNX, serve it.

One short training (2 epochs, 300 objects) per module; the export tests share it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import onnx  # noqa: E402
from rich.console import Console  # noqa: E402

from astro_classifier.data.dataset import TrainingDataset  # noqa: E402
from astro_classifier.export import onnx_export  # noqa: E402
from astro_classifier.export.onnx_export import ParityError, export_run, load_checkpoint  # noqa: E402
from astro_classifier.features.preprocess import ModelInputs, light_curves_to_inputs  # noqa: E402
from astro_classifier.inference.model import (  # noqa: E402
    LoadedModel,
    default_length_buckets,
    read_metadata,
)
from astro_classifier.training.config import TrainConfig  # noqa: E402
from astro_classifier.training.train import train  # noqa: E402

pytestmark = pytest.mark.slow

TINY_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "atat_tiny.yaml"
QUICK = ["training.epochs=2", "data.max_objects=300", "training.num_threads=1"]
RUN_FILES = ("config.yaml", "checkpoint.pt", "metrics.json", "confusion_matrix.png",
             "learning_curves.png", "dataset.h5")  # fmt: skip


def _config(shared_data: Path) -> TrainConfig:
    folder = shared_data / "lightcurves" / "plasticc"
    return TrainConfig.from_yaml(
        TINY_CONFIG,
        [
            *QUICK,
            f"data.light_curves={folder / 'plasticc_train_lightcurves.csv.gz'}",
            f"data.metadata={folder / 'plasticc_train_metadata.csv.gz'}",
        ],
    )


def _train(cfg: TrainConfig, run_dir: Path) -> dict:
    threads = torch.get_num_threads()  # training.num_threads sets it for the whole process
    try:
        return train(cfg, run_dir, console=Console(quiet=True))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def config(shared_data: Path) -> TrainConfig:
    return _config(shared_data)


@pytest.fixture(scope="module")
def run(config: TrainConfig, tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("train") / "run"
    return run_dir, _train(config, run_dir)


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> tuple[Path, onnx_export.ParityReport]:
    out = tmp_path_factory.mktemp("export") / "atat-tiny.onnx"
    return out, export_run(run[0], out)


# -- training ----------------------------------------------------------------------------


def test_run_directory_holds_config_checkpoint_metrics_and_plots(run, config) -> None:
    run_dir, metrics = run
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    for name in ("confusion_matrix.png", "learning_curves.png"):
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert TrainConfig.from_yaml(run_dir / "config.yaml") == config


def test_metrics_have_history_and_holdout(run, config) -> None:
    run_dir, metrics = run
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert [row["epoch"] for row in saved["history"]] == [1, 2]
    for row in saved["history"]:
        assert {"train_loss", "val_loss", "val_macro_f1", "val_accuracy"} <= set(row)
        assert np.isfinite([row["train_loss"], row["val_loss"]]).all()
    holdout = saved["holdout"]
    assert {"macro_f1", "accuracy", "log_loss", "confusion_matrix"} <= set(holdout)
    assert np.asarray(holdout["confusion_matrix"]).sum() == saved["n_holdout"] > 0
    assert saved["n_train"] + saved["n_validation"] + saved["n_holdout"] <= 301
    assert 1 <= saved["best_epoch"] <= 2


def test_checkpoint_describes_the_model(run, config) -> None:
    model, ckpt = load_checkpoint(run[0])
    assert ckpt["model_name"] == "atat_tiny"
    assert ckpt["labels"] == sorted(ckpt["labels"]) and len(ckpt["labels"]) == 14
    assert ckpt["spec"] == config.preprocessing.model_dump(mode="json")
    assert model.cfg.n_features == len(config.preprocessing.feature_names)
    assert not model.training


def test_same_seed_gives_identical_metrics(run, config, tmp_path: Path) -> None:
    run_dir, metrics = run
    again = _train(config, tmp_path / "again")
    strip = lambda m: {k: v for k, v in m.items() if k != "train_seconds"}  # noqa: E731
    assert strip(again) == strip(metrics)
    first = torch.load(run_dir / "checkpoint.pt", weights_only=False)["state_dict"]
    second = torch.load(tmp_path / "again" / "checkpoint.pt", weights_only=False)["state_dict"]
    for key, value in first.items():
        torch.testing.assert_close(second[key], value, atol=0, rtol=0, msg=key)


# -- export ------------------------------------------------------------------------------


def test_export_agrees_with_torch(exported, run) -> None:
    out, report = exported
    assert out.is_file()
    _, ckpt = load_checkpoint(run[0])
    assert report.n_objects == len(ckpt["split"]["validation"]) > 0
    assert report.max_abs_diff <= 1e-4
    assert report.top_class_agreement == 1.0


def test_exported_model_passes_the_onnx_checker(exported) -> None:
    onnx.checker.check_model(str(exported[0]), full_check=True)


def test_exported_metadata(exported, run, config) -> None:
    out, _ = exported
    meta = read_metadata(out)
    _, ckpt = load_checkpoint(run[0])
    assert meta.name == config.export.name and meta.version == config.export.version
    assert meta.architecture == "atat_tiny"
    assert meta.labels == ckpt["labels"]
    assert meta.bands == list(config.preprocessing.bands)
    assert meta.preprocessing == config.preprocessing
    assert meta.feature_names == config.preprocessing.feature_names
    assert len(meta.feature_names) == 5 + 6 * 19 + 4  # metadata + per-band + summary
    assert meta.precision == "fp32"
    assert meta.length_buckets == default_length_buckets(config.preprocessing.max_length)
    assert [i.name for i in meta.inputs] == ModelInputs.names()
    assert (
        meta.training_data["content_hash"]
        == TrainingDataset.load(run[0] / "dataset.h5").content_hash
    )
    session = LoadedModel.load(out, provider="cpu").session
    shapes = {i.name: i.shape for i in session.get_inputs()}
    assert shapes["tabular"] == ["batch", len(meta.feature_names)]
    assert shapes["flux"] == ["batch", "length"]
    assert session.get_outputs()[0].shape == ["batch", len(meta.labels)]


def test_dynamic_batch_and_length_axes(exported, run) -> None:
    out, _ = exported
    model, _ = load_checkpoint(run[0])
    loaded = LoadedModel.load(out, provider="cpu")
    ds = TrainingDataset.load(run[0] / "dataset.h5")
    full = len(ds.truncation_days) - 1
    shapes = []
    for start, size, extra in ((0, 3, 0), (10, 7, 37)):
        index = np.arange(start, start + size)
        sub, feats = ds.truncated(index, np.full(size, full))
        natural = light_curves_to_inputs(sub, ds.spec, tabular=feats)
        inputs = light_curves_to_inputs(
            sub, ds.spec, tabular=feats, width=natural.mask.shape[1] + extra
        )
        got = loaded.predict(inputs)
        with torch.no_grad():
            expected = model(**{k: torch.from_numpy(v) for k, v in inputs.as_dict().items()})
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got, loaded.predict(natural), atol=1e-5, rtol=0)
        shapes.append(inputs.flux.shape)
    (b1, n1), (b2, n2) = shapes
    assert b1 != b2 and n1 != n2  # two batch sizes, two lengths, one session


@pytest.mark.filterwarnings("ignore:the float32 number:UserWarning")  # fp16 range clipping
def test_fp16_export(run, tmp_path: Path) -> None:
    out = tmp_path / "atat-tiny-fp16.onnx"
    report = export_run(run[0], out, fp16=True)
    assert out.is_file()
    assert read_metadata(out).precision == "fp16"
    assert report.max_abs_diff <= onnx_export.FP16_TOLERANCE


def test_parity_failure_raises_and_writes_nothing(
    run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A negative limit: any difference fails, even an exact 0.0 agreement.
    monkeypatch.setattr(onnx_export, "FP32_TOLERANCE", -1.0)
    out = tmp_path / "models" / "atat-tiny.onnx"
    with pytest.raises(ParityError, match="not written"):
        export_run(run[0], out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
