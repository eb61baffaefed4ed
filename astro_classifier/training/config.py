"""Training configuration (YAML, validated by pydantic). Imports no torch.

Paths may use ``${ASTROCLF_SHARED_DATA}``, which defaults to ``../shared/data`` (relative to
the working directory) when the variable is unset. ``--set key.sub=value`` overrides any
field from the command line.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from astro_classifier.features.preprocess import PreprocessingSpec
from astro_classifier.features.render import PROCESSINGS
from astro_classifier.formats.registry import FORMATS

SHARED_DATA_DEFAULT = "../shared/data"


def expand_path(value: str) -> str:
    env = dict(os.environ)
    env.setdefault("ASTROCLF_SHARED_DATA", SHARED_DATA_DEFAULT)
    out = value
    for key, val in env.items():
        out = out.replace("${" + key + "}", val)
    return out


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(_Strict):
    name: str = Field("atat", description="registered architecture (see families/registry.py)")
    args: dict[str, Any] = Field(default_factory=dict, description="architecture overrides")
    init_from: str | None = Field(
        None,
        description="fine-tune: a run directory whose run.json + weights.pt start this model, "
        "or an exported ATAT model (.onnx) to warm-start from (its architecture is used; "
        "model.args must then be empty)",
    )
    freeze: bool = Field(False, description="with init_from: train only the classifier head")

    @field_validator("init_from")
    @classmethod
    def _expand(cls, value: str | None) -> str | None:
        return None if value is None else expand_path(value)


class AugmentSection(_Strict):
    """Augmented copies of a source's objects (see training/augment.py)."""

    target: Literal["ztf", "fainter", "difference"] = Field(
        ...,
        description="ztf: ZTF distances, depth and noise; fainter: higher redshift at the "
        "same depth; difference: band medians subtracted (total -> difference flux)",
    )
    copies: int = Field(3, ge=1, le=20)
    keep_original: bool = True
    peak_mag: tuple[float, float] = (14.5, 20.0)
    limit_mag: tuple[float, float] = (19.8, 20.8)
    alert_like_fraction: float = Field(0.5, ge=0, le=1)
    max_redshift_factor: float = Field(2.5, ge=1)
    max_dimming: float = Field(1.5, ge=0)
    seed: int = 0


def known_processings(names: list[str]) -> list[str]:
    """``names`` if every one is a processing of features/render.py (and there is one)."""
    unknown = [n for n in names if n not in PROCESSINGS]
    if unknown or not names:
        raise ValueError(f"unknown processing(s) {unknown}; known: {list(PROCESSINGS)}")
    return names


class RenderSection(_Strict):
    """Copies of a source's objects re-rendered in other processings (features/render.py), each
    copy in one processing drawn at random, so that no class owns a processing."""

    copies: int = Field(2, ge=1, le=20)
    processings: list[str] = Field(
        ["alert", "forced", "detections", "sparse"],
        description="processings drawn from (features/render.py PROCESSINGS)",
    )
    baseline: bool = Field(
        False,
        description="transients: forced copies get a pre-explosion baseline of zero-signal epochs",
    )
    max_per_class: int | None = Field(
        None,
        ge=1,
        description="balance sources within a class: at most this many objects per class of "
        "this source get rendered copies (the rest are kept as read)",
    )
    seed: int = 0

    @field_validator("processings")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        return known_processings(names)


class SourceSection(_Strict):
    """One more labelled data set, read through the format registry."""

    path: str
    format: Literal[FORMATS] | None = Field(  # type: ignore[valid-type]
        None, description="input format (detected when omitted)"
    )
    metadata: str | None = None
    split: Literal["all", "real-sky-train"] = Field(
        "all",
        description="real-sky-train: only the objects outside the real-sky test split "
        "(catalogs/splits.py real_sky_split), so that benchmarks/real_sky.py reports unseen objects",
    )
    augment: AugmentSection | None = None
    render: RenderSection | None = None
    max_objects: int | None = Field(
        None, ge=1, description="a stratified subsample of this source (balance sources)"
    )

    @field_validator("path", "metadata")
    @classmethod
    def _expand(cls, value: str | None) -> str | None:
        return None if value is None else expand_path(value)


