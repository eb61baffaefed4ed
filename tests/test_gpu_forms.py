"""The GPU forms of a model, tested on the CPU: the dense (CUDA) companion graph, its
selection, the fixed-shape sessions CUDA graphs run on, and the CUDA parity script's
self-comparison.

The dense companion (``models/cuda/<name>.onnx``) is the shipped model traced with ATAT's
light-curve tokens in their one-hot form (``DENSE_FORM``) instead of gathering each band's
points (NonZero, ScatterND): the same numbers without data-dependent shapes. What needs a GPU
(the CUDA provider itself, CUDA graph capture, TF32) is measured by benchmarks/gpu_suite.sh on
the GPU machine only."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from astro_classifier.core.errors import ModelError
from astro_classifier.inference.model import (
    SHIPPED_MODELS_DIR,
    CudaGraphCalls,
    LoadedModel,
    cuda_companion,
    data_dependent_ops,
    fixed_shape_sessions,
    read_metadata,
    resolve_model_path,
    select_graph,
)

SHIPPED = ("atat-ztf", "atat-lsst")


def _random_inputs(rng, batch: int, length: int, n_features: int, n_bands: int = 6):
    from astro_classifier.features.preprocess import ModelInputs

    return ModelInputs(
        flux=rng.normal(size=(batch, length)).astype(np.float32),
        flux_err=rng.uniform(0.1, 1, (batch, length)).astype(np.float32),
        time=np.sort(rng.uniform(-30, 300, (batch, length)), axis=1).astype(np.float32),
        band=rng.integers(0, n_bands, (batch, length)),
        mask=rng.random((batch, length)) < 0.8,
        tabular=rng.normal(size=(batch, n_features)).astype(np.float32),
    )


def test_dense_tokens_equal_the_training_and_gathered_forms() -> None:
    torch = pytest.importorskip("torch")
    from astro_classifier.families.atat import ATAT, DENSE_FORM, ATATConfig

    torch.manual_seed(0)
    model = ATAT(ATATConfig(n_classes=5, n_bands=6, n_features=4)).eval()
    x = _random_inputs(np.random.default_rng(1), 9, 24, 4).as_dict()
    inputs = {k: torch.from_numpy(v) for k, v in x.items()}
    with torch.no_grad():
        training = model.forward_logits(**inputs)
        gathered = model.forward_logits(**inputs, export_form=True)
        dense = model.forward_logits(**inputs, export_form=DENSE_FORM)
        tokens = model.lc_tokens
        args = [inputs[k] for k in ("flux", "flux_err", "time", "band")]
        torch.testing.assert_close(tokens.dense(*args), tokens(*args), atol=1e-6, rtol=0)
    for head in training:
        torch.testing.assert_close(dense[head], training[head], atol=2e-5, rtol=0)
        torch.testing.assert_close(dense[head], gathered[head], atol=2e-5, rtol=0)


def test_a_model_traced_in_both_forms_gives_the_same_outputs(tmp_path: Path) -> None:
    """A small random ATAT traced in the gathered and the dense form (the writer's tracer):
    the same outputs on ONNX Runtime, and only the gathered graph holds NonZero/ScatterND."""
    torch = pytest.importorskip("torch")
    from astro_classifier.export.graph import ExportGraph
    from astro_classifier.export.writer import trace_to_onnx
    from astro_classifier.families.atat import ATAT, DENSE_FORM, ATATConfig
    from astro_classifier.families.registry import family_of

    torch.manual_seed(0)
    model = ATAT(ATATConfig(n_classes=4, n_bands=6, n_features=3, lc_layers=2)).eval()
    graph = ExportGraph(model, family_of("atat"), temperature=1.3).eval()
    example = _random_inputs(np.random.default_rng(0), 2, 8, 3).as_dict()
    sessions = {}
    for form in (True, DENSE_FORM):
        proto = trace_to_onnx(graph.traced(form), example, graph.output_names, graph.dynamic_axes())
        path = tmp_path / f"{form}.onnx"
        onnx.save(proto, str(path))
        sessions[form] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert data_dependent_ops(tmp_path / "True.onnx") == ["NonZero", "ScatterND"]
    assert data_dependent_ops(tmp_path / f"{DENSE_FORM}.onnx") == []
    rng = np.random.default_rng(2)
    for batch, length in [(5, 8), (17, 32), (3, 64)]:
        feeds = _random_inputs(rng, batch, length, 3).as_dict()
        gathered = sessions[True].run(None, feeds)
        dense = sessions[DENSE_FORM].run(None, feeds)
        for name, a, b in zip(graph.output_names, gathered, dense, strict=True):
            np.testing.assert_allclose(b, a, atol=2e-6, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_dense_companion_is_its_model_in_the_dense_form(name: str) -> None:
    main = resolve_model_path(name)
    dense = cuda_companion(main)
    assert dense == SHIPPED_MODELS_DIR / "cuda" / main.name
    a, b = read_metadata(main), read_metadata(dense)
    assert (b.graph_form, b.precision, a.graph_form) == ("dense", "fp32", None)
    same = ("name", "version", "labels", "calibration", "ood", "preprocessing", "outputs")
    for key in same:
        assert getattr(a, key) == getattr(b, key), key
    assert data_dependent_ops(dense) == []
    assert "NonZero" in data_dependent_ops(main)  # the CPU's faster gathered form


def _survey_inputs(name: str, shared_data: Path, limit: int):
    from astro_classifier.export.reexport import parity_inputs

    src = resolve_model_path(name)
    if name == "atat-ztf":
        return parity_inputs(src, sorted((shared_data / "alerts" / "ztf").rglob("*.avro")), limit)
    folder = shared_data / "lightcurves" / "plasticc"
    return parity_inputs(
        src,
        [folder / "plasticc_train_lightcurves.csv.gz"],
        limit,
        metadata=folder / "plasticc_train_metadata.csv.gz",
    )


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_dense_companion_agrees_with_its_model_on_real_light_curves(
    name: str, shared_data: Path
) -> None:
    """Every shared ZTF alert (atat-ztf) or a spread of 300 PLAsTiCC training light curves
    (atat-lsst): max |dp| <= 1e-5, the same top class, the same OOD score to 1e-5."""
    inputs = _survey_inputs(name, shared_data, 618 if name == "atat-ztf" else 300)
    main = LoadedModel.load(name, provider="cpu")
    dense = LoadedModel.load(name, provider="cpu", form="dense")
    assert dense.path == cuda_companion(main.path) and main.path == resolve_model_path(name)
    n = 0
    for x in inputs:
        a, b = main.predict(x), dense.predict(x)
        assert np.abs(a.probabilities - b.probabilities).max() <= 1e-5
        assert (a.probabilities.argmax(1) == b.probabilities.argmax(1)).all()
        scale = max(1.0, float(np.abs(a.ood).max()))
        assert np.abs(a.ood - b.ood).max() <= 1e-5 * scale
        n += len(x)
    assert n >= 300


def test_selection_of_the_dense_form(tmp_path: Path) -> None:
    main = resolve_model_path("atat-ztf")
    dense = cuda_companion(main)
    assert select_graph(main, on_cuda=False) == main
    assert select_graph(main, on_cuda=False, form="dense") == dense
    assert select_graph(main, on_cuda=True, precision="fp32") == dense
    assert select_graph(main, on_cuda=True, precision="fp32", form="gather") == main
    # no companion: auto serves the main file, dense is refused
    lone = tmp_path / "atat-ztf.onnx"
    lone.write_bytes(main.read_bytes())
    assert select_graph(lone, on_cuda=True, precision="fp32") == lone
    with pytest.raises(ModelError, match="dense graph form asked for"):
        select_graph(lone, on_cuda=True, form="dense")
    # a companion of another model is refused
    (tmp_path / "cuda").mkdir()
    (tmp_path / "cuda" / lone.name).write_bytes(
        cuda_companion(resolve_model_path("atat-lsst")).read_bytes()
    )
    with pytest.raises(ModelError, match="not the dense"):
        select_graph(lone, on_cuda=True, precision="fp32")


def test_cuda_graph_is_refused_without_cuda() -> None:
    with pytest.raises(ModelError, match="needs the CUDA provider"):
        LoadedModel.load("atat-ztf", provider="cpu", cuda_graph=True)


def test_fixed_shape_sessions_match_session_run() -> None:
    """What CUDA graphs run on, without the capture: one session per call shape with both
    free dimensions fixed, the batch padded to a power of two, buffers bound once, all
    outputs fetched in one copy."""
    plain = LoadedModel.load("atat-ztf", provider="cpu", form="dense")
    calls = CudaGraphCalls(fixed_shape_sessions(plain.path, 1, ["CPUExecutionProvider"]), "cpu")
    rng = np.random.default_rng(0)
    n_features = len(plain.metadata.feature_names)
    names = ["probabilities", "logits", "ood"]
    kept = []
    for batch, length in [(4, 16), (6, 32), (4, 16), (4, 16)]:
        x = _random_inputs(rng, batch, length, n_features, 2)
        expected = plain.session.run(names, plain.feeds(x))
        got = calls.run(names, plain.feeds(x))
        for a, b in zip(expected, got, strict=True):
            assert a.shape == b.shape
            np.testing.assert_allclose(b, a, atol=1e-6, rtol=1e-6)
        kept.append((got[0].copy(), got[0]))
    assert len(calls._calls) == 2  # batches padded to 32: (32, 16) and (32, 32)
    assert calls.padded_batch(33) == 64 and calls.padded_batch(4096) == 4096
    for copy, returned in kept:  # later calls do not overwrite what earlier ones returned
        np.testing.assert_array_equal(copy, returned)


def test_fixed_dimensions_fold_every_shape_computation(tmp_path: Path) -> None:
    """With batch and length fixed, ONNX Runtime folds the dense graph's shape computations
    into constants: no Shape node is left for the CPU (CUDA graphs allow shape nodes on the
    host only without copies), and no data-dependent operator."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.add_free_dimension_override_by_name("batch", 64)
    options.add_free_dimension_override_by_name("length", 32)
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    dense = cuda_companion(resolve_model_path("atat-ztf"))
    ort.InferenceSession(str(dense), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(
        n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node
    )
    assert not {"Shape", "NonZero", "ScatterND", "ConstantOfShape"} & set(ops), ops


def test_cuda_parity_script_skips_without_cuda_and_compares_cpu_with_itself(
    tmp_path: Path, shared_data: Path
) -> None:
    from benchmarks import cuda_parity

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert cuda_parity.main(["--out", str(tmp_path / "skip.json")]) == 0
        assert json.loads((tmp_path / "skip.json").read_text())["skipped"]
    out = tmp_path / "self.json"
    code = cuda_parity.main(
        ["--provider", "cpu", "--objects", "120", "--forms", "fp32", "dense", "--out", str(out)]
    )
    result = json.loads(out.read_text())
    assert code == 0, result
    for entry in result["comparisons"]:
        assert entry["max_abs_dp"] == 0 or entry["form"] == "dense"
        assert entry["max_abs_dp"] <= 1e-5 and entry["same_top_class"] == 1.0


@pytest.mark.slow  # trains a tiny run (atat_tiny_run) and exports it twice
def test_a_run_exported_in_both_forms_classifies_the_same(atat_tiny_run, tmp_path: Path) -> None:
    """`export_run` in the default (gathered) and the dense form: each passes the export's
    parity check, the dense file says so in its metadata and holds no data-dependent
    operator, and both classify the committed PLAsTiCC example the same."""
    from astro_classifier.export.onnx_export import export_run
    from astro_classifier.families.atat import DENSE_FORM
    from astro_classifier.formats.plasticc import read_plasticc
    from astro_classifier.inference.classify import classify

    result, run_dir = atat_tiny_run
    assert result.exit_code == 0, result.output
    gathered, dense = tmp_path / "tiny.onnx", tmp_path / "cuda" / "tiny.onnx"
    for out, form in ((gathered, True), (dense, DENSE_FORM)):
        report = export_run(run_dir, out, parity_objects=64, form=form)
        assert report.ok
    assert read_metadata(gathered).graph_form is None
    assert read_metadata(dense).graph_form == "dense"
    assert data_dependent_ops(dense) == [] and "NonZero" in data_dependent_ops(gathered)
    assert select_graph(gathered, on_cuda=True) == dense
    folder = Path(__file__).resolve().parent.parent / "examples" / "plasticc"
    batch = read_plasticc(folder / "lightcurves.csv", folder / "metadata.csv")
    a = classify(batch, LoadedModel.load(gathered, provider="cpu"))
    b = classify(batch, LoadedModel.load(dense, provider="cpu", form="dense"))
    assert len(a.rows) == len(batch)
    assert np.abs(a.probabilities - b.probabilities).max() <= 1e-5
    assert (a.probabilities.argmax(1) == b.probabilities.argmax(1)).all()


def test_astroclf_export_form_dense_writes_a_sync_free_graph(
    shared_data: Path, tmp_path: Path
) -> None:
    """`astroclf export MODEL.onnx --form dense` re-exports a shipped model as its CUDA
    companion: no NonZero/ScatterND, marked dense, parity-checked against the source."""
    pytest.importorskip("torch")
    from typer.testing import CliRunner

    from astro_classifier.cli.app import app
    from astro_classifier.inference.model import read_metadata, resolve_model_path

    alert = sorted((shared_data / "alerts" / "ztf" / "fink-v3.3").glob("*.avro"))[0]
    out = tmp_path / "dense.onnx"
    args = ["export", str(resolve_model_path("atat-ztf")), "-o", str(out), "--form", "dense"]
    result = CliRunner().invoke(app, [*args, "--parity-data", str(alert)])
    assert result.exit_code == 0, result.output
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert not ops & {"NonZero", "ScatterND"}
    assert read_metadata(out).graph_form == "dense"
    bad = CliRunner().invoke(app, [*args, "--form", "sparse", "--parity-data", str(alert)])
    assert bad.exit_code != 0 and "dense" in bad.output
