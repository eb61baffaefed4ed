"""Every shipped config validates; ``--set`` overrides parse; unknown fields are rejected."""

from __future__ import annotations

import math
from pathlib import Path

import pydantic
import pytest
import yaml

from astro_classifier.training.config import TrainConfig, apply_override, expand_path

# Training configs; the stream configs (configs/stream_*.yaml) are validated in test_stream_units.
_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIGS = sorted([*_CONFIG_DIR.glob("atat_*.yaml"), *_CONFIG_DIR.glob("clip_*.yaml")])
MINIMAL = {"data": {"light_curves": "lc.csv"}, "export": {"name": "m"}}


def test_the_shipped_configs_are_found() -> None:
    assert {p.name for p in CONFIGS} >= {
        "atat_lsst.yaml",
        "atat_ztf.yaml",
        "atat_tiny.yaml",
        "clip_plasticc.yaml",
        "clip_finetune.yaml",
        "clip_tiny_pretrain.yaml",
        "clip_tiny_finetune.yaml",
    }


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_validates_and_round_trips(path: Path, tmp_path: Path) -> None:
    cfg = TrainConfig.from_yaml(path)
    assert cfg.export.name
    assert "${" not in cfg.data.light_curves  # ${ASTROCLF_SHARED_DATA} was expanded
    assert 0 < cfg.data.label_fraction <= 1
    assert cfg.data.truncation_days[-1] == math.inf
    # The config written into a run directory reads back to the same config.
    saved = tmp_path / "config.yaml"
    saved.write_text(cfg.to_yaml())
    assert TrainConfig.from_yaml(saved) == cfg


def test_every_config_builds_its_model() -> None:
    torch = pytest.importorskip("torch")
    from astro_classifier.families.registry import create_model

    for path in CONFIGS:
        cfg = TrainConfig.from_yaml(path)
        with torch.device("meta"):  # shapes only: no memory, no time
            create_model(
                cfg.model.name,
                n_classes=14,
                n_bands=len(cfg.preprocessing.bands),
                n_features=len(cfg.preprocessing.feature_names),
                feature_names=tuple(cfg.preprocessing.feature_names),
                **cfg.model.args,
            )


def test_clip_configs_never_use_truth_or_spectroscopic_redshift() -> None:
    for path in CONFIGS:
        if path.name.startswith("clip_"):
            cfg = TrainConfig.from_yaml(path)
            names = cfg.preprocessing.feature_names
            assert "hostgal_specz" not in names
            assert not any(n.startswith(("true_", "tflux_")) for n in names)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("model.args.embed_dm=8", "did you mean 'embed_dim'"),
        ("model.name=clip_tiyn", "did you mean 'clip_tiny'"),
    ],
)
def test_model_typos_are_refused_at_config_load(item: str, message: str) -> None:
    pytest.importorskip("torch")
    path = _CONFIG_DIR / "clip_tiny_pretrain.yaml"
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_yaml(path, [item])


def test_a_config_asks_only_what_the_model_family_does() -> None:
    """The family's capabilities decide: ATAT has no contrastive objective and no frozen
    towers; CLIP neither starts from an .onnx file nor runs the render pretraining."""
    pytest.importorskip("torch")
    atat = _CONFIG_DIR / "atat_tiny.yaml"
    clip = _CONFIG_DIR / "clip_tiny_finetune.yaml"
    refused = [
        (atat, ["training.objective=contrastive"], "not for 'atat_tiny' models"),
        (atat, ["model.init_from=runs/x", "model.freeze=true"], "model.freeze is not for"),
        (clip, ["model.init_from=m.onnx"], "cannot start from an .onnx file"),
        (clip, ["model.init_from=null", "training.render_pretrain.epochs=1"], "render_pretrain"),
    ]
    for path, overrides, message in refused:
        with pytest.raises(ValueError, match=message):
            TrainConfig.from_yaml(path, overrides)


def test_shared_data_variable_is_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASTROCLF_SHARED_DATA", "/data/x")
    cfg = TrainConfig.from_yaml(CONFIGS[0])
    assert cfg.data.light_curves.startswith("/data/x/lightcurves/")
    monkeypatch.delenv("ASTROCLF_SHARED_DATA")
    assert expand_path("${ASTROCLF_SHARED_DATA}/a") == "../shared/data/a"


