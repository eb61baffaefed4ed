"""The exported graph of any model family: its export form, calibration and OOD score.

:class:`ExportGraph` wraps a model with its family's export form (:meth:`Family.export_outputs
<astro_classifier.families.base.Family.export_outputs>`): it takes the graph inputs in order
(the :class:`ModelInputs` arrays, then the family's extra inputs) and returns, in
:attr:`ExportGraph.output_names` order,

- ``probabilities`` = softmax(logits / T) and ``logits`` (raw) of the classifier head, T a
  constant of the graph (absent for an embedding-only model);
- ``embedding``, the family's embedding (ATAT: the vector the mixed head reads; CLIP: the
  fused embedding);
- ``ood``, the out-of-distribution score of :class:`GaussianOOD` on the embedding and logits,
  when the export fitted one;
- the family's further outputs (CLIP: ``embedding_<modality>`` per tower).

The network sits under ``model`` (initialisers ``model.<parameter>``), the temperature is the
initialiser ``temperature`` and the OOD tables ``ood.<table>``: what warm starts and re-exports
read back. ``export_form`` is passed to the family's modules: True for the traced graph, False
for the torch reference the parity check compares it with, or a family's named form (ATAT's
:data:`~astro_classifier.families.atat.DENSE_FORM`: the CUDA companion graph, without
data-dependent shapes) traced instead of the default one.

Also here: the metadata's description of a graph's inputs and outputs, its dynamic axes, and
the float16 conversion.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import torch

from astro_classifier.export.gaussian_ood import GaussianTables
from astro_classifier.families.base import ExportOutputs, Family
from astro_classifier.features.preprocess import ModelInputs
from astro_classifier.inference.model import (
    EMBEDDING_OUTPUT,
    OOD_MAHALANOBIS,
    OOD_MAHALANOBIS_ENERGY,
    OOD_OUTPUT,
    OOD_RELATIVE_MAHALANOBIS,
    InputSpec,
)

# The tables each graph OOD score reads (GaussianOOD buffers)
GAUSSIAN_BUFFERS = {
    OOD_MAHALANOBIS: ("transform", "means"),
    OOD_RELATIVE_MAHALANOBIS: ("transform", "means", "background_transform", "background_mean"),
    OOD_MAHALANOBIS_ENERGY: (
        "transform",
        "means",
        "distance_mean",
        "distance_std",
        "energy_mean",
        "energy_std",
    ),
}
CLASSIFIER_OUTPUTS = ["probabilities", "logits"]
DYNAMIC_AXES = ("batch", "length")  # symbolic input dimensions that vary between calls


class GaussianOOD(torch.nn.Module):
    """The OOD score ``kind`` of :mod:`astro_classifier.export.gaussian_ood` as graph
    operations, in float32: ``ood(embedding, logits)`` (B,). Its tables are buffers, graph
    initialisers named ``ood.<buffer>`` (:data:`GAUSSIAN_BUFFERS`), each used as it is so
    that the file keeps them under their names (a re-export reads them back)."""

    def __init__(self, kind: str, buffers: dict[str, np.ndarray]) -> None:
        super().__init__()
        if kind not in GAUSSIAN_BUFFERS:
            raise ValueError(f"no graph form for the OOD score {kind!r}")
        missing = [name for name in GAUSSIAN_BUFFERS[kind] if name not in buffers]
        if missing:
            raise ValueError(f"{kind}: tables {missing} missing")
        self.kind = kind
        for name in GAUSSIAN_BUFFERS[kind]:
            self.register_buffer(name, torch.tensor(np.asarray(buffers[name]), dtype=torch.float32))

    @classmethod
    def from_tables(cls, tables: GaussianTables, kind: str) -> GaussianOOD:
        buffers = {
            "transform": tables.transform,
            "means": tables.means,
            "background_transform": tables.background_transform,
            "background_mean": tables.background_mean,
        }
        if tables.distance_scale is not None and tables.energy_scale is not None:
            buffers |= {
                "distance_mean": tables.distance_scale.mean,
                "distance_std": tables.distance_scale.std,
                "energy_mean": tables.energy_scale.mean,
                "energy_std": tables.energy_scale.std,
            }
        return cls(kind, buffers)

    def forward(self, embedding: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        z = embedding @ self.transform  # (B, D)
        distance = torch.amin(((z.unsqueeze(1) - self.means) ** 2).sum(dim=-1), dim=1)
        if self.kind == OOD_RELATIVE_MAHALANOBIS:
            background = embedding @ self.background_transform - self.background_mean
            return distance - (background**2).sum(dim=-1)
        if self.kind == OOD_MAHALANOBIS_ENERGY:
            energy = -torch.logsumexp(logits, dim=-1)
            return (distance - self.distance_mean) / self.distance_std + (
                energy - self.energy_mean
            ) / self.energy_std
        return distance


class ExportGraph(torch.nn.Module):
    """A model's exported graph (see the module docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        family: Family,
        temperature: float = 1.0,
        ood: GaussianOOD | None = None,
        export_form: bool | str = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.family = family
        self.temperature_value = float(temperature)
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=torch.float32))
        self.ood = ood
        self.export_form = export_form
        self.input_names = ModelInputs.names() + [s["name"] for s in family.extra_inputs(model)]
        self.classifier = family.classifies(model)
        if ood is not None and not self.classifier:
            raise ValueError("an OOD score needs the classifier's logits")

    def traced(self, form: bool | str = True) -> ExportGraph:
        """The same graph (the same modules) computing the family's export form (``form``:
        True, the default one; or one the family names, e.g. ATAT's ``DENSE_FORM``)."""
        graph = ExportGraph(self.model, self.family, self.temperature_value, self.ood, form)
        return graph.eval()

    @property
    def output_names(self) -> list[str]:
        names = CLASSIFIER_OUTPUTS if self.classifier else []
        names = [*names, EMBEDDING_OUTPUT] + ([OOD_OUTPUT] if self.ood is not None else [])
        extra = [n for n in self.family.extra_output_shapes(self.model) if n != EMBEDDING_OUTPUT]
        return names + extra

    def outputs(self, **inputs: torch.Tensor) -> ExportOutputs:
        """The family's export form on the graph inputs by name."""
        return self.family.export_outputs(self.model, inputs, self.export_form)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.outputs(**dict(zip(self.input_names, tensors, strict=True)))
        result: tuple[torch.Tensor, ...] = ()
        if self.classifier:
            result += (torch.softmax(out.logits / self.temperature, dim=-1), out.logits)
        result += (out.embedding,)
        if self.ood is not None:
            result += (self.ood(out.embedding, out.logits),)
        return result + tuple(out.extra.values())

    # -- what the metadata says about it ---------------------------------------------------

    def input_specs(self) -> list[InputSpec]:
        """The graph's inputs: the ModelInputs arrays, then the family's extra inputs."""
        point = {"dtype": "float32", "shape": ["batch", "length"]}
        dtypes = {"band": "int64", "mask": "bool"}
        specs = [
            InputSpec(
                name=n,
                dtype=dtypes.get(n, "float32"),
                shape=["batch", "features"] if n == "tabular" else point["shape"],
            )
            for n in ModelInputs.names()
        ]
        return specs + [InputSpec(**s) for s in self.family.extra_inputs(self.model)]

    def output_specs(self) -> list[InputSpec]:
        shapes: dict[str, list[str | int]] = {
            "probabilities": ["batch", "classes"],
            "logits": ["batch", "classes"],
            OOD_OUTPUT: ["batch"],
        } | self.family.extra_output_shapes(self.model)
        return [InputSpec(name=n, dtype="float32", shape=shapes[n]) for n in self.output_names]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Batch on every input and output, length on the per-point inputs."""
        axes = {
            s.name: {i: d for i, d in enumerate(s.shape) if d in DYNAMIC_AXES}
            for s in self.input_specs()
        }
        return axes | {n: {0: "batch"} for n in self.output_names}


def graph_form(fp16: bool, form: bool | str) -> str | None:
    """The metadata's ``graph_form`` of a file traced in ``form`` (None: the default form;
    a float16 file is traced in the training form, whatever ``form`` says)."""
    return form if isinstance(form, str) and not fp16 else None


def ood_only_nodes(proto: onnx.ModelProto) -> list[str]:
    """Names of the nodes that compute the ``ood`` output and nothing else."""
    producer = {out: node for node in proto.graph.node for out in node.output}

    def ancestors(output: str) -> set[str]:
        seen, todo = set(), [output]
        while todo:
            node = producer.get(todo.pop())
            if node is not None and node.name not in seen:
                seen.add(node.name)
                todo.extend(node.input)
        return seen

    others = set().union(*(ancestors(o.name) for o in proto.graph.output if o.name != OOD_OUTPUT))
    return sorted(ancestors(OOD_OUTPUT) - others)


def to_float16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The graph (traced in the training form, decomposed attention) in float16, inputs and
    outputs float32; the feature tokenizer, the calibration and the OOD score stay float32."""
    from onnxconverter_common import float16

    # The quantile tables hold raw feature values up to ~1e8 (fluxes in nJy), beyond
    # float16's range: the feature tokenizer stays float32.
    keep_fp32 = [n.name for n in proto.graph.node if n.name.startswith("/tab_tokens/")]
    # The calibration (logits / T, softmax) reads the graph output `logits`, which stays
    # float32: it runs in float32 too (a float16 T next to it fails the checker).
    keep_fp32 += [
        n.name for n in proto.graph.node if "logits" in n.input or "probabilities" in n.output
    ]
    # Likewise the graph output `embedding` stays float32, and so does what reads it: the
    # head's first layer and the OOD score (squared distances through a precision matrix:
    # large entries, sums of squares), which reads the float32 logits too.
    keep_fp32 += [n.name for n in proto.graph.node if EMBEDDING_OUTPUT in n.input]
    keep_fp32 += ood_only_nodes(proto)
    with warnings.catch_warnings():  # it reports every constant it rounds, e.g. -1e4
        warnings.filterwarnings("ignore", message="the float32 number")
        half = float16.convert_float_to_float16(
            proto, keep_io_types=True, node_block_list=keep_fp32
        )
    return without_float16_round_trips(half)


