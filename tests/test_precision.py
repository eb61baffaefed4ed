"""Float16 companions: which file serving picks (fp16 on CUDA, fp32 on a CPU), and that the
shipped companion agrees with its float32 model on real PLAsTiCC light curves."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from astro_classifier.cli.app import app
from astro_classifier.core.errors import ModelError
from astro_classifier.inference.model import (
    LoadedModel,
    fp16_companion,
    read_metadata,
    resolve_model_path,
    select_precision,
)


def test_the_shipped_lsst_model_has_a_float16_companion() -> None:
    path = resolve_model_path("atat-lsst")
    half = fp16_companion(path)
    assert half is not None and half == path.parent / "fp16" / path.name
    meta, half_meta = read_metadata(path), read_metadata(half)
    assert half_meta.precision == "fp16" and meta.precision == "fp32"
    assert (half_meta.name, half_meta.version, half_meta.labels) == (
        meta.name,
        meta.version,
        meta.labels,
    )


def test_auto_picks_float16_on_cuda_only() -> None:
    path = resolve_model_path("atat-lsst")
    assert select_precision(path, on_cuda=True) == fp16_companion(path)
    assert select_precision(path, on_cuda=False) == path
    assert select_precision(path, on_cuda=True, precision="fp32") == path
    assert select_precision(path, on_cuda=False, precision="fp16") == fp16_companion(path)


def test_fp16_without_a_companion_is_refused(tmp_path: Path) -> None:
    lone = tmp_path / "atat-lsst.onnx"
    shutil.copy(resolve_model_path("atat-lsst"), lone)
    assert select_precision(lone, on_cuda=True) == lone  # auto: fp32 when there is none
    with pytest.raises(ModelError, match="no .*fp16.*astroclf export"):
        select_precision(lone, on_cuda=False, precision="fp16")


def test_a_companion_of_another_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "fp16").mkdir()
    main = tmp_path / "atat-ztf.onnx"
    shutil.copy(resolve_model_path("atat-ztf"), main)
    shutil.copy(fp16_companion(resolve_model_path("atat-lsst")), tmp_path / "fp16" / main.name)
    with pytest.raises(ModelError, match="not the float16 form"):
        select_precision(main, on_cuda=True)


def test_float16_companion_agrees_with_float32_on_plasticc(shared_data: Path) -> None:
    """Within the export's float16 budget (|dp| <= 2e-2, >= 99 % same top class) on real
    PLAsTiCC light curves (a spread of 400 training-set objects)."""
    from astro_classifier.formats.plasticc import read_plasticc
    from astro_classifier.inference.classify import classify

    folder = shared_data / "lightcurves" / "plasticc"
    batch = read_plasticc(
        folder / "plasticc_train_lightcurves.csv.gz", folder / "plasticc_train_metadata.csv.gz"
    )
    batch = batch.select(np.linspace(0, len(batch) - 1, 400).astype(int))
    full = LoadedModel.load("atat-lsst", provider="cpu")
    half = LoadedModel.load("atat-lsst", provider="cpu", precision="fp16")
    assert half.metadata.precision == "fp16" and half.path != full.path
    columns = [f"prob_{label}" for label in full.metadata.labels]

    def probabilities(model: LoadedModel) -> np.ndarray:
        table = classify(batch, model).to_arrow()
        return np.stack([table.column(c).to_numpy() for c in columns], axis=1)

    a, b = probabilities(full), probabilities(half)
    assert len(a) == 400
    assert np.abs(a - b).max() <= 2e-2
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.99
    # the float16 graph really computes in float16
    types = {i.data_type for i in onnx.load(str(half.path)).graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types


def test_classify_command_takes_a_precision(tmp_path: Path) -> None:
    # the committed 42-object PLAsTiCC example: the float16 agreement is measured above
    folder = Path(__file__).resolve().parent.parent / "examples" / "plasticc"
    out = tmp_path / "out.parquet"
    args = ["classify", str(folder / "lightcurves.csv"), "--metadata"]
    args += [str(folder / "metadata.csv"), "--model", "atat-lsst"]
    runner = CliRunner(env={"COLUMNS": "240"})
    bad = runner.invoke(app, [*args, "--precision", "fp8", "-o", str(out)])
    assert bad.exit_code != 0 and "precision must be" in bad.output
    done = runner.invoke(app, [*args, "--precision", "fp16", "--provider", "cpu", "-o", str(out)])
    assert done.exit_code == 0, done.output
    assert "fp16" in done.output and out.is_file()


def test_auto_serves_float32_when_cuda_falls_back_to_the_cpu(monkeypatch) -> None:
    """CUDA asked for but not created (here: this onnxruntime has no CUDA provider, as on a
    host without a usable GPU): ONNX Runtime runs on the CPU, and so must the fp32 graph."""
    from astro_classifier.inference import model as model_module

    monkeypatch.setattr(
        model_module,
        "providers_for",
        lambda provider: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    loaded = LoadedModel.load("atat-lsst", provider="auto")
    assert loaded.providers[0] == "CPUExecutionProvider"
    assert loaded.metadata.precision == "fp32" and loaded.path == resolve_model_path("atat-lsst")
