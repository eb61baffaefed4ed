"""Model registry: name -> :class:`ModelEntry` (config class, builder, what training needs).

An entry carries

- ``config_cls``: the architecture's config dataclass; every field but the data sizes
  (``data_fields``: classes, bands, features, ... taken from the data) may be set in a
  training config's ``model.args``; an unknown argument is refused when the config is loaded
  (:func:`check_model_args`, called by ``TrainConfig.from_yaml``);
- ``builder``: config instance -> ``nn.Module``;
- ``defaults``: architecture overrides of the variant (tiny variants for tests);
- ``heads``: the keys of ``model.forward_logits(...)`` whose cross-entropies training sums;
- ``fit``: what is fitted on training data before the first step (ATAT and CLIP: the
  quantile tables of the feature tokenizer), called as ``fit(model, train_features)`` with
  the (N, F) raw tabular values of the training objects;
- ``family``: ``"atat"`` (supervised light curve + tabular) or ``"clip"`` (multimodal,
  contrastive pretraining then classification, see :mod:`astro_classifier.families.clip`).

Run directories hold ``model.yaml`` (:func:`model_yaml`: name + full config) beside
``weights.pt`` (a plain ``state_dict``); :func:`load_model_dir` rebuilds the model from them
alone (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from astro_classifier.families.atat import ATAT, ATATConfig
from astro_classifier.families.clip import CLIP, CLIP_TINY, ClipConfig, fit_clip

MODEL_YAML = "model.yaml"
WEIGHTS = "weights.pt"


def _fit_quantiles(model: nn.Module, features: torch.Tensor) -> None:
    if getattr(model, "has_tabular", False):
        model.tab_tokens.fit_quantiles(features)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    config_cls: type
    builder: Callable[[Any], nn.Module]
    defaults: dict[str, Any] = field(default_factory=dict)
    heads: tuple[str, ...] = ("lc", "tab", "mix")
    fit: Callable[[nn.Module, torch.Tensor], None] = _fit_quantiles
    family: str = "atat"
    data_fields: tuple[str, ...] = ("n_classes", "n_bands", "n_features")
    description: str = ""

    def arguments(self) -> list[str]:
        """Architecture arguments a config may set (``model.args``)."""
        return [
            f.name for f in dataclasses.fields(self.config_cls) if f.name not in self.data_fields
        ]

    def make_config(self, **kwargs: Any) -> Any:
        return self.config_cls(**{**self.defaults, **kwargs})


_REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def register_model(
    name: str, config_cls: type = ATATConfig, **entry: Any
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator form: register ``builder(**config_kwargs)`` under ``name``."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        register(
            ModelEntry(name, config_cls, lambda cfg: builder(**dataclasses.asdict(cfg)), **entry)
        )
        return builder

    return decorate


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list_models(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"model.name: unknown model {name!r}{hint}; registered: {list_models()}")
    return _REGISTRY[name]


def check_model_args(name: str, args: dict[str, Any]) -> None:
    """Refuse an unknown model name or argument (with the closest valid name) before any
    data is read; ValueError says what is allowed."""
    allowed = get_entry(name).arguments()
    for key in args:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"model.args: unknown argument {key!r} for model {name!r}{hint}; allowed: {allowed}"
            )


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` from data sizes (``n_classes``, ``n_bands``,
    ``n_features``, and for CLIP ``feature_names``) and architecture overrides; data sizes
    the architecture does not take are ignored."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {list_models()}")
    entry = _REGISTRY[name]
    known = {f.name for f in dataclasses.fields(entry.config_cls)}
    sizes = ("n_classes", "n_bands", "n_features", "feature_names")
    kwargs = {k: v for k, v in kwargs.items() if k in known or k not in sizes}
    return entry.builder(entry.make_config(**kwargs))


def model_yaml(name: str, model: nn.Module) -> str:
    """The YAML of ``model.yaml``: registered name and the full architecture config."""
    config = dataclasses.asdict(model.cfg)
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    return yaml.safe_dump({"name": name, "config": config}, sort_keys=False)


def save_model_dir(run_dir: Path, name: str, model: nn.Module, state: dict | None = None) -> None:
    """Write ``model.yaml`` and ``weights.pt`` (``state`` or the model's state_dict)."""
    (run_dir / MODEL_YAML).write_text(model_yaml(name, model))
    state = state if state is not None else model.state_dict()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, run_dir / WEIGHTS)


def build_from_yaml(path: Path) -> tuple[str, nn.Module]:
    """(name, freshly initialised model) from a ``model.yaml``; unknown keys are refused."""
    raw = yaml.safe_load(Path(path).read_text())
    entry = get_entry(raw["name"])
    known = {f.name for f in dataclasses.fields(entry.config_cls)}
    unknown = sorted(set(raw["config"]) - known)
    if unknown:
        raise ValueError(f"{path}: unknown config keys {unknown} for model {raw['name']!r}")
    config = {
        k: tuple(v) if isinstance(v, list) else v for k, v in raw["config"].items()
    }  # dataclass tuples come back from YAML lists
    return raw["name"], entry.builder(entry.config_cls(**config))


def load_model_dir(run_dir: Path) -> tuple[str, nn.Module]:
    """(name, model in eval mode) rebuilt from ``model.yaml`` + ``weights.pt`` alone."""
    name, model = build_from_yaml(Path(run_dir) / MODEL_YAML)
    state = torch.load(Path(run_dir) / WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return name, model.eval()


# -- entries -----------------------------------------------------------------------------

_ATAT_TINY = dict(d_model=16, n_heads=2, lc_layers=1, tab_layers=1, n_harmonics=4, n_quantiles=16)

register(ModelEntry("atat", ATATConfig, ATAT, description="ATAT as shipped: d_model 64"))
register(
    ModelEntry(
        "atat_tiny", ATATConfig, ATAT, defaults=_ATAT_TINY, description="tiny ATAT for tests"
    )
)


def _register_clip() -> None:
    common = dict(
        config_cls=ClipConfig,
        builder=CLIP,
        heads=("mix",),
        fit=fit_clip,
        family="clip",
        data_fields=("n_classes", "n_bands", "feature_names"),
    )
    register(ModelEntry("clip", description="multimodal CLIP, d_model 64", **common))
    register(
        ModelEntry("clip_tiny", defaults=CLIP_TINY, description="tiny CLIP for tests", **common)
    )


_register_clip()