def without_float16_round_trips(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with every float32 -> float16 -> float32 pair of casts bypassed (then
    removed when nothing else reads them).

    The float16 converter casts each output of a node it keeps in float32 to float16, and
    back to float32 where another kept node reads it, and leaves some of those pairs in: in
    the feature tokenizer, raw feature values (ZTF fluxes up to ~1e7, beyond float16's
    65504) went to infinity between two float32 nodes, which moved atat-ztf's float16
    probabilities by up to 0.53 on real alerts (2.3e-3 without the round trips)."""
    nodes = list(proto.graph.node)
    producer = {out: node for node in nodes for out in node.output}

    def cast_to(node: onnx.NodeProto) -> int | None:
        if node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    bypass = {}
    for node in nodes:
        if cast_to(node) == onnx.TensorProto.FLOAT:
            first = producer.get(node.input[0])
            if first is not None and cast_to(first) == onnx.TensorProto.FLOAT16:
                bypass[node.output[0]] = first.input[0]
    graph_outputs = {o.name for o in proto.graph.output}
    bypass = {k: v for k, v in bypass.items() if k not in graph_outputs}
    for node in nodes:
        for i, name in enumerate(node.input):
            if name in bypass:
                node.input[i] = bypass[name]
    while True:  # drop the casts nothing reads any more
        read = {name for node in proto.graph.node for name in node.input} | graph_outputs
        dead = [n for n in proto.graph.node if n.op_type == "Cast" and n.output[0] not in read]
        if not dead:
            return proto
        for node in dead:
            proto.graph.node.remove(node)
