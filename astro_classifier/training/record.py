"""The run record: what a training run wrote about its model, typed, and its weights.

A run directory of `astroclf train` holds

- ``run.json``: the :class:`RunRecord` (registered model name, full architecture config,
  labels, preprocessing spec, training data, split, the objects the run saw, the export
  section of its config, validation and hold-out metrics, objective, truncation probability);
- ``weights.pt``: the best weights, a plain ``state_dict`` (``torch.load(weights_only=True)``),
  written once;

beside ``config.yaml``, ``dataset.h5``, ``metrics.json`` and the plots. :func:`load_run`
rebuilds the model from these two files alone.

Run directories written before the record existed hold ``checkpoint.pt`` (a dict of the same
fields with the weights, often beside ``model.yaml`` + ``weights.pt``): :func:`load_record` and
:func:`load_run` read them too (read-only; nothing is converted on disk).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from astro_classifier.core.errors import ModelError
from astro_classifier.families.base import CLASSIFY
from astro_classifier.families.registry import build_model
from astro_classifier.features.preprocess import PreprocessingSpec
from astro_classifier.training.config import ExportSection, TrainingSection

RECORD = "run.json"
WEIGHTS = "weights.pt"
LEGACY_CHECKPOINT = "checkpoint.pt"
LEGACY_MODEL_YAML = "model.yaml"


class DatasetInfo(BaseModel):
    """The training data set (``dataset.h5``): its sources, content hash and size."""

    source: str
    content_hash: str
    n_objects: int


class Split(BaseModel):
    """Rows of ``dataset.h5`` held out of training: validation (early stopping, calibration)
    and hold-out (final metrics)."""

    validation: list[int]
    holdout: list[int]


class RunRecord(BaseModel):
    """What a training run wrote about its model (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_name: str  # registered name (families.registry)
    architecture: dict[str, Any]  # the full config of the family's config class
    labels: list[str]  # class names, sorted; the model's output order
    spec: PreprocessingSpec
    dataset: DatasetInfo
    split: Split
    seen_object_ids: list[str] = Field(
        default_factory=list, description="objects training or validation read (leak checks)"
    )
    export: ExportSection
    metrics: dict[str, Any] = Field(default_factory=dict)  # validation / hold-out reports
    objective: str = CLASSIFY
    truncation_probability: float = TrainingSection.model_fields["truncation_probability"].default

    def save(self, run_dir: Path) -> None:
        (Path(run_dir) / RECORD).write_text(self.model_dump_json(indent=1))


def save_run(run_dir: Path, record: RunRecord, state: dict[str, torch.Tensor]) -> None:
    """Write ``run.json`` and ``weights.pt`` (``state`` on the CPU)."""
    record.save(run_dir)
    torch.save({k: v.detach().cpu() for k, v in state.items()}, Path(run_dir) / WEIGHTS)


def load_record(run_dir: Path) -> RunRecord:
    """The run's record: ``run.json``, or what ``checkpoint.pt`` holds in an older run."""
    run_dir = Path(run_dir)
    if (run_dir / RECORD).is_file():
        return RunRecord.model_validate_json((run_dir / RECORD).read_text())
    if (run_dir / LEGACY_CHECKPOINT).is_file():
        return _legacy_record(run_dir, _legacy_checkpoint(run_dir))
    raise FileNotFoundError(
        f"{run_dir / RECORD} not found: is {run_dir} a run directory of `astroclf train`?"
    )


def load_run(run_dir: Path) -> tuple[nn.Module, RunRecord]:
    """(model in eval mode with the run's best weights, record)."""
    run_dir = Path(run_dir)
    record = load_record(run_dir)
    model = build_model(record.model_name, record.architecture, str(run_dir))
    if (run_dir / WEIGHTS).is_file():
        state = torch.load(run_dir / WEIGHTS, map_location="cpu", weights_only=True)
    else:  # an older run that kept its weights in checkpoint.pt only
        state = _legacy_checkpoint(run_dir)["state_dict"]
    model.load_state_dict(state)
    return model.eval(), record


def _legacy_checkpoint(run_dir: Path) -> dict[str, Any]:
    try:  # plain data (tensors, lists, dicts, strings)
        return torch.load(run_dir / LEGACY_CHECKPOINT, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickles of anything else are refused
        raise ModelError(f"{run_dir / LEGACY_CHECKPOINT}: not a run checkpoint ({exc})") from exc


def _legacy_record(run_dir: Path, ckpt: dict[str, Any]) -> RunRecord:
    architecture = ckpt["model_config"]
    if (run_dir / LEGACY_MODEL_YAML).is_file():  # the registry's copy, when there is one
        architecture = yaml.safe_load((run_dir / LEGACY_MODEL_YAML).read_text())["config"]
    training = {}
    if (run_dir / "config.yaml").is_file():
        training = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("training")
    default = TrainingSection.model_fields["truncation_probability"].default
    return RunRecord(
        model_name=ckpt["model_name"],
        architecture=architecture,
        labels=ckpt["labels"],
        spec=ckpt["spec"],
        dataset=ckpt["dataset"],
        split=ckpt["split"],
        seen_object_ids=[str(i) for i in ckpt.get("seen_object_ids", [])],
        export=ckpt["export"],
        metrics=ckpt.get("metrics", {}),
        objective=(training or {}).get("objective", CLASSIFY),
        truncation_probability=float((training or {}).get("truncation_probability", default)),
    )
