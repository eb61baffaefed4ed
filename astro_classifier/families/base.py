"""A model family: what training, export and serving need to know about an architecture.

Every registered model (:mod:`.registry`) points to one :class:`Family`. Nothing outside
``families/`` asks which family a model belongs to: the training loop, the export and serving
call these members instead.

Building and fitting:

- ``config_cls``, ``data_fields``: the architecture's config dataclass and its fields that come
  from the data (classes, bands, features); :meth:`Family.build` turns a config into the torch
  module; :meth:`Family.fit` fits what is fitted on the training split's raw tabular values
  before the first step (the feature tokenizers' quantile tables);
- :meth:`Family.start_from`: the model a run directory's model starts (``model.init_from``),
  refusing one that does not fit the data;
- capabilities a config may ask for, checked when it is loaded: ``objectives`` (``classify``:
  cross-entropy on labels; ``contrastive``: self-supervised pretraining), ``freezable``
  (``model.freeze``: a head trained on frozen towers), ``onnx_warm_start`` (``init_from`` an
  exported .onnx file), ``render_pretraining`` (``training.render_pretrain``, which trains
  :meth:`Family.representation`).

Training (:mod:`astro_classifier.training.loop`): :meth:`Family.loss` is the loss of a
:class:`Batch` that the one loop optimises, with the value it reports;
:meth:`Family.probabilities` scores validation and hold-out objects; :meth:`Family.embed`
gives the embeddings contrastive pretraining is judged by.

Export (:mod:`astro_classifier.export`): :meth:`Family.export_outputs` is the export form, the
graph's (embedding, logits, further outputs) from its inputs by name, with ``export_form``
passed explicitly to the modules (True in the traced graph, False for the torch reference the
parity check compares with); :meth:`Family.extra_inputs` are the graph inputs after the
:class:`~astro_classifier.features.preprocess.ModelInputs` arrays, written into the model's
metadata, from which serving learns them (data inputs such as ``spectrum`` and ``image``, and
one presence flag ``has_<modality>`` per modality); :meth:`Family.metadata_extras` are further
metadata fields; ``gaussian_ood`` (fit the class-Gaussian OOD score on the embedding, else the
energy score), ``fp16`` (a float16 export exists) and ``parity_tolerance`` (one limit for
every output, else the export's defaults) choose what the export does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from astro_classifier.features.preprocess import ModelInputs

CLASSIFY = "classify"
CONTRASTIVE = "contrastive"
PRESENCE_PREFIX = "has_"  # a presence flag input: has_<modality> (B,) bool


@dataclass
class Batch:
    """One batch as the training loop hands it to a family.

    ``inputs``: the :class:`ModelInputs` arrays as tensors, and the model's extra data inputs
    (``spectrum``, ``image``) where the data set has them; ``available``: per extra data input,
    (B,) bool, whether the object has it; ``target``: class indices (supervised objectives);
    ``class_weight``: the cross-entropy's class weights, or None."""

    inputs: dict[str, torch.Tensor]
    available: dict[str, torch.Tensor] = field(default_factory=dict)
    target: torch.Tensor | None = None
    class_weight: torch.Tensor | None = None

    @property
    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The ModelInputs arrays alone."""
        return {name: self.inputs[name] for name in ModelInputs.names()}


@dataclass
class ExportOutputs:
    """What a family's export form computes: ``embedding`` (B, D), ``logits`` (B, C) of the
    classifier head (None: an embedding-only model), and further named outputs, in order."""

    embedding: torch.Tensor
    logits: torch.Tensor | None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


def input_spec(name: str, dtype: str, shape: list[str | int]) -> dict[str, Any]:
    """A graph input as the metadata describes it (``InputSpec`` fields)."""
    return {"name": name, "dtype": dtype, "shape": shape}


def multi_head_loss(
    logits: dict[str, torch.Tensor],
    target: torch.Tensor,
    heads: tuple[str, ...],
    class_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Sum of the cross-entropies of the ``heads`` the model returned, and how many there were.

    The sum is what is optimised; divided by the count it is the per-head loss reported as
    ``train_loss`` (comparable with ``val_loss``, the loss of the served head).
    """
    used = [h for h in heads if h in logits]
    if not used:
        raise ValueError(f"the model returned none of the heads {list(heads)}: {list(logits)}")
    loss = sum(F.cross_entropy(logits[h], target, weight=class_weight) for h in used)
    return loss, len(used)


