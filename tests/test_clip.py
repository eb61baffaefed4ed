"""CLIP models: pretrain (contrastive) -> fine-tune (few labels) -> export -> classify / embed.

A tiny CLIP on 200 real PLAsTiCC objects, 2 epochs per stage. The tests that train or
export (the ``pretrained`` / ``finetuned`` / ``exported`` fixtures) are marked ``slow``; the
model's unit tests on untrained towers are not.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pyarrow.parquet as pq  # noqa: E402
from rich.console import Console  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from astro_classifier.cli.app import app  # noqa: E402
from astro_classifier.core.errors import ModelError  # noqa: E402
from astro_classifier.core.lightcurve import LightCurveBatch  # noqa: E402
from astro_classifier.export.graph import ExportGraph  # noqa: E402
from astro_classifier.export.onnx_export import export_run  # noqa: E402
from astro_classifier.families.clip import (  # noqa: E402
    CLIP,
    CLIP_TINY,
    ClipConfig,
    default_presence,
    galactic_latitude,
)
from astro_classifier.families.registry import CLIP_FAMILY, create_model  # noqa: E402
from astro_classifier.features.preprocess import light_curves_to_inputs  # noqa: E402
from astro_classifier.inference.classify import classify  # noqa: E402
from astro_classifier.inference.embeddings import embed_objects, search  # noqa: E402
from astro_classifier.inference.model import LoadedModel, read_metadata  # noqa: E402
from astro_classifier.training.batches import label_subset  # noqa: E402
from astro_classifier.training.config import TrainConfig  # noqa: E402
from astro_classifier.training.dataset import TrainingDataset  # noqa: E402
from astro_classifier.training.record import (  # noqa: E402
    LEGACY_CHECKPOINT,
    RECORD,
    WEIGHTS,
    load_record,
    load_run,
)
from astro_classifier.training.train import train  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
FEATURES = ("hostgal_photoz", "hostgal_photoz_err", "mwebv", "ddf", "distmod", "ra", "decl")
PARITY_TOLERANCE = CLIP_FAMILY.parity_tolerance


def _config(name: str, shared_data: Path, *overrides: str) -> TrainConfig:
    folder = shared_data / "lightcurves" / "plasticc"
    return TrainConfig.from_yaml(
        CONFIGS / name,
        [
            f"data.light_curves={folder / 'plasticc_train_lightcurves.csv.gz'}",
            f"data.metadata={folder / 'plasticc_train_metadata.csv.gz'}",
            *overrides,
        ],
    )


def _train(cfg: TrainConfig, run_dir: Path) -> dict:
    threads = torch.get_num_threads()
    try:
        return train(cfg, run_dir, console=Console(quiet=True))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pretrained(shared_data: Path, tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("clip") / "pre"
    return run_dir, _train(_config("clip_tiny_pretrain.yaml", shared_data), run_dir)


@pytest.fixture(scope="module")
def finetuned(pretrained, shared_data: Path, tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("clip") / "ft"
    cfg = _config("clip_tiny_finetune.yaml", shared_data, f"model.init_from={pretrained[0]}")
    return run_dir, _train(cfg, run_dir)


@pytest.fixture(scope="module")
def exported(finetuned, tmp_path_factory):
    out = tmp_path_factory.mktemp("clip-export") / "clip-tiny.onnx"
    return out, export_run(finetuned[0], out)


def _tiny(modalities=("photometry", "metadata"), n_classes: int = 3) -> CLIP:
    torch.manual_seed(0)
    return create_model(
        "clip_tiny",
        n_classes=n_classes,
        n_bands=6,
        feature_names=FEATURES,
        modalities=modalities,
    ).eval()


# -- the model ---------------------------------------------------------------------------


def test_galactic_latitude_of_known_directions() -> None:
    ra = torch.tensor([192.85948, 266.40499, 0.0])
    dec = torch.tensor([27.12825, -28.93617, 90.0])
    b = galactic_latitude(ra, dec)
    np.testing.assert_allclose(b.numpy(), [90.0, 0.0, 27.128], atol=0.05)


def test_metadata_tower_sees_galactic_latitude_not_coordinates() -> None:
    cfg = ClipConfig(feature_names=FEATURES)
    assert cfg.metadata_columns == [*FEATURES[:5], "gal_b"]


def test_contrastive_loss_prefers_aligned_pairs_and_clamps_temperature() -> None:
    model = _tiny()
    z = torch.nn.functional.normalize(torch.randn(16, 16), dim=-1)
    presence = {"photometry": torch.ones(16, dtype=torch.bool)} | {
        "metadata": torch.ones(16, dtype=torch.bool)
    }
    aligned, _ = model.contrastive_loss({"photometry": z, "metadata": z}, presence)
    shuffled, _ = model.contrastive_loss({"photometry": z, "metadata": z.flip(0)}, presence)
    assert aligned < shuffled
    with torch.no_grad():
        model.logit_scale.fill_(20.0)
    assert float(model.scales().max().detach()) == model.cfg.max_logit_scale
    # an object missing a modality is left out of that pair
    presence["metadata"][:15] = False
    _, parts = model.contrastive_loss({"photometry": z, "metadata": z}, presence)
    assert parts == {}


def test_modality_dropout_never_removes_everything() -> None:
    model = _tiny(("photometry", "metadata", "spectrum"))
    n = 2000
    presence = {m: torch.ones(n, dtype=torch.bool) for m in model.modalities}
    dropped = model.drop_modalities(presence, torch.Generator().manual_seed(0))
    alive = torch.stack(list(dropped.values())).any(0)
    assert bool(alive.all())
    share = float(dropped["metadata"].float().mean())
    assert abs(share - (1 - model.cfg.modality_dropout)) < 0.05


def test_same_input_same_output_in_eval_mode() -> None:
    model = _tiny(("photometry", "metadata", "spectrum"))
    g = torch.Generator().manual_seed(1)
    x = dict(
        flux=torch.randn(4, 12, generator=g),
        flux_err=torch.rand(4, 12, generator=g),
        time=torch.rand(4, 12, generator=g) * 100,
        band=torch.randint(0, 6, (4, 12), generator=g),
        mask=torch.ones(4, 12, dtype=torch.bool),
        tabular=torch.randn(4, len(FEATURES), generator=g),
        spectrum=torch.rand(4, 2, 64, generator=g),
    )
    with torch.no_grad():
        a, b = model.embeddings(**x), model.embeddings(**x)
    for name in a:
        assert torch.equal(a[name], b[name]), name
        np.testing.assert_allclose(a[name].norm(dim=-1).numpy(), 1.0, atol=1e-5)


def test_image_modality_embeds_stamps() -> None:  # more in test_clip_images.py
    model = _tiny(("photometry", "metadata", "image")).eval()
    with torch.no_grad():
        z = model.embed_image(torch.zeros(2, 3, 63, 63))
    assert z.shape == (2, model.cfg.embed_dim)


def test_unknown_modality_is_refused() -> None:
    with pytest.raises(ValueError, match="modalities"):
        ClipConfig(feature_names=FEATURES, modalities=("photometry", "radio"))


def test_label_subset_keeps_one_object_per_class() -> None:
    y = np.array([0] * 100 + [1] * 3 + [2])
    idx = np.arange(len(y))
    sub = label_subset(y, idx, 0.01, seed=0)
    assert set(y[sub]) == {0, 1, 2}
    assert len(sub) == 3
    assert label_subset(y, idx, 1.0, seed=0) is idx


# -- pretraining and fine-tuning ---------------------------------------------------------


@pytest.mark.slow
def test_pretraining_run_holds_its_record_and_plain_weights(pretrained) -> None:
    run_dir, metrics = pretrained
    raw = json.loads((run_dir / RECORD).read_text())
    assert raw["model_name"] == "clip_tiny" and raw["architecture"]["n_classes"] == 0
    assert raw["objective"] == "contrastive"
    state = torch.load(run_dir / WEIGHTS, weights_only=True)
    model, record = load_run(run_dir)
    assert record.model_name == "clip_tiny" and model.head is None
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], atol=0, rtol=0)
    assert metrics["objective"] == "contrastive"
    assert np.isfinite([row["val_loss"] for row in metrics["history"]]).all()
    zs = metrics["zero_shot"]["fused"]
    assert 0 <= zs["centroid_accuracy"] <= 1 and 0 <= zs["knn5_accuracy"] <= 1


@pytest.mark.slow
def test_pretraining_never_sees_the_holdout_fold(pretrained) -> None:
    run_dir, metrics = pretrained
    record = load_record(run_dir)
    ds = TrainingDataset.load(run_dir / "dataset.h5")
    holdout = set(ds.batch.object_id[record.split.holdout].tolist())
    assert holdout and not holdout & set(record.seen_object_ids)
    assert metrics["n_holdout"] == len(holdout)


@pytest.mark.slow
def test_finetuning_starts_from_the_pretrained_towers(pretrained, finetuned) -> None:
    run_dir, metrics = finetuned
    assert metrics["init_from"] == str(pretrained[0])
    assert metrics["n_train"] < 140  # data.label_fraction 0.5 of the training split
    assert "holdout" in metrics and 0 <= metrics["holdout"]["macro_f1"] <= 1
    model, _ = load_run(run_dir)
    assert model.head is not None and model.head.out_features == 14


@pytest.mark.slow
def test_frozen_finetuning_trains_only_the_head(pretrained, shared_data, tmp_path) -> None:
    cfg = _config(
        "clip_tiny_finetune.yaml",
        shared_data,
        f"model.init_from={pretrained[0]}",
        "model.freeze=true",
        "training.epochs=1",
    )
    _train(cfg, tmp_path / "frozen")
    before, _ = load_run(pretrained[0])
    after, _ = load_run(tmp_path / "frozen")
    for key, value in before.state_dict().items():
        torch.testing.assert_close(after.state_dict()[key], value, atol=0, rtol=0, msg=key)


@pytest.mark.slow
def test_finetuning_refuses_a_pretraining_that_saw_the_holdout(
    pretrained, shared_data, tmp_path
) -> None:
    cfg = _config(
        "clip_tiny_finetune.yaml",
        shared_data,
        f"model.init_from={pretrained[0]}",
        "data.holdout_fold=1",  # fold 1 was pretrained on
    )
    with pytest.raises(ValueError, match="hold-out"):
        _train(cfg, tmp_path / "leak")


# -- export, classify, embed -------------------------------------------------------------


@pytest.mark.slow
def test_export_parity_for_every_modality_combination(exported) -> None:
    out, report = exported
    assert report.max_abs_diff <= PARITY_TOLERANCE
    assert report.max_logit_diff <= PARITY_TOLERANCE
    assert set(report.per_combination) == {"photometry", "metadata", "photometry+metadata"}
    meta = read_metadata(out)
    assert meta.modalities == ["photometry", "metadata"]
    assert meta.required_modalities == ["photometry"]
    assert meta.embedding_dim == CLIP_TINY["embed_dim"]
    assert [i.name for i in meta.inputs][-2:] == ["has_photometry", "has_metadata"]


@pytest.mark.slow
def test_spectrum_tower_exports_with_missing_modality_parity(
    pretrained, shared_data, tmp_path
) -> None:
    cfg = _config(
        "clip_tiny_finetune.yaml",
        shared_data,
        "model.init_from=null",
        "model.args.modalities=[photometry, metadata, spectrum]",
        "training.epochs=1",
    )
    _train(cfg, tmp_path / "spec")
    report = export_run(tmp_path / "spec", tmp_path / "spec.onnx")
    assert len(report.per_combination) == 7
    assert max(report.per_combination.values()) <= PARITY_TOLERANCE
    loaded = LoadedModel.load(tmp_path / "spec.onnx", provider="cpu")
    assert loaded.metadata.spectrum_grid == [3500.0, 9500.0, 64]
    # An object without a spectrum: the same answer whatever the spectrum input holds.
    ds = TrainingDataset.load(tmp_path / "spec" / "dataset.h5")
    sub, feats = ds.truncated(np.arange(4), np.full(4, len(ds.truncation_days) - 1))
    x = light_curves_to_inputs(sub, ds.spec, tabular=feats)
    absent = {"spectrum": np.zeros(4, bool)}
    a = loaded.predict(x, presence=absent, spectrum=np.random.rand(4, 2, 64))
    b = loaded.predict(x, presence=absent)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    c = loaded.predict(x, spectrum=np.random.rand(4, 2, 64).astype(np.float32))
    assert not np.allclose(c.probabilities, b.probabilities)


@pytest.mark.slow
def test_classify_with_a_clip_model(exported, finetuned) -> None:
    out, _ = exported
    loaded = LoadedModel.load(out, provider="cpu")
    ds = TrainingDataset.load(finetuned[0] / "dataset.h5")
    _, record = load_run(finetuned[0])
    batch = ds.batch.select(np.asarray(record.split.holdout))
    result = classify(batch, loaded, n_jobs=1)
    assert len(result) == len(batch)
    proba = result.probabilities
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    # the same as the torch model with the presence classify uses
    model, _ = load_run(finetuned[0])
    graph = ExportGraph(model, CLIP_FAMILY, loaded.metadata.calibration.temperature).eval()
    x = light_curves_to_inputs(batch, ds.spec)
    presence = default_presence(model, torch.from_numpy(x.tabular))
    with torch.no_grad():
        expected = graph(
            *[torch.from_numpy(v) for v in x.as_dict().values()],
            *[presence[m] for m in model.modalities],
        )[0].numpy()
    order = np.argsort(result.rows)
    np.testing.assert_allclose(proba[order], expected, atol=1e-5)


@pytest.mark.slow
def test_embeddings_do_not_depend_on_the_batch(exported, finetuned) -> None:
    loaded = LoadedModel.load(exported[0], provider="cpu")
    batch = TrainingDataset.load(finetuned[0] / "dataset.h5").batch
    for modality in ("photometry", "metadata", "fused"):
        whole, _ = embed_objects(batch, loaded, modality, batch_size=512)
        stream = [
            embed_objects(batch.select(np.arange(s, min(s + 7, len(batch)))), loaded, modality)[0]
            for s in range(0, len(batch), 7)
        ]
        one_by_one = np.concatenate([t.column("vector").to_pylist() for t in stream])
        vectors = np.asarray(whole.column("vector").to_pylist(), np.float32)
        np.testing.assert_array_equal(vectors, one_by_one.astype(np.float32), err_msg=modality)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_embed_and_similar_commands(exported, finetuned, tmp_path) -> None:
    batch = TrainingDataset.load(finetuned[0] / "dataset.h5").batch.select(np.arange(60))
    lc = tmp_path / "lc.parquet"
    _write_long_parquet(batch, lc)
    emb = tmp_path / "emb.parquet"
    runner = CliRunner()
    result = runner.invoke(
        app, ["embed", str(lc), "-m", str(exported[0]), "-o", str(emb), "--modality", "photometry"]
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(emb)
    assert table.column_names == ["object_id", "model", "modality", "vector"]
    assert table.num_rows == 60 and table.schema.field("vector").type.list_size == 16
    query = batch.object_id[0]
    out = tmp_path / "nn.csv"
    result = runner.invoke(app, ["similar", query, "--index", str(emb), "-k", "5", "-o", str(out)])
    assert result.exit_code == 0, result.output
    import pyarrow.csv as pacsv

    nn = pacsv.read_csv(out).to_pylist()
    assert [r["rank"] for r in nn] == [1, 2, 3, 4, 5]
    assert all(str(r["object_id"]) != query for r in nn)
    sims = [r["similarity"] for r in nn]
    assert sims == sorted(sims, reverse=True)


def test_exact_search_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    index = rng.normal(size=(500, 8)).astype(np.float32)
    index /= np.linalg.norm(index, axis=1, keepdims=True)
    ids = np.asarray([str(i) for i in range(500)])
    pos, sim = search(index[:20], index, k=10, exclude=ids[:20], index_ids=ids, block=7)
    full = index[:20] @ index.T
    np.fill_diagonal(full[:, :20], -np.inf)
    expected = np.argsort(-full, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(pos, expected)
    np.testing.assert_allclose(sim, np.take_along_axis(full, expected, 1), atol=1e-6)


def _write_long_parquet(batch: LightCurveBatch, path: Path) -> None:
    from astro_classifier.formats.longformat import write_long

    write_long(batch, path)


def test_pi_constant_sanity() -> None:  # guards the degree conversions of galactic_latitude
    assert math.isclose(
        float(galactic_latitude(torch.tensor(0.0), torch.tensor(0.0))), -60.19, abs_tol=0.05
    )


@pytest.mark.slow
def test_atat_runs_hold_their_record_and_old_runs_still_load(
    atat_tiny_run, shared_data, tmp_path
) -> None:
    # the shared run of conftest.py: these overrides of configs/atat_tiny.yaml
    cfg = _config(
        "atat_tiny.yaml",
        shared_data,
        "data.max_objects=120",
        "training.epochs=1",
        "training.num_threads=1",
        "data.truncation_days=[.inf]",
    )
    result, shared_run = atat_tiny_run
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "atat"
    shutil.copytree(shared_run, run_dir)  # the files are rewritten below
    model, record = load_run(run_dir)
    assert record.model_name == "atat_tiny" and record.architecture["n_classes"] == 14
    # an ATAT run directory warm-starts another ATAT training
    again = _train(
        cfg.model_copy(update={"model": cfg.model.model_copy(update={"init_from": str(run_dir)})}),
        tmp_path / "warm",
    )
    assert again["best_epoch"] == 1 and again["init_from"] == str(run_dir)
    # a run directory written before run.json: checkpoint.pt holds the record and the weights
    legacy = {
        "model_name": record.model_name,
        "model_config": record.architecture,
        "state_dict": torch.load(run_dir / WEIGHTS, weights_only=True),
        "labels": record.labels,
        "spec": record.spec.model_dump(mode="json"),
        "dataset": record.dataset.model_dump(),
        "split": record.split.model_dump(),
        "export": record.export.model_dump(),
        "metrics": record.metrics,
    }
    torch.save(legacy, run_dir / LEGACY_CHECKPOINT)
    (run_dir / RECORD).unlink()
    (run_dir / WEIGHTS).unlink()
    old_model, old_record = load_run(run_dir)
    assert old_record == record.model_copy(update={"seen_object_ids": []})
    for key, value in model.state_dict().items():
        torch.testing.assert_close(old_model.state_dict()[key], value, atol=0, rtol=0)


def test_cli_refuses_a_model_typo(tmp_path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "train",
            str(CONFIGS / "clip_tiny_pretrain.yaml"),
            "-o",
            str(tmp_path / "run"),
            "--set",
            "model.args.embed_dm=8",
        ],
    )
    assert result.exit_code == 1 and "embed_dim" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_pretraining_run_exports_an_embedding_only_model(pretrained, finetuned, tmp_path) -> None:
    out = tmp_path / "pre.onnx"
    report = export_run(pretrained[0], out)
    assert max(report.per_combination.values()) <= PARITY_TOLERANCE
    loaded = LoadedModel.load(out, provider="cpu")
    assert loaded.metadata.labels == [] and loaded.metadata.calibration is None
    batch = TrainingDataset.load(finetuned[0] / "dataset.h5").batch.select(np.arange(10))
    table, _ = embed_objects(batch, loaded, "photometry")
    assert table.num_rows == 10
    with pytest.raises(ModelError, match="embedding-only"):
        classify(batch, loaded, n_jobs=1)


@pytest.mark.slow
def test_clip_towers_export_the_fused_attention_kernel(exported) -> None:
    """The light-curve and metadata transformers' attention is ONNX Runtime's fused
    MultiHeadAttention, one node per layer but the last, whose CLS query scores in the
    input space (one small Softmax each); parity is checked by the export itself."""
    import onnx

    nodes = onnx.load(str(exported[0])).graph.node
    cfg = read_metadata(exported[0]).architecture_config
    ops = [n.op_type for n in nodes]
    assert ops.count("MultiHeadAttention") == cfg["lc_layers"] + cfg["tab_layers"] - 2
    attention_softmax = [n.name for n in nodes if n.op_type == "Softmax" and "/attn/" in n.name]
    assert sorted(attention_softmax) == [
        f"/lc_encoder/blocks.{cfg['lc_layers'] - 1}/attn/Softmax",
        f"/tab_encoder/blocks.{cfg['tab_layers'] - 1}/attn/Softmax",
    ]
