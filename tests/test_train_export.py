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

from astro_classifier.core.lightcurve import LightCurveBatch  # noqa: E402
from astro_classifier.core.taxonomy import BROAD_CLASSES, broad_mapping  # noqa: E402
from astro_classifier.evaluation.metrics import (  # noqa: E402
    expected_calibration_error,
    negative_log_likelihood,
)
from astro_classifier.export import parity  # noqa: E402
from astro_classifier.export.calibration import softmax  # noqa: E402
from astro_classifier.export.graph import ExportGraph  # noqa: E402
from astro_classifier.export.onnx_export import export_run, validation_calls  # noqa: E402
from astro_classifier.export.parity import ParityError, ParityReport  # noqa: E402
from astro_classifier.families.registry import ATAT_FAMILY  # noqa: E402
from astro_classifier.features.preprocess import ModelInputs, light_curves_to_inputs  # noqa: E402
from astro_classifier.inference.classify import (  # noqa: E402
    ABSTAIN_FEW_POINTS,
    ABSTAIN_OOD,
    classify,
)
from astro_classifier.inference.model import (  # noqa: E402
    LoadedModel,
    default_length_buckets,
    energy_score,
    read_metadata,
)
from astro_classifier.training.config import TrainConfig  # noqa: E402
from astro_classifier.training.dataset import TrainingDataset  # noqa: E402
from astro_classifier.training.record import load_run  # noqa: E402
from astro_classifier.training.train import train  # noqa: E402

pytestmark = pytest.mark.slow

TINY_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "atat_tiny.yaml"
QUICK = ["training.epochs=2", "data.max_objects=300", "training.num_threads=1"]
RUN_FILES = ("config.yaml", "run.json", "weights.pt", "metrics.json", "confusion_matrix.png",
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
def exported(run, tmp_path_factory) -> tuple[Path, ParityReport]:
    out = tmp_path_factory.mktemp("export") / "atat-tiny.onnx"
    return out, export_run(run[0], out)


# -- training ----------------------------------------------------------------------------


def test_run_directory_holds_config_record_weights_metrics_and_plots(run, config) -> None:
    run_dir, metrics = run
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "checkpoint.pt").exists()  # the weights are written once
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


def test_run_record_describes_the_model(run, config) -> None:
    model, record = load_run(run[0])
    assert record.model_name == "atat_tiny" and record.objective == "classify"
    assert record.labels == sorted(record.labels) and len(record.labels) == 14
    assert record.spec == config.preprocessing and record.export == config.export
    assert record.architecture == {**record.architecture, "n_classes": 14, "d_model": 16}
    assert model.cfg.n_features == len(config.preprocessing.feature_names)
    assert not model.training
    assert record.metrics["holdout"] == json.loads((run[0] / "metrics.json").read_text())["holdout"]
    held = set(record.split.validation) | set(record.split.holdout)
    ds = TrainingDataset.load(run[0] / "dataset.h5")
    assert not {ds.batch.object_id[i] for i in record.split.holdout} & set(record.seen_object_ids)
    assert len(held) == len(record.split.validation) + len(record.split.holdout)
    state = torch.load(run[0] / "weights.pt", weights_only=True)  # a plain state_dict
    assert state.keys() == model.state_dict().keys()


def test_same_seed_gives_identical_metrics(run, config, tmp_path: Path) -> None:
    run_dir, metrics = run
    again = _train(config, tmp_path / "again")
    strip = lambda m: {k: v for k, v in m.items() if k != "train_seconds"}  # noqa: E731
    assert strip(again) == strip(metrics)
    first = torch.load(run_dir / "weights.pt", weights_only=True)
    second = torch.load(tmp_path / "again" / "weights.pt", weights_only=True)
    for key, value in first.items():
        torch.testing.assert_close(second[key], value, atol=0, rtol=0, msg=key)


# -- export ------------------------------------------------------------------------------


def test_export_agrees_with_torch(exported, run) -> None:
    out, report = exported
    assert out.is_file()
    _, record = load_run(run[0])
    assert report.n_objects == len(record.split.validation) > 0
    assert report.max_abs_diff <= 1e-4
    assert report.top_class_agreement == 1.0


