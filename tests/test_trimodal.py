"""Trimodal CLIP (light curve <-> spectrum <-> metadata) on a small real subset: the config
validates, pretraining and fine-tuning feed real spectra to the spectrum tower, the ONNX
export matches torch within 1e-5 with and without a spectrum present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rich.console import Console  # noqa: E402

from astro_classifier.export.onnx_export import export_run  # noqa: E402
from astro_classifier.families.clip import CLIP, CLIP_TINY, ClipConfig  # noqa: E402
from astro_classifier.features.spectra import model_input, normalise, resample  # noqa: E402
from astro_classifier.training.config import TrainConfig  # noqa: E402
from astro_classifier.training.dataset import TrainingDataset  # noqa: E402
from astro_classifier.training.train import train  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "clip_osc_trimodal.yaml"


def _cfg(shared_data: Path, *overrides: str) -> TrainConfig:
    return TrainConfig.from_yaml(
        CONFIG,
        [
            f"data.light_curves={shared_data / 'multimodal' / 'osc-sne'}",
            # OSC only: a few slsne objects share an OSC name (e.g. DES14X3taz); the
            # benchmark de-duplicates them, a plain config does not (the leak check refuses)
            "data.extra_sources=[]",
            # the catalogue's own classes: the exported classifier needs their broad classes
            "data.label_map={}",
            "data.classes=null",
            "model.name=clip_tiny",
            "model.args={modalities: [photometry, metadata, spectrum], spectrum_grid: "
            "[3500.0, 9500.0, 64]}",
            "data.max_objects=200",
            "preprocessing.max_length=32",
            "training.epochs=1",
            "training.num_threads=1",
            *overrides,
        ],
    )


def _train(cfg: TrainConfig, run_dir: Path) -> dict:
    threads = torch.get_num_threads()
    try:
        return train(cfg, run_dir, console=Console(quiet=True))
    finally:
        torch.set_num_threads(threads)


def test_trimodal_config_validates() -> None:
    cfg = TrainConfig.from_yaml(CONFIG)
    assert cfg.training.objective == "contrastive"
    assert cfg.model.args["modalities"] == ["photometry", "metadata", "spectrum"]
    assert "claimedtype" not in cfg.preprocessing.metadata_features  # never the class
    assert ClipConfig(**cfg.model.args, feature_names=("mwebv",)).spectrum_grid[2] == 256


@pytest.fixture(scope="module")
def runs(shared_data: Path, tmp_path_factory) -> tuple[Path, dict, Path, dict]:
    root = tmp_path_factory.mktemp("trimodal")
    pre = _train(_cfg(shared_data), root / "pre")
    ft = _train(
        _cfg(
            shared_data,
            f"model.init_from={root / 'pre'}",
            "model.args={}",
            "training.objective=classify",
        ),
        root / "ft",
    )
    return root / "pre", pre, root / "ft", ft


@pytest.mark.slow
def test_pretraining_feeds_real_spectra(runs) -> None:
    pre_dir, pre, _, _ = runs
    ds = TrainingDataset.load(pre_dir / "dataset.h5")
    assert ds.spectra is not None and len(ds.spectra) > 10
    have = ds.spectrum_row >= 0
    # every kept spectrum belongs to its object; objects without one are marked -1
    assert (ds.spectra.object_id[ds.spectrum_row[have]] == ds.batch.object_id[have]).all()
    assert "spectrum" in pre["zero_shot"]  # spectrum embeddings of real spectra were scored
    assert any(k.startswith("wavelengths") for k in ds.spectra.dropped)  # refusals recorded


@pytest.mark.slow
def test_finetuning_scores_with_spectra(runs) -> None:
    _, _, ft_dir, ft = runs
    assert ft["init_from"] is not None
    assert "holdout_with_spectra" in ft and "holdout" in ft
    assert TrainingDataset.load(ft_dir / "dataset.h5").spectra is not None


@pytest.mark.slow
def test_export_parity_with_and_without_a_spectrum(runs, tmp_path: Path) -> None:
    _, _, ft_dir, _ = runs
    report = export_run(ft_dir, tmp_path / "m.onnx", parity_objects=48)
    assert report.real_spectra > 0  # real spectra went through the graph
    combos = report.per_combination
    assert "photometry" in combos and "photometry+metadata+spectrum" in combos
    assert max(combos.values()) <= 1e-5  # the CLIP family's one limit for every output
    assert report.ok


def test_graph_normalisation_is_the_numpy_one() -> None:
    """The spectrum tower gives the same embedding for a raw resampled spectrum (any flux
    scale) and for its normalise()d version: one normalisation, in numpy and in the graph."""
    torch.manual_seed(0)
    cfg = ClipConfig(
        **{**CLIP_TINY, "modalities": ("photometry", "spectrum")}, feature_names=("mwebv",)
    )
    model = CLIP(cfg).eval()
    from astro_classifier.core.spectra import SpectrumBuilder as _Builder

    w = np.linspace(3000.0, 10000.0, 2000)
    b = _Builder()
    for k in range(3):
        f = (1 + 0.3 * np.sin(w / (300.0 + 100 * k))) * 1e-17
        b.add(f"s{k}", w, f, f * 0.05, np.nan, np.nan, "", "")
    spectra = b.build()
    flux, err, _ = resample(spectra, cfg.spectrum_grid)
    nflux, nerr = normalise(flux, err)
    raw = torch.from_numpy(np.stack([flux, err], 1).astype(np.float32))
    norm = torch.from_numpy(np.stack([nflux, nerr], 1).astype(np.float32))
    arr, _, _ = model_input(spectra, cfg.spectrum_grid)
    assert np.array_equal(arr, norm.numpy())
    with torch.no_grad():
        a, b_ = model.embed_spectrum(raw), model.embed_spectrum(norm)
    assert torch.allclose(a, b_, atol=1e-5)
    # different spectra, different vectors (by far more than the tolerance above)
    assert float((a[0] - a[1]).abs().max()) > 1e-4


@pytest.mark.slow
def test_embed_spectra_and_search_light_curves_against_them(
    runs, shared_data: Path, tmp_path: Path
) -> None:
    """`astroclf embed --modality spectrum` reads the spectra beside OSC light curves (one
    per object, as training picks it); `similar` then searches light curves against them."""
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from astro_classifier.cli.app import app
    from astro_classifier.export.onnx_export import export_run

    pre_dir, _, _, _ = runs
    model = tmp_path / "pre.onnx"
    export_run(pre_dir, model, parity_objects=48)  # embedding-only (pretraining) file
    osc = shared_data / "multimodal" / "osc-sne"
    runner = CliRunner()
    for modality in ("spectrum", "photometry"):
        result = runner.invoke(
            app,
            [
                "embed",
                str(osc),
                "-f",
                "osc",
                "-m",
                str(model),
                "--modality",
                modality,
                "-o",
                str(tmp_path / f"{modality}.parquet"),
            ],
        )
        assert result.exit_code == 0, result.output
    spectra = pq.read_table(tmp_path / "spectrum.parquet")
    photometry = pq.read_table(tmp_path / "photometry.parquet")
    # only objects with a usable spectrum get a spectrum embedding (the others are counted)
    assert 100 < spectra.num_rows < photometry.num_rows
    from astro_classifier.training.extras import spectrum_inputs
    from astro_classifier.training.record import load_run

    ds = TrainingDataset.load(pre_dir / "dataset.h5")
    pretrained, _ = load_run(pre_dir)
    # the objects the training run had a usable spectrum for have one here too (those with
    # a light-curve point in the model's bands: embed skips, and counts, the others)
    usable = spectrum_inputs(ds, pretrained.cfg.spectrum_grid)[1] & (ds.batch.lengths > 0)
    trained_with = set(ds.batch.object_id[usable].tolist())
    assert len(trained_with) > 10
    assert trained_with <= set(spectra.column("object_id").to_pylist())
    result = runner.invoke(
        app,
        [
            "similar",
            str(tmp_path / "photometry.parquet"),
            "--index",
            str(tmp_path / "spectrum.parquet"),
            "--query-modality",
            "photometry",
            "--modality",
            "spectrum",
            "-k",
            "5",
            "-o",
            str(tmp_path / "hits.parquet"),
        ],
    )
    assert result.exit_code == 0, result.output
    hits = pq.read_table(tmp_path / "hits.parquet")
    assert hits.num_rows == 5 * photometry.num_rows
