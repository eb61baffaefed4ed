"""Model registry: a name -> builder map, so configs and tests build models by name.

Builders take the data-dependent sizes (classes, bands, features) and keyword overrides of
the architecture; tiny variants exist so tests train in seconds.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from typing import Any

from torch import nn

from astro_classifier.training.atat import ATAT, ATATConfig

ModelBuilder = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    def decorate(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = builder
        return builder

    return decorate


def list_models() -> list[str]:
    return sorted(_REGISTRY)


# Architecture arguments a config may set, per registered model (sizes come from the data).
_ARGUMENTS: dict[str, type] = {}
_DATA_SIZES = ("n_classes", "n_bands", "n_features")


def check_model_args(name: str, args: dict[str, Any]) -> None:
    """Refuse an unknown model name or argument (with the closest valid name) before any
    data is read; ValueError says what is allowed."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list_models(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"model.name: unknown model {name!r}{hint}; registered: {list_models()}")
    allowed = [f.name for f in dataclasses.fields(_ARGUMENTS[name]) if f.name not in _DATA_SIZES]
    for key in args:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"model.args: unknown argument {key!r} for model {name!r}{hint}; allowed: {allowed}"
            )


def create_model(
    name: str, *, n_classes: int, n_bands: int, n_features: int, **overrides: Any
) -> nn.Module:
    """Build the registered model ``name``; ``overrides`` replace its architecture defaults."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {list_models()}")
    return _REGISTRY[name](n_classes=n_classes, n_bands=n_bands, n_features=n_features, **overrides)


_ARGUMENTS.update(atat=ATATConfig, atat_tiny=ATATConfig)


@register_model("atat")
def atat(**kwargs: Any) -> ATAT:
    """ATAT as shipped: d_model 64, 3 light-curve and 2 tabular layers."""
    return ATAT(ATATConfig(**kwargs))


@register_model("atat_tiny")
def atat_tiny(**kwargs: Any) -> ATAT:
    """A tiny ATAT for tests (trains in seconds on a CPU)."""
    defaults: dict[str, Any] = dict(
        d_model=16, n_heads=2, lc_layers=1, tab_layers=1, n_harmonics=4, n_quantiles=16
    )
    return ATAT(ATATConfig(**{**defaults, **kwargs}))