def test_exported_model_passes_the_onnx_checker(exported) -> None:
    onnx.checker.check_model(str(exported[0]), full_check=True)


def test_fp32_graph_uses_the_fused_attention_kernel(exported, run, tmp_path: Path) -> None:
    """Each encoder layer's attention but the last is one MultiHeadAttention node; the
    last layer (CLS query alone) scores in the input space: one Softmax over (B, T, H) per
    encoder, no (B, H, T, T) one anywhere. The fp16 graph keeps the decomposed ops."""
    graph = onnx.load(str(exported[0])).graph
    ops = [n.op_type for n in graph.node]
    layers = read_metadata(exported[0]).architecture_config
    assert ops.count("MultiHeadAttention") == layers["lc_layers"] + layers["tab_layers"] - 2
    softmax = [n.name for n in graph.node if n.op_type == "Softmax"]
    last = {
        f"/{enc}/blocks.{layers[key] - 1}/attn/Softmax"
        for enc, key in (("lc_encoder", "lc_layers"), ("tab_encoder", "tab_layers"))
    }
    assert last <= set(softmax)
    assert len(softmax) == 3  # the two last layers and the calibrated output
    fp16 = tmp_path / "fp16.onnx"
    export_run(run[0], fp16, fp16=True)
    assert "MultiHeadAttention" not in [n.op_type for n in onnx.load(str(fp16)).graph.node]


def test_exported_metadata(exported, run, config) -> None:
    out, _ = exported
    meta = read_metadata(out)
    _, record = load_run(run[0])
    assert meta.name == config.export.name and meta.version == config.export.version
    assert meta.architecture == "atat_tiny"
    assert meta.labels == record.labels
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
    names = ["probabilities", "logits", "embedding", "ood"]
    assert [o.name for o in session.get_outputs()] == names
    width = 2 * meta.architecture_config["d_model"]  # light-curve and tabular CLS outputs
    shapes = [["batch", len(meta.labels)], ["batch", len(meta.labels)], ["batch", width], ["batch"]]
    assert [o.shape for o in session.get_outputs()] == shapes
    assert [o.name for o in meta.outputs] == names
    assert [o.shape for o in meta.outputs] == [
        ["batch", "classes"], ["batch", "classes"], ["batch", "embedding"], ["batch"]
    ]  # fmt: skip


def test_dynamic_batch_and_length_axes(exported, run) -> None:
    out, _ = exported
    loaded = LoadedModel.load(out, provider="cpu")
    model = ExportGraph(load_run(run[0])[0], ATAT_FAMILY, loaded.metadata.calibration.temperature)
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
            proba, logits, _ = model(*(torch.from_numpy(v) for v in inputs.as_dict().values()))
        np.testing.assert_allclose(got.probabilities, proba.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got.logits, logits.numpy(), atol=1e-3, rtol=0)
        natural_got = loaded.predict(natural)
        np.testing.assert_allclose(got.probabilities, natural_got.probabilities, atol=1e-5, rtol=0)
        np.testing.assert_allclose(got.logits, natural_got.logits, atol=1e-4, rtol=0)
        shapes.append(inputs.flux.shape)
    (b1, n1), (b2, n2) = shapes
    assert b1 != b2 and n1 != n2  # two batch sizes, two lengths, one session


@pytest.mark.filterwarnings("ignore:the float32 number:UserWarning")  # fp16 range clipping
def test_fp16_export(run, exported, tmp_path: Path) -> None:
    out = tmp_path / "atat-tiny-fp16.onnx"
    report = export_run(run[0], out, fp16=True)
    assert out.is_file()
    meta = read_metadata(out)
    assert meta.precision == "fp16"
    assert report.max_abs_diff <= parity.FP16_TOLERANCE
    assert 0 <= report.max_logit_diff <= parity.FP16_LOGIT_TOLERANCE
    assert meta.calibration is not None and meta.ood is not None
    assert meta.ood == read_metadata(exported[0]).ood  # the same Gaussians and threshold
    assert report.max_embedding_diff <= parity.FP16_EMBEDDING_TOLERANCE
    assert report.max_ood_diff <= parity.FP16_OOD_TOLERANCE
    loaded = LoadedModel.load(out, provider="cpu")
    assert loaded.has_logits and loaded.ood_in_graph


