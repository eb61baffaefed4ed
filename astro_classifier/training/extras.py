"""A model's extra data inputs for a training data set: spectra and alert stamps.

A family declares its extra graph inputs (:meth:`Family.extra_inputs
<astro_classifier.families.base.Family.extra_inputs>`); the data inputs among them are read
here by name, for every object of a :class:`TrainingDataset`, as :data:`ExtraInputs`: per
input, its array for every object and whether the object has it.

- ``spectrum``: the spectra of every source of the config whose format has them
  (:data:`~astro_classifier.formats.registry.SPECTRA_FORMATS`), one per object, attached to the
  run's dataset.h5 (:meth:`TrainingDataset.attach_spectra`), resampled and normalised onto the
  model's grid (``spectrum_grid``) by :func:`astro_classifier.features.spectra.model_input`.
  Alerts carry no spectrum: validation and hold-out are scored without them.
- ``image``: the stamps of each object's alert, decoded from every source whose format
  carries cutouts and attached to dataset.h5 (:meth:`TrainingDataset.attach_cutouts`). Alerts
  carry their stamps (:data:`ALERT_INPUTS`), so they are fed in validation and hold-out too.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from torch import nn

from astro_classifier.core.cutouts import CutoutBatch
from astro_classifier.core.spectra import Spectra
from astro_classifier.families.base import Family
from astro_classifier.features.spectra import model_input
from astro_classifier.formats.registry import SPECTRA_FORMATS, read_cutouts_of, read_spectra_of
from astro_classifier.training.config import TrainConfig
from astro_classifier.training.dataset import TrainingDataset

# input name -> (its array for every dataset object, (N,) bool: the object has it)
ExtraInputs = dict[str, tuple[np.ndarray, np.ndarray]]
ALERT_INPUTS = ("image",)  # extra inputs every alert carries (scored with them)
DATA_INPUTS = ("spectrum", "image")  # the extra data inputs read here


def data_input_names(specs: list[dict[str, Any]]) -> list[str]:
    """The data inputs among a family's extra inputs (the presence flags aside)."""
    return [s["name"] for s in specs if s["name"] in DATA_INPUTS]


def read_config_spectra(cfg: TrainConfig) -> Spectra:
    """Spectra of the config's sources whose format has them (none for the others)."""
    sources = [(cfg.data.format, cfg.data.light_curves)]
    sources += [(s.format, s.path) for s in cfg.data.extra_sources]
    parts = [read_spectra_of([path], fmt) for fmt, path in sources if fmt in SPECTRA_FORMATS]
    return Spectra.concat(parts)


def read_config_cutouts(cfg: TrainConfig) -> CutoutBatch:
    """Stamps of every alert of the config's sources (sources without any contribute none)."""
    sources = [(cfg.data.format, cfg.data.light_curves)]
    sources += [(s.format, s.path) for s in cfg.data.extra_sources]
    return CutoutBatch.concat([read_cutouts_of([path], fmt) for fmt, path in sources])


def attach(cfg: TrainConfig, ds: TrainingDataset, names: list[str], run_dir: Path) -> None:
    """Read the data inputs ``names`` the dataset lacks and save it (export reads them)."""
    if "spectrum" in names and ds.spectra is None:
        ds.attach_spectra(read_config_spectra(cfg))
        ds.save(run_dir / "dataset.h5")
    if "image" in names and ds.images is None:
        ds.attach_cutouts(read_config_cutouts(cfg))
        ds.save(run_dir / "dataset.h5")


def spectrum_inputs(ds: TrainingDataset, grid: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Every object's spectrum on the model's grid (NaN: none) and whether it has one; None
    when the dataset has no spectra."""
    if ds.spectra is None or len(ds.spectra) == 0:
        return None
    arr, usable, _ = model_input(ds.spectra, grid)
    row = np.asarray(ds.spectrum_row, np.int64)
    has = row >= 0
    has[has] = usable[row[has]]
    out = np.full((len(ds), *arr.shape[1:]), np.nan, np.float32)
    out[has] = arr[row[has]]
    return out, has


def image_inputs(ds: TrainingDataset) -> tuple[np.ndarray, np.ndarray] | None:
    """Every object's stamps and whether they are usable; None when the dataset has none."""
    if ds.images is None:
        return None
    return ds.images, np.asarray(ds.image_ok, bool)


def dataset_extras(ds: TrainingDataset, names: list[str], metadata: dict[str, Any]) -> ExtraInputs:
    """The data inputs ``names`` of every object of ``ds`` that the dataset has
    (``metadata``: the family's metadata fields, ``spectrum_grid`` for spectra)."""
    out: ExtraInputs = {}
    for name in names:
        if name == "spectrum":
            found = spectrum_inputs(ds, metadata["spectrum_grid"])
        elif name == "image":
            found = image_inputs(ds)
        else:
            raise ValueError(f"no training data for the model input {name!r}")
        if found is not None:
            out[name] = found
    return out


def alert_extras(extras: ExtraInputs) -> ExtraInputs:
    """The extras alerts carry (images), for scoring as alerts arrive."""
    return {k: v for k, v in extras.items() if k in ALERT_INPUTS}


def describe(ds: TrainingDataset, extras: ExtraInputs, console: Console) -> None:
    """Print how many objects have each extra input."""
    if "spectrum" in extras:
        console.print(
            f"spectra: {int(extras['spectrum'][1].sum())} of {len(ds)} objects have one on "
            f"the model grid (refused by the readers: {ds.spectra.dropped})"
        )
    if "image" in extras:
        failed = dict(Counter(f.split(":")[0] for f in ds.image_failure[~ds.image_ok]))
        console.print(
            f"images: {int(ds.image_ok.sum())} of {len(ds)} objects have usable stamps"
            + (f" (not: {failed})" if failed else "")
        )


def model_extras(family: Family, model: nn.Module, ds: TrainingDataset) -> ExtraInputs:
    """The extra data inputs ``model`` reads, for every object of ``ds`` that has them."""
    names = data_input_names(family.extra_inputs(model))
    return dataset_extras(ds, names, family.metadata_extras(model))
