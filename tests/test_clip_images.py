"""The image tower of the CLIP model (issue 9, item 4): alert stamps in training, in the
exported graph, and in serving (classify, the CLI and the worker's batch processing), which
decode stamps only for a model that has an image tower.

The model is the tiny alert CLIP of ``configs/clip_tiny_alerts.yaml`` (the ``image_model``
fixture of conftest.py), trained on the real ZTF alerts of ``alerts/ztf/fink-v4.02`` and
served here on ``alerts/ztf/fink-v3.3`` (other alerts).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")

from astro_classifier.cli.app import app  # noqa: E402
from astro_classifier.core.cutouts import (  # noqa: E402
    ALERT_LABELS,
    CORRUPT_GZIP,
    NO_ALERT,
    align_cutouts,
)
from astro_classifier.families.clip import CLIP, CLIP_TINY, ClipConfig  # noqa: E402
from astro_classifier.formats.registry import (  # noqa: E402
    decode_message,
    read_cutouts_of,  # noqa: E402
    read_light_curves,
)
from astro_classifier.inference.classify import classify  # noqa: E402
from astro_classifier.inference.model import LoadedModel  # noqa: E402

FEATURES = ("ra", "decl")


def _serve_files(shared_data: Path) -> list[Path]:
    files = sorted((shared_data / "alerts" / "ztf" / "fink-v3.3").glob("*.avro"))
    assert len(files) == 50
    return files


def _tiny(n_classes: int = 2) -> CLIP:
    torch.manual_seed(0)
    cfg = ClipConfig(
        n_classes=n_classes,
        n_bands=3,
        feature_names=FEATURES,
        modalities=("photometry", "metadata", "image"),
        **CLIP_TINY,
    )
    return CLIP(cfg).eval()


def _inputs(b: int = 4, length: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "flux": torch.randn(b, length, generator=g),
        "flux_err": torch.ones(b, length),
        "time": torch.arange(length).float().repeat(b, 1),
        "band": torch.randint(0, 3, (b, length), generator=g),
        "mask": torch.ones(b, length, dtype=torch.bool),
        "tabular": torch.tensor([[10.0, 20.0]] * b),
    }


# -- the model ------------------------------------------------------------------------------
def test_image_presence_decides_whether_stamps_reach_the_fusion() -> None:
    model = _tiny()
    x = _inputs()
    a, b = torch.randn(4, 3, 63, 63), torch.randn(4, 3, 63, 63)
    with torch.no_grad():
        emb_a, emb_b = model.embeddings(**x, image=a), model.embeddings(**x, image=b)
        absent = {"photometry": torch.ones(4), "metadata": torch.ones(4), "image": torch.zeros(4)}
        present = dict(absent, image=torch.ones(4))
        # absent: the stamps do not matter; present: they do
        assert torch.equal(model.fuse(emb_a, absent), model.fuse(emb_b, absent))
        assert not torch.allclose(model.fuse(emb_a, present), model.fuse(emb_b, present))
        assert emb_a["image"].shape == (4, model.cfg.embed_dim)
        assert torch.allclose(emb_a["image"].norm(dim=1), torch.ones(4))


def test_image_pairs_join_the_contrastive_loss() -> None:
    model = _tiny(n_classes=0)
    assert ("photometry", "image") in model.cfg.pairs and ("metadata", "image") in model.cfg.pairs
    x = _inputs(b=6)
    emb = model.embeddings(**x, image=torch.randn(6, 3, 63, 63))
    presence = {m: torch.ones(6, dtype=torch.bool) for m in model.modalities}
    _, parts = model.contrastive_loss(emb, presence)
    assert {"photometry-image", "metadata-image"} <= set(parts)


def test_a_patch_size_that_does_not_divide_the_stamp_is_refused() -> None:
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ClipConfig(feature_names=FEATURES, modalities=("photometry", "image"), image_patch=8)


# -- training data --------------------------------------------------------------------------
def test_alert_labels_come_from_the_alerts_and_alerts_of_one_object_split_together(
    shared_data: Path,
) -> None:
    from rich.console import Console

    from astro_classifier.training.config import TrainConfig
    from astro_classifier.training.sources import read_training_objects

    folder = shared_data / "alerts" / "ztf"
    cfg = TrainConfig.from_yaml(
        Path(__file__).resolve().parent.parent / "configs" / "clip_ztf_alerts.yaml",
        [f"data.light_curves={folder}"],
    )
    batch = read_training_objects(cfg, Console(quiet=True))
    assert len(batch) == 618  # every shared ZTF alert
    # labels: what each alert says about itself (ssdistnr < 5" -> SolarSystem)
    cut = align_cutouts(batch, read_cutouts_of([folder]))
    solar = cut.labels()["solar_system"]
    positive, negative = ALERT_LABELS["solar_system"]
    assert np.array_equal(batch.label == positive, solar == 1.0)
    assert Counter(batch.label.tolist()) == {negative: 524, positive: 94}
    # one split group per object: repeated alerts of an object never straddle a split
    groups = batch.metadata["split_group"]
    for obj in {o for o, n in Counter(batch.object_id.tolist()).items() if n > 1}:
        assert len(set(groups[batch.object_id == obj])) == 1
    assert len(set(groups)) == len(set(batch.object_id.tolist())) == 572


# -- export ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_exported_graph_holds_the_image_tower(image_model) -> None:
    _, path = image_model
    model = LoadedModel.load(path, provider="cpu")
    meta = model.metadata
    assert meta.modalities == ["photometry", "metadata", "image"] and meta.image_size == 63
    assert model.needs_images
    inputs = {i.name: i.shape for i in meta.inputs}
    assert inputs["image"] == ["batch", 3, 63, 63]
    assert meta.labels == sorted(ALERT_LABELS["solar_system"])
    assert meta.broad_classes == {}  # these labels have no transient/stochastic/periodic kind
    assert "embedding_image" in [o.name for o in model.session.get_outputs()]


@pytest.mark.slow
def test_parity_with_real_stamps_for_every_modality_combination(image_model) -> None:
    from astro_classifier.export.graph import ExportGraph
    from astro_classifier.export.onnx_export import call_data, validation_calls
    from astro_classifier.export.parity import check_parity, parity_feeds, parity_tolerances
    from astro_classifier.families.registry import CLIP_FAMILY
    from astro_classifier.training.dataset import TrainingDataset
    from astro_classifier.training.extras import dataset_extras
    from astro_classifier.training.record import load_run

    run_dir, path = image_model
    model, record = load_run(run_dir)
    calls, _ = validation_calls(run_dir, record, record.spec)
    validation = np.asarray(record.split.validation, np.int64)
    ds = TrainingDataset.load(run_dir / "dataset.h5")
    extras = dataset_extras(ds, ["image"], CLIP_FAMILY.metadata_extras(model))
    real = call_data(calls, validation, extras)
    assert sum(int(given["image"][1].sum()) for given in real) == len(validation)  # all usable
    meta = LoadedModel.load(path, provider="cpu").metadata
    graph = ExportGraph(model, CLIP_FAMILY, meta.calibration.temperature).eval()
    names = graph.output_names
    groups = parity_feeds(meta, [x for _, x in calls], real)
    report = check_parity(graph, names, path, groups, parity_tolerances(names, False, 1e-5))
    per_combo = report.per_combination
    assert len(per_combo) == 7 and "photometry+metadata+image" in per_combo
    assert max(per_combo.values()) <= 1e-5 and report.ok
    assert report.max_abs_diff <= 1e-5 and report.max_logit_diff <= 1e-5
    assert report.top_class_agreement == 1.0


# -- serving --------------------------------------------------------------------------------
@pytest.mark.slow
def test_classify_feeds_the_stamps_and_they_change_the_answer(image_model, shared_data) -> None:
    _, path = image_model
    model = LoadedModel.load(path, provider="cpu")
    files = _serve_files(shared_data)
    batch = read_light_curves(files, format="ztf-avro")
    assert batch.cutouts is None  # the light-curve reader never decodes stamps
    without = classify(batch, model)
    assert without.without_images == {NO_ALERT: len(batch)}
    batch.cutouts = align_cutouts(batch, read_cutouts_of(files, "ztf-avro"))
    with_stamps = classify(batch, model)
    assert sum(with_stamps.without_images.values()) == 0
    p_with = with_stamps.to_arrow().column("prob_SolarSystem").to_numpy()
    p_without = without.to_arrow().column("prob_SolarSystem").to_numpy()
    assert not np.allclose(p_with, p_without, atol=1e-4)
    # a model without broad kinds leaves the broad columns null
    assert with_stamps.to_arrow().column("broad_class").null_count == len(batch)


@pytest.mark.slow
def test_an_alert_with_a_broken_stamp_is_classified_without_images(
    image_model, shared_data
) -> None:
    _, path = image_model
    model = LoadedModel.load(path, provider="cpu")
    files = _serve_files(shared_data)[:6]
    batch = read_light_curves(files, format="ztf-avro")
    cutouts = align_cutouts(batch, read_cutouts_of(files, "ztf-avro"))
    broken = dataclasses.replace(cutouts)
    broken.ok = cutouts.ok.copy()
    broken.failure = cutouts.failure.copy()
    broken.ok[2], broken.failure[2] = False, f"cutoutScience: {CORRUPT_GZIP}: test"
    batch.cutouts = broken
    result = classify(batch, model)
    assert result.without_images == {"cutoutScience": 1}
    # row 2 scores as if it had no stamps at all; the others as with their stamps
    alone = batch.select([2])
    alone.cutouts = None
    expected = classify(alone, model).to_arrow().column("prob_SolarSystem").to_numpy()
    got = result.to_arrow().column("prob_SolarSystem").to_numpy()
    assert got[2] == pytest.approx(expected[0], abs=1e-6)


@pytest.mark.slow
def test_classify_command_decodes_stamps_for_an_image_model(
    image_model, shared_data, tmp_path
) -> None:
    _, path = image_model
    out = tmp_path / "out.parquet"
    folder = shared_data / "alerts" / "ztf" / "fink-v3.3"
    result = CliRunner().invoke(
        app, ["classify", str(folder), "-f", "ztf-avro", "-m", str(path), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "images: 50 of 50 object(s) classified with their stamps" in result.output
    table = pq.read_table(out)
    assert table.num_rows == 50 and set(table.column("class").to_pylist()) <= set(
        ALERT_LABELS["solar_system"]
    )


@pytest.mark.slow
def test_messages_are_decoded_with_stamps_only_for_image_models(image_model, shared_data) -> None:
    from astro_classifier.stream.batch import BatchProcessor
    from tests.test_stream_units import FakeMessage

    value = _serve_files(shared_data)[0].read_bytes()
    plain = decode_message(value, "ztf-avro", None, "m@0")
    assert plain.cutouts is None
    with_stamps = decode_message(value, "ztf-avro", None, "m@0", cutout_size=63)
    assert with_stamps.cutouts.ok.all() and with_stamps.cutouts.images.shape == (1, 3, 63, 63)
    assert BatchProcessor(LoadedModel.load("atat-ztf"), "ztf-avro", "json").cutout_size is None

    image = LoadedModel.load(image_model[1], provider="cpu")
    messages = [FakeMessage(f.read_bytes(), i) for i, f in enumerate(_serve_files(shared_data))]
    inline = BatchProcessor(image, "ztf-avro", "json")
    assert inline.cutout_size == 63
    pooled = BatchProcessor(image, "ztf-avro", "json", decode_workers=1).start()
    try:
        a, b = inline.process(messages), pooled.process(messages)
    finally:
        pooled.close()
    assert not a.dead_letters and len(a.outputs) == 50
    # the pool decodes the stamps too: same classifications as decoding in the worker
    assert [o.value for o in a.outputs] != [] and [o.key for o in a.outputs] == [
        o.key for o in b.outputs
    ]
    import json

    def probs(result) -> list[float]:
        return [json.loads(o.value)["probability"] for o in result.outputs]

    assert probs(a) == pytest.approx(probs(b), abs=1e-6)


@pytest.mark.slow
def test_embed_image_vectors_and_search_light_curves_against_stamps(
    image_model, shared_data, tmp_path
) -> None:
    _, path = image_model
    folder = shared_data / "alerts" / "ztf" / "fink-v3.3"
    runner = CliRunner()
    for modality in ("image", "photometry"):
        result = runner.invoke(
            app,
            [
                "embed",
                str(folder),
                "-f",
                "ztf-avro",
                "-m",
                str(path),
                "--modality",
                modality,
                "-o",
                str(tmp_path / f"{modality}.parquet"),
            ],
        )
        assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "image.parquet")
    assert table.num_rows == 50 and set(table.column("modality").to_pylist()) == {"image"}
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert len({v.tobytes() for v in vectors}) > 1  # the stamps make the vectors differ
    result = runner.invoke(
        app,
        [
            "similar",
            str(tmp_path / "photometry.parquet"),
            "--index",
            str(tmp_path / "image.parquet"),
            "--query-modality",
            "photometry",
            "--modality",
            "image",
            "-k",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
