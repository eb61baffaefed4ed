"""Float16 companions: which file serving picks (fp16 on CUDA, fp32 on a CPU), that a
companion must be its model's float16 form, and that an exported companion agrees with its
float32 model on real PLAsTiCC light curves.

Both shipped models have a float16 companion (``models/fp16/``, re-exports written after
their parity checks; before the float16 conversion stopped sending raw feature values through
float16 round-trip casts, both missed the budget). The companion tests also export a real pair
from a tiny ATAT trained here (the tests that use it are slow)."""

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
    SHIPPED_MODELS_DIR,
    LoadedModel,
    fp16_companion,
    read_metadata,
    resolve_model_path,
    select_precision,
)


@pytest.fixture(scope="module")
def tiny_pair(shared_data: Path, tmp_path_factory) -> Path:
    """A tiny ATAT trained on 300 real PLAsTiCC objects for 2 epochs, exported as
    ``atat-tiny.onnx`` with its companion ``fp16/atat-tiny.onnx`` (both through ``astroclf
    export``, each after its parity check). Needs torch."""
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("pair")
    run_dir, main = folder / "run", folder / "atat-tiny.onnx"
    runner = CliRunner(env={"COLUMNS": "240", "ASTROCLF_SHARED_DATA": str(shared_data)})
    threads = torch.get_num_threads()  # training.num_threads sets it for the whole process
    try:
        quick = ["training.epochs=2", "data.max_objects=300", "training.num_threads=1"]
        overrides = [arg for item in quick for arg in ("--set", item)]
        config = Path(__file__).resolve().parent.parent / "configs" / "atat_tiny.yaml"
        result = runner.invoke(app, ["train", str(config), "-o", str(run_dir), *overrides])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    (folder / "fp16").mkdir()
    for args in (["-o", str(main)], ["-o", str(folder / "fp16" / main.name), "--fp16"]):
        result = runner.invoke(app, ["export", str(run_dir), *args])
        assert result.exit_code == 0, result.output
    return main


def test_shipped_companions_are_their_models_float16_form() -> None:
    """A companion left beside a retrained model would be served on CUDA in its place."""
    for path in sorted(SHIPPED_MODELS_DIR.glob("*.onnx")):
        half = fp16_companion(path)
        if half is None:
            continue
        meta, half_meta = read_metadata(path), read_metadata(half)
        assert half_meta.precision == "fp16" and meta.precision == "fp32"
        assert (half_meta.name, half_meta.version, half_meta.labels) == (
            meta.name,
            meta.version,
            meta.labels,
        )


@pytest.mark.parametrize("name", ["atat-ztf", "atat-lsst"])
def test_shipped_float16_companion_agrees_on_real_light_curves(
    name: str, shared_data: Path
) -> None:
    """Within the float16 budget (|dp| <= 2e-2, >= 99 % the same top class) on every shared
    ZTF alert (atat-ztf) or a spread of 300 PLAsTiCC training light curves (atat-lsst)."""
    from astro_classifier.export.reexport import parity_inputs

    src = resolve_model_path(name)
    assert fp16_companion(src) is not None
    if name == "atat-ztf":
        inputs = parity_inputs(src, sorted((shared_data / "alerts" / "ztf").rglob("*.avro")), 618)
    else:
        folder = shared_data / "lightcurves" / "plasticc"
        inputs = parity_inputs(
            src,
            [folder / "plasticc_train_lightcurves.csv.gz"],
            300,
            metadata=folder / "plasticc_train_metadata.csv.gz",
        )
    full = LoadedModel.load(name, provider="cpu")
    half = LoadedModel.load(name, provider="cpu", precision="fp16")
    assert half.path == fp16_companion(src)
    worst, same, n = 0.0, 0, 0
    for x in inputs:
        a, b = full.predict(x).probabilities, half.predict(x).probabilities
        worst = max(worst, float(np.abs(a - b).max()))
        same, n = same + int((a.argmax(1) == b.argmax(1)).sum()), n + len(x)
    assert 0 < worst <= 2e-2 and same >= 0.99 * n


@pytest.mark.slow  # trains and exports (tiny_pair)
def test_an_exported_companion_is_found_beside_its_model(tiny_pair: Path) -> None:
    half = fp16_companion(tiny_pair)
    assert half == tiny_pair.parent / "fp16" / tiny_pair.name
    meta, half_meta = read_metadata(tiny_pair), read_metadata(half)
    assert (half_meta.precision, meta.precision) == ("fp16", "fp32")
    assert (half_meta.name, half_meta.version) == (meta.name, meta.version)


@pytest.mark.slow  # trains and exports (tiny_pair)
def test_auto_picks_float16_on_cuda_only(tiny_pair: Path) -> None:
    path = tiny_pair
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


@pytest.mark.slow  # trains and exports (tiny_pair)
def test_a_companion_of_another_model_is_refused(tiny_pair: Path, tmp_path: Path) -> None:
    (tmp_path / "fp16").mkdir()
    main = tmp_path / "atat-ztf.onnx"
    shutil.copy(resolve_model_path("atat-ztf"), main)
    shutil.copy(fp16_companion(tiny_pair), tmp_path / "fp16" / main.name)
    with pytest.raises(ModelError, match="not the float16 form"):
        select_precision(main, on_cuda=True)


@pytest.mark.slow  # trains and exports (tiny_pair)
def test_float16_companion_agrees_with_float32_on_plasticc(
    tiny_pair: Path, shared_data: Path
) -> None:
    """Within the export's float16 budget (|dp| <= 2e-2) on real PLAsTiCC light curves (a
    spread of 400 training-set objects). The tiny model's classes are near-ties, so the top
    class is not compared here; the export's own parity check covers it for real models."""
    from astro_classifier.formats.plasticc import read_plasticc
    from astro_classifier.inference.classify import classify

    folder = shared_data / "lightcurves" / "plasticc"
    batch = read_plasticc(
        folder / "plasticc_train_lightcurves.csv.gz", folder / "plasticc_train_metadata.csv.gz"
    )
    batch = batch.select(np.linspace(0, len(batch) - 1, 400).astype(int))
    full = LoadedModel.load(tiny_pair, provider="cpu")
    half = LoadedModel.load(tiny_pair, provider="cpu", precision="fp16")
    assert half.metadata.precision == "fp16" and half.path != full.path

    a = classify(batch, full).probabilities
    b = classify(batch, half).probabilities
    assert len(a) == 400
    assert np.abs(a - b).max() <= 2e-2
    assert np.abs(a - b).max() > 0  # a different graph, not the float32 file again
    # the float16 graph really computes in float16
    types = {i.data_type for i in onnx.load(str(half.path)).graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types


@pytest.mark.slow  # trains and exports (tiny_pair)
def test_classify_command_takes_a_precision(tiny_pair: Path, tmp_path: Path) -> None:
    # the committed 42-object PLAsTiCC example: the float16 agreement is measured above
    folder = Path(__file__).resolve().parent.parent / "examples" / "plasticc"
    out = tmp_path / "out.parquet"
    args = ["classify", str(folder / "lightcurves.csv"), "--metadata"]
    args += [str(folder / "metadata.csv"), "--model", str(tiny_pair)]
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