def test_parity_failure_raises_and_writes_nothing(
    run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A negative limit: any difference fails, even an exact 0.0 agreement.
    monkeypatch.setattr(parity, "FP32_TOLERANCE", -1.0)
    out = tmp_path / "models" / "atat-tiny.onnx"
    with pytest.raises(ParityError, match="not written"):
        export_run(run[0], out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


# -- calibration and abstention ----------------------------------------------------------


@pytest.fixture(scope="module")
def validation_outputs(exported, run) -> dict:
    """ONNX outputs of the exported tiny model on every validation object (whole curves)."""
    loaded = LoadedModel.load(exported[0], provider="cpu")
    _, record = load_run(run[0])
    calls, y = validation_calls(run[0], record, loaded.metadata.preprocessing, batch_size=64)
    proba = np.empty((len(y), len(loaded.metadata.labels)), np.float32)
    logits = np.empty_like(proba)
    ood = np.empty(len(y), np.float32)
    for index, x in calls:
        got = loaded.predict(x)
        proba[index], logits[index], ood[index] = got.probabilities, got.logits, got.ood
    return {"loaded": loaded, "y": y, "proba": proba, "logits": logits, "ood": ood}


def test_export_parity_covers_every_output(exported) -> None:
    _, report = exported
    assert 0 <= report.max_logit_diff <= parity.FP32_LOGIT_TOLERANCE
    assert 0 <= report.max_embedding_diff <= parity.FP32_EMBEDDING_TOLERANCE
    assert 0 <= report.max_ood_diff <= parity.FP32_OOD_TOLERANCE
    assert report.calibration is not None and report.ood is not None
    assert "calibration: temperature" in str(report)
    assert "|Δembedding|" in str(report) and "|Δood|" in str(report)


def test_exported_calibration_and_ood_metadata(exported, run) -> None:
    meta = read_metadata(exported[0])
    _, record = load_run(run[0])
    assert meta.broad_classes == broad_mapping(record.labels)
    c = meta.calibration
    assert c is not None and 0.05 <= c.temperature <= 20
    assert c.n_objects == len(record.split.validation)
    assert "validation" in c.fitted_on
    assert c.nll_after <= c.nll_before
    assert 0 <= c.ece_after <= 1 and 0 <= c.ece_before <= 1
    o = meta.ood
    assert o is not None and o.score == "mahalanobis_energy"
    assert o.quantile == 0.95 and o.min_points == 3
    assert np.isfinite(o.threshold)
    assert o.fitted_on.startswith("training split of run run: ")


def test_calibrated_probabilities_lower_validation_nll(exported, validation_outputs) -> None:
    meta = read_metadata(exported[0])
    y, proba, logits = (validation_outputs[k] for k in ("y", "proba", "logits"))
    # probabilities = softmax(logits / T), T from the metadata
    np.testing.assert_allclose(proba, softmax(logits, meta.calibration.temperature), atol=1e-5)
    raw = softmax(logits)
    assert negative_log_likelihood(proba, y) <= negative_log_likelihood(raw, y) + 1e-6
    np.testing.assert_allclose(
        negative_log_likelihood(proba, y), meta.calibration.nll_after, atol=1e-3
    )
    np.testing.assert_allclose(
        expected_calibration_error(proba, y), meta.calibration.ece_after, atol=1e-3
    )


def test_ood_threshold_is_the_validation_quantile(exported, validation_outputs) -> None:
    meta = read_metadata(exported[0])
    scores = validation_outputs["ood"].astype(np.float64)
    share_above = float((scores > meta.ood.threshold).mean())
    assert share_above <= 0.05 + 1.0 / len(scores)
    np.testing.assert_allclose(meta.ood.threshold, np.quantile(scores, 0.95), atol=1e-3)


def test_graph_ood_is_the_gaussian_score_of_the_embedding(exported, run) -> None:
    """The ``ood`` output is mahalanobis_energy of the graph's own embedding and logits, with
    Gaussians fitted on the run's training split (refitted here from torch embeddings)."""
    from astro_classifier.export.gaussian_ood import (
        fit_gaussians,
        gaussian_score,
        with_standardisation,
    )
    from astro_classifier.export.onnx_export import (
        split_outputs,
        training_calls,
        training_index,
    )

    model, record = load_run(run[0])
    graph = ExportGraph(model, ATAT_FAMILY)
    spec = read_metadata(exported[0]).preprocessing
    rows = training_index(TrainingDataset.load(run[0] / "dataset.h5"), record)
    held_out = np.concatenate([record.split.validation, record.split.holdout])
    assert len(rows) == run[1]["n_train"] and not np.isin(rows, held_out).any()
    train_calls, train_y = training_calls(run[0], record, spec)
    assert len(train_y) == len(rows)
    feeds = [(index, x.as_dict()) for index, x in train_calls]
    embeddings, _ = split_outputs(graph, feeds, len(train_y))
    val_calls, y = validation_calls(run[0], record, spec, batch_size=64)
    feeds = [(index, x.as_dict()) for index, x in val_calls]
    val_embeddings, val_logits = split_outputs(graph, feeds, len(y))
    tables = with_standardisation(
        fit_gaussians(embeddings, train_y, len(record.labels)), val_embeddings, val_logits
    )
    session = LoadedModel.load(exported[0], provider="cpu").session
    for _, x in val_calls[:3]:
        embedding, logits, ood = session.run(["embedding", "logits", "ood"], x.as_dict())
        expected = gaussian_score(tables, embedding, "mahalanobis_energy", logits=logits)
        np.testing.assert_allclose(ood, expected, rtol=1e-3, atol=1e-3)


def test_flux_times_1000_scores_above_the_threshold(exported, run) -> None:
    """Validation objects with every flux and error x1000 (brighter than anything trained
    on) abstain on the OOD score far more often than the validation objects themselves (5 %
    by construction). (Pure noise is no shift here: most PLAsTiCC points are noise-level.)"""
    loaded = LoadedModel.load(exported[0], provider="cpu")
    ds = TrainingDataset.load(run[0] / "dataset.h5")
    _, record = load_run(run[0])
    batch = ds.batch.select(np.asarray(record.split.validation))
    threshold = loaded.metadata.ood.threshold

    def share_above(b: LightCurveBatch) -> float:
        ood = classify(b, loaded, n_jobs=1).to_arrow().column("ood_score").to_numpy()
        return float((ood > threshold).mean())

    shifted = batch.select(np.arange(len(batch)))
    shifted.flux, shifted.flux_err = batch.flux * 1000.0, batch.flux_err * 1000.0
    normal = share_above(batch)
    assert normal <= 0.1
    assert share_above(shifted) >= max(0.5, 3 * normal)


def test_file_without_embedding_serves_the_energy_score(exported, tmp_path, run) -> None:
    """A file as exported before the Gaussians (outputs probabilities and logits, energy rule)
    loads and serves ``ood_score`` = energy; a file whose metadata asks for the graph score
    but lacks the ``ood`` output is refused."""
    from astro_classifier.core.errors import ModelError
    from astro_classifier.inference.model import OODSpec

    def strip(keep: list[str], ood: OODSpec, path: Path) -> Path:
        proto = onnx.load(str(exported[0]))
        outputs = [o for o in proto.graph.output if o.name in keep]
        del proto.graph.output[:]
        proto.graph.output.extend(outputs)
        for prop in proto.metadata_props:
            if prop.key == "astroclf.ood":
                prop.value = json.dumps(ood.model_dump(mode="json"))
        onnx.save(proto, str(path))
        return path

    energy = OODSpec(score="energy", threshold=-1.0, quantile=0.95)
    old = LoadedModel.load(
        strip(["probabilities", "logits"], energy, tmp_path / "old.onnx"), provider="cpu"
    )
    assert old.ood_spec().score == "energy" and not old.ood_in_graph
    assert [o.name for o in old.session.get_outputs()] == ["probabilities", "logits"]
    new = LoadedModel.load(exported[0], provider="cpu")
    _, record = load_run(run[0])
    calls, _ = validation_calls(run[0], record, old.metadata.preprocessing, limit=40)
    for _, x in calls:
        got, expected = old.predict(x), new.predict(x)
        assert got.ood is None and expected.ood is not None
        np.testing.assert_array_equal(got.probabilities, expected.probabilities)
        np.testing.assert_allclose(old.ood_scores(got), energy_score(got.logits), rtol=1e-12)
    ds = TrainingDataset.load(run[0] / "dataset.h5")
    batch = ds.batch.select(np.arange(20))
    table = classify(batch, old, n_jobs=1).to_arrow()
    ood = table.column("ood_score").to_numpy()
    abstain = table.column("abstain").to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(abstain, (ood > -1.0) | (batch.lengths < 3))
    graph_rule = read_metadata(exported[0]).ood
    with pytest.raises(ModelError, match="no 'ood' output"):
        LoadedModel.load(
            strip(["probabilities", "logits", "embedding"], graph_rule, tmp_path / "bad.onnx"),
            provider="cpu",
        )


def test_tiny_model_classifies_with_scores_and_abstains(exported, run) -> None:
    loaded = LoadedModel.load(exported[0], provider="cpu")
    ds = TrainingDataset.load(run[0] / "dataset.h5")  # its batch holds the model's bands only
    _, record = load_run(run[0])
    batch = ds.batch.select(np.asarray(record.split.validation))
    # the first object cut to 2 points: abstains whatever the model says
    short = batch.select([0])
    short = short.select_points(np.arange(short.lengths[0]) < 2)
    batch = LightCurveBatch.concat([batch, short])
    result = classify(batch, loaded, n_jobs=1)
    table = result.to_arrow()
    assert table.num_rows == len(batch)
    ood = table.column("ood_score").to_numpy()
    assert ood.dtype == np.float32 and np.isfinite(ood).all()
    threshold = loaded.metadata.ood.threshold
    expected = (ood > threshold) | (batch.lengths < 3)
    abstain = table.column("abstain").to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(abstain, expected)
    assert abstain[-1]
    assert result.abstained[ABSTAIN_OOD] == int((ood > threshold).sum())
    assert result.abstained[ABSTAIN_FEW_POINTS] == int((batch.lengths < 3).sum()) >= 1
    broad = np.stack([table.column(f"prob_{k}").to_numpy() for k in BROAD_CLASSES], axis=1)
    np.testing.assert_allclose(broad.sum(axis=1), 1.0, atol=1e-5)


def test_warm_start_reads_every_served_weight_from_the_graph(exported, run) -> None:
    """An exported file alone gives back the network's weights (the calibration wrapper's
    prefix and temperature aside): all but the two heads serving never computes."""
    from astro_classifier.families.registry import create_model
    from astro_classifier.training.warm_start import load_onnx_weights

    trained, _ = load_run(run[0])
    meta = read_metadata(exported[0])
    fresh_model = create_model(meta.architecture, **meta.architecture_config)
    fresh = load_onnx_weights(fresh_model, exported[0])
    assert fresh and all(k.startswith(("lc_head.", "tab_head.")) for k in fresh)
    want = trained.state_dict()
    for key, value in fresh_model.state_dict().items():
        if key not in fresh:
            torch.testing.assert_close(value, want[key], atol=0, rtol=0, msg=key)


@pytest.fixture(scope="module")
def parity_inputs(exported, run) -> list[ModelInputs]:
    """The run's validation light curves in serving buckets (the re-export's parity data)."""
    from astro_classifier.export.onnx_export import validation_inputs

    record = load_run(run[0])[1]
    return validation_inputs(run[0], record, read_metadata(exported[0]).preprocessing, 512)


def test_reexport_from_the_onnx_file_keeps_outputs_and_metadata(
    exported, parity_inputs, tmp_path
) -> None:
    """`astroclf export MODEL.onnx` traces the file's weights again in the current graph
    form; the written file matches the old one on real light curves and carries its metadata."""
    from astro_classifier.export.reexport import reexport_onnx

    out = tmp_path / "again.onnx"
    report = reexport_onnx(exported[0], out, parity_inputs)
    assert report.ok and report.top_class_agreement == 1.0
    assert report.previous_graph_max_diff is not None and report.previous_graph_max_diff <= 1e-5
    old, new = read_metadata(exported[0]), read_metadata(out)
    assert new.labels == old.labels and new.calibration == old.calibration and new.ood == old.ood
    assert new.preprocessing == old.preprocessing and new.name == old.name
    assert [o.name for o in new.outputs] == ["probabilities", "logits", "embedding", "ood"]
    a, b = LoadedModel.load(exported[0]), LoadedModel.load(out)
    for x in parity_inputs:
        got, expected = b.predict(x), a.predict(x)
        np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=1e-5, rtol=0)
        np.testing.assert_allclose(got.ood, expected.ood, atol=1e-4, rtol=1e-5)


def test_reexport_refuses_without_data_and_from_a_float16_file(run, exported, tmp_path) -> None:
    from astro_classifier.core.errors import ModelError
    from astro_classifier.export.reexport import reexport_onnx

    with pytest.raises(ModelError, match="no light curves"):
        reexport_onnx(exported[0], tmp_path / "x.onnx", [])
    half = tmp_path / "half.onnx"
    export_run(run[0], half, fp16=True)
    with pytest.raises(ModelError, match="fp16 model; re-export its fp32 file"):
        reexport_onnx(half, tmp_path / "x.onnx", [])
    assert not (tmp_path / "x.onnx").exists()


def test_export_command_reexports_a_shipped_model(shared_data: Path, tmp_path: Path) -> None:
    """`astroclf export atat-ztf.onnx --parity-data ...` on real ZTF light curves; without
    parity data it refuses with a clear message and writes nothing."""
    from typer.testing import CliRunner

    from astro_classifier.cli.app import app
    from astro_classifier.inference.model import resolve_model_path

    src = resolve_model_path("atat-ztf")
    out = tmp_path / "atat-ztf.onnx"
    runner = CliRunner(env={"COLUMNS": "240"})
    refused = runner.invoke(app, ["export", str(src), "-o", str(out)])
    assert refused.exit_code != 0 and "--parity-data" in refused.output and not out.exists()
    examples = shared_data / "lightcurves" / "alerce-examples"
    done = runner.invoke(
        app,
        [
            "export",
            str(src),
            "-o",
            str(out),
            "--parity-data",
            str(examples),
            "--parity-objects",
            "64",
        ],
    )
    assert done.exit_code == 0, done.output
    assert "against the previous graph" in done.output and out.is_file()
    assert read_metadata(out).labels == read_metadata(src).labels


def test_reexport_writes_a_float16_companion(exported, parity_inputs, tmp_path) -> None:
    """--fp16 on an .onnx file: float16 weights, precision fp16 in the metadata, parity within
    the float16 budget, and serving picks it up as the companion under fp16/."""
    from astro_classifier.export.reexport import reexport_onnx
    from astro_classifier.inference.model import select_precision

    main = tmp_path / "atat-tiny.onnx"
    main.write_bytes(exported[0].read_bytes())
    half = tmp_path / "fp16" / "atat-tiny.onnx"
    report = reexport_onnx(main, half, parity_inputs, fp16=True)
    assert report.max_abs_diff <= 2e-2 and read_metadata(half).precision == "fp16"
    assert onnx.TensorProto.FLOAT16 in {i.data_type for i in onnx.load(str(half)).graph.initializer}
    assert select_precision(main, on_cuda=True) == half
    assert select_precision(main, on_cuda=False) == main


def test_graph_serves_calls_where_bands_have_no_points(exported, run, parity_inputs) -> None:
    """The exported light-curve tokens gather each band's points separately; calls where
    some bands, or all but one, have no point at all give torch's logits."""
    from astro_classifier.export.parity import check_parity, parity_tolerances
    from astro_classifier.export.reexport import gaussian_ood_from_onnx

    meta = read_metadata(exported[0])
    model = ExportGraph(
        load_run(run[0])[0],
        ATAT_FAMILY,
        meta.calibration.temperature,
        gaussian_ood_from_onnx(exported[0], meta),
    ).eval()
    names = model.output_names
    n_bands = len(meta.bands)
    x = parity_inputs[0]
    for keep_bands in ([0], [n_bands - 1], [1, 3]):
        band = np.asarray(keep_bands)[x.band % len(keep_bands)]
        feeds = x.as_dict() | {"band": band.astype(x.band.dtype)}
        report = check_parity(
            model, names, exported[0], [(None, [feeds])], parity_tolerances(names, False)
        )
        assert report.max_logit_diff < 1e-4, (keep_bands, report)
        assert report.top_class_agreement == 1.0
