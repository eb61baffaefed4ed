"""Model registry: name -> :class:`ModelEntry` (its family and the variant's defaults).

An entry carries its :class:`~astro_classifier.families.base.Family` (config class, builder,
loss, export form, serving-side inputs: everything training, export and serving ask of a
model) and ``defaults``, the architecture overrides of the variant (tiny variants for tests).
Every field of the family's config but the data sizes (``data_fields``: classes, bands,
features, ... taken from the data) may be set in a training config's ``model.args``; an unknown
argument is refused when the config is loaded (:func:`check_model_args`, called by
``TrainConfig.from_yaml``).

:func:`build_model` rebuilds a model from its registered name and full architecture config
(what a run record and a model's metadata hold).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from astro_classifier.families.atat import ATATFamily
from astro_classifier.families.base import Family
from astro_classifier.families.clip import CLIP_TINY, ClipFamily


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: Family
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def config_cls(self) -> type:
        return self.family.config_cls

    def arguments(self) -> list[str]:
        """Architecture arguments a config may set (``model.args``)."""
        return [
            f.name
            for f in dataclasses.fields(self.config_cls)
            if f.name not in self.family.data_fields
        ]

    def make_config(self, **kwargs: Any) -> Any:
        return self.config_cls(**{**self.defaults, **kwargs})


_REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list_models(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"model.name: unknown model {name!r}{hint}; registered: {list_models()}")
    return _REGISTRY[name]


def family_of(name: str) -> Family:
    return get_entry(name).family


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
    ``n_features``, ``feature_names``) and architecture overrides; data sizes the
    architecture does not take are ignored."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {list_models()}")
    entry = _REGISTRY[name]
    known = {f.name for f in dataclasses.fields(entry.config_cls)}
    sizes = ("n_classes", "n_bands", "n_features", "feature_names")
    kwargs = {k: v for k, v in kwargs.items() if k in known or k not in sizes}
    return entry.family.build(entry.make_config(**kwargs))


def build_model(name: str, config: dict[str, Any], source: str = "") -> nn.Module:
    """A freshly initialised ``name`` from its full architecture config; unknown keys are
    refused (``source`` names where the config came from)."""
    entry = get_entry(name)
    known = {f.name for f in dataclasses.fields(entry.config_cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"{source}: unknown config keys {unknown} for model {name!r}")
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return entry.family.build(entry.config_cls(**config))


# -- entries -----------------------------------------------------------------------------

_ATAT_TINY = dict(d_model=16, n_heads=2, lc_layers=1, tab_layers=1, n_harmonics=4, n_quantiles=16)
ATAT_FAMILY = ATATFamily()
CLIP_FAMILY = ClipFamily()

register(ModelEntry("atat", ATAT_FAMILY, description="ATAT as shipped: d_model 64"))
register(ModelEntry("atat_tiny", ATAT_FAMILY, _ATAT_TINY, description="tiny ATAT for tests"))
register(ModelEntry("clip", CLIP_FAMILY, description="multimodal CLIP, d_model 64"))
register(ModelEntry("clip_tiny", CLIP_FAMILY, CLIP_TINY, description="tiny CLIP for tests"))