class DataSection(_Strict):
    format: Literal[FORMATS] = "plasticc"  # type: ignore[valid-type]
    light_curves: str
    metadata: str | None = None
    augment: AugmentSection | None = Field(None, description="augmented copies of the main set")
    render: RenderSection | None = Field(
        None, description="copies of the main set rendered in other processings"
    )
    extra_sources: list[SourceSection] = Field(
        default_factory=list, description="more labelled sets, e.g. real-sky train splits"
    )
    label_map: dict[str, str] = Field(
        default_factory=dict, description="label renames applied to every source, e.g. Mira: LPV"
    )
    classes: list[str] | None = Field(
        None, description="keep only objects of these classes (after label_map); all when null"
    )
    alert_label: Literal["solar_system", "point_source", "real"] | None = Field(
        None,
        description="unlabelled alert sources: label each alert by what it provides itself "
        '(core/cutouts.py ALERT_LABELS: ZTF ssdistnr < 5" -> SolarSystem, sgscore1 > 0.5 and '
        'distpsnr1 < 1" -> PointSource, drb > 0.5 -> Real, else the negative class)',
    )
    max_objects: int | None = Field(None, ge=10, description="stratified subsample, for quick runs")
    n_folds: int = Field(5, ge=2, description="stratified folds over the labelled objects")
    holdout_fold: int | None = Field(
        0, description="fold never trained on, evaluated at the end (null: train on all folds)"
    )
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="of the rest, for early stopping")
    seed: int = 0
    label_fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description="share of the training split's labels used (stratified, at least one "
        "object per class); validation and hold-out stay whole",
    )
    truncation_days: list[float] = Field(
        [8, 16, 32, 64, 128, 256, 512, math.inf],
        description="days after first detection at which features are precomputed; inf = whole curve",
    )

    @field_validator("truncation_days")
    @classmethod
    def _whole_curve_last(cls, days: list[float]) -> list[float]:
        if any(not d > 0 for d in days):
            raise ValueError(f"truncation days must be positive, got {days}")
        if math.inf not in days:
            raise ValueError(
                f"truncation_days {days} must include .inf (the whole light curve, used for "
                "validation and export)"
            )
        return days

    @field_validator("light_curves", "metadata")
    @classmethod
    def _expand(cls, value: str | None) -> str | None:
        return None if value is None else expand_path(value)


class RenderPretrainSection(_Strict):
    """Contrastive pretraining on pairs of renderings before the supervised epochs
    (training/contrastive.py); 0 epochs = off."""

    epochs: int = Field(0, ge=0)
    processings: list[str] = Field(
        ["as-read", "alert", "forced", "detections", "sparse", "rubin"],
        description="processings the two views of an object are drawn from (features/render.py)",
    )
    temperature: float = Field(0.2, gt=0)
    learning_rate: float = Field(1e-3, gt=0)

    @field_validator("processings")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        return known_processings(names)


class TrainingSection(_Strict):
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(128, ge=2)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    warmup_epochs: int = Field(2, ge=0)
    patience: int = Field(12, ge=1, description="epochs without better validation macro F1")
    time_limit_minutes: float | None = Field(
        None, gt=0, description="stop after this much training time"
    )
    class_balance: Literal["weights", "none"] = "weights"
    truncation_probability: float = Field(
        0.5, ge=0, le=1, description="chance that a training light curve is cut at a random time"
    )
    objective: Literal["classify", "contrastive"] = Field(
        "classify",
        description="classify: cross-entropy on labels; contrastive: pretraining without "
        "labels on every non-hold-out object (models whose family has it: CLIP)",
    )
    render_pretrain: RenderPretrainSection = RenderPretrainSection()
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: all)")
    seed: int = 0


class ExportSection(_Strict):
    name: str = Field(..., description="model name written into the ONNX metadata")
    version: str = "0.1.0"
    description: str = ""


class TrainConfig(_Strict):
    model: ModelSection = ModelSection()
    data: DataSection
    preprocessing: PreprocessingSpec = PreprocessingSpec()
    training: TrainingSection = TrainingSection()
    export: ExportSection

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        for item in overrides or []:
            apply_override(raw, item)
        cfg = cls.model_validate(raw)
        cfg.check_model()
        return cfg

    def check_model(self) -> None:
        """Refuse an unknown model name or argument, or what the model's family cannot do
        (an objective, ``model.freeze``, a warm start from an exported file, the render
        pretraining): ValueError. Needs torch (the registry builds models); skipped without
        it."""
        try:  # the registry builds models with torch (the `train` extra); a config does not
            from astro_classifier.families.registry import check_model_args, get_entry
        except ImportError:  # no torch: nothing can be trained anyway
            return
        name = self.model.name
        check_model_args(name, self.model.args)
        family = get_entry(name).family
        if self.training.objective not in family.objectives:
            raise ValueError(
                f"training.objective {self.training.objective} is not for {name!r} models "
                f"(they train with {list(family.objectives)})"
            )
        if self.model.init_from is not None and self.model.args:
            raise ValueError("model.args must be empty with model.init_from (its run rules)")
        if self.model.freeze and self.model.init_from is None:
            raise ValueError("model.freeze needs model.init_from (a pretrained run)")
        if self.model.freeze and not family.freezable:
            raise ValueError(f"model.freeze is not for {name!r} models (a head on frozen towers)")
        init = self.model.init_from
        if init is not None and init.endswith(".onnx") and not family.onnx_warm_start:
            raise ValueError(f"model.init_from: {name!r} models cannot start from an .onnx file")
        if self.training.render_pretrain.epochs and not family.render_pretraining:
            raise ValueError(f"training.render_pretrain is not for {name!r} models")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply ``key.sub=value`` (value parsed as YAML) to a raw config dict, in place."""
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like key.sub=value")
    key, value = item.split("=", 1)
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {item!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(value)