# -- overrides ---------------------------------------------------------------------------


def test_overrides_reach_nested_fields_with_yaml_values(tmp_path: Path) -> None:
    path = CONFIGS[0]
    cfg = TrainConfig.from_yaml(
        path,
        [
            "training.epochs=2",
            "data.max_objects=300",
            "data.truncation_days=[4, .inf]",
            "data.holdout_fold=null",
            "preprocessing.bands=[g, r]",
            "preprocessing.light_curve_features=false",
            "preprocessing.masked_features=[]",  # no light-curve features left to mask
            "model.init_from=null",  # model.args and a warm start exclude each other
            "model.args.d_model=32",
            "export.description=a=b",  # only the first '=' separates key and value
        ],
    )
    assert cfg.training.epochs == 2
    assert cfg.preprocessing.masked_features == ()
    assert cfg.data.max_objects == 300
    assert cfg.data.truncation_days == [4.0, math.inf]
    assert cfg.data.holdout_fold is None
    assert cfg.preprocessing.bands == ("g", "r")
    assert cfg.preprocessing.light_curve_features is False
    assert cfg.model.args == {"d_model": 32}
    assert cfg.export.description == "a=b"
    # Fields not overridden keep their file values.
    assert cfg.training.batch_size == TrainConfig.from_yaml(path).training.batch_size


def test_apply_override_creates_missing_sections() -> None:
    raw: dict = {}
    apply_override(raw, "training.learning_rate=0.0001")
    apply_override(raw, " model.args.n_heads = 8")
    assert raw == {"training": {"learning_rate": 1e-4}, "model": {"args": {"n_heads": 8}}}


def test_exponent_without_a_dot_still_validates_as_a_number() -> None:
    # YAML 1.1 reads "1e-4" as a string; pydantic turns it into the float for typed fields.
    cfg = TrainConfig.from_yaml(CONFIGS[0], ["training.learning_rate=1e-4"])
    assert cfg.training.learning_rate == 1e-4


@pytest.mark.parametrize(
    "item",
    [
        "training.epochs",  # no '='
        "training.epochs.value=3",  # epochs is a number, not a section
        "data.metadata.path=x",  # metadata is null in MINIMAL's copy below, not a section
    ],
)
def test_malformed_overrides_raise(item: str) -> None:
    raw = yaml.safe_load(yaml.safe_dump(MINIMAL))
    raw["training"] = {"epochs": 3}
    raw["data"]["metadata"] = None
    with pytest.raises(ValueError, match="override"):
        apply_override(raw, item)


@pytest.mark.parametrize(
    "item",
    [
        "training.epochs=0",  # below the minimum
        "training.epochs=many",  # not a number
        "training.device=tpu",  # not one of the choices
        "data.format=fits",  # not a known input format
        "preprocessing.bands=[g, q]",  # unknown band
    ],
)
def test_overrides_with_invalid_values_fail_validation(item: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        TrainConfig.from_yaml(CONFIGS[0], [item])


@pytest.mark.parametrize(
    "item",
    ["training.epochz=3", "data.lightcurves=x.csv", "preprocessing.max_len=8", "extra.key=1"],
)
def test_unknown_fields_are_rejected(item: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="Extra inputs are not permitted"):
        TrainConfig.from_yaml(CONFIGS[0], [item])


def test_unknown_field_in_a_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "training": {"epoch": 3}}))
    with pytest.raises(pydantic.ValidationError, match="epoch"):
        TrainConfig.from_yaml(path)


def test_required_sections_are_required(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(pydantic.ValidationError, match="data"):
        TrainConfig.from_yaml(path)
    path.write_text(yaml.safe_dump(MINIMAL))
    assert TrainConfig.from_yaml(path).model.name == "atat"  # defaults fill the rest


def test_config_is_frozen() -> None:
    cfg = TrainConfig.from_yaml(CONFIGS[0])
    with pytest.raises(pydantic.ValidationError):
        cfg.training.epochs = 1  # type: ignore[misc]