def model_config(model: nn.Module) -> dict[str, Any]:
    """A model's architecture config as plain JSON data (tuples as lists)."""
    config = dataclasses.asdict(model.cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


class Family:
    """The interface of a model family (see the module docstring); defaults for a
    supervised model with no extra inputs."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type]
    data_fields: ClassVar[tuple[str, ...]] = ("n_classes", "n_bands", "n_features")
    objectives: ClassVar[tuple[str, ...]] = (CLASSIFY,)
    freezable: ClassVar[bool] = False
    onnx_warm_start: ClassVar[bool] = False
    render_pretraining: ClassVar[bool] = False
    gaussian_ood: ClassVar[bool] = False
    fp16: ClassVar[bool] = False
    parity_tolerance: ClassVar[float | None] = None

    # -- building --------------------------------------------------------------------------

    def build(self, cfg: Any) -> nn.Module:
        raise NotImplementedError

    def fit(self, model: nn.Module, features: torch.Tensor) -> None:
        """Fit what is fitted on the training split's (N, F) raw tabular values."""

    def start_from(
        self,
        pretrained: nn.Module,
        n_classes: int,
        n_bands: int,
        n_features: int,
        feature_names: tuple[str, ...],
    ) -> nn.Module:
        """The model a pretrained one starts for these data sizes; ValueError if it cannot."""
        cfg = pretrained.cfg
        if (cfg.n_classes, cfg.n_bands, cfg.n_features) != (n_classes, n_bands, n_features):
            raise ValueError(
                f"it has {cfg.n_classes} classes, {cfg.n_bands} bands and {cfg.n_features} "
                f"features; the data {n_classes}, {n_bands} and {n_features}"
            )
        return pretrained

    def classifies(self, model: nn.Module) -> bool:
        """Whether the model has a classifier head (else it only embeds)."""
        return True

    # -- training --------------------------------------------------------------------------

    def trainable(self, model: nn.Module, freeze: bool) -> list[nn.Parameter]:
        """The parameters the optimiser updates (``freeze``: the head's alone)."""
        return list(model.parameters())

    def train_mode(self, model: nn.Module, freeze: bool) -> None:
        """Put the model in training mode for an epoch."""
        model.train()

    def loss(
        self,
        model: nn.Module,
        batch: Batch,
        objective: str,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, float]:
        """(loss to optimise, value reported as the batch's training loss). ``generator``:
        for a training step's random choices (None: evaluation, none made)."""
        raise NotImplementedError

    def probabilities(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Class probabilities (B, C) of the served head."""
        raise NotImplementedError

    def embed(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Named embeddings of the batch (contrastive pretraining's quality measures)."""
        return {"embedding": self.export_outputs(model, batch.inputs, False).embedding}

    def history_extras(self, model: nn.Module, objective: str) -> dict[str, Any]:
        """Further values recorded per epoch in the training history."""
        return {}

    def representation(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, D) what the render pretraining trains (``render_pretraining`` families)."""
        raise NotImplementedError

    def representation_width(self, model: nn.Module) -> int:
        raise NotImplementedError

    # -- export and serving ----------------------------------------------------------------

    def export_outputs(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], export_form: bool
    ) -> ExportOutputs:
        """The graph's outputs from its inputs by name (see the module docstring)."""
        raise NotImplementedError

    def extra_output_shapes(self, model: nn.Module) -> dict[str, list[str | int]]:
        """Shape of the ``embedding`` output and of each further output, by name."""
        return {"embedding": ["batch", "embedding"]}

    def extra_inputs(self, model: nn.Module) -> list[dict[str, Any]]:
        """Graph inputs after the ModelInputs ones (:func:`input_spec` dicts), in order."""
        return []

    def metadata_extras(self, model: nn.Module) -> dict[str, Any]:
        """Further ModelMetadata fields."""
        return {}

    def calibration_note(self, model: nn.Module, fed: list[str]) -> str:
        """What the calibration objects were fed, for the metadata (``fed``: the extra data
        inputs given where objects have them)."""
        return ""
