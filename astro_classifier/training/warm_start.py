"""Warm start: the weights of an exported ATAT model (.onnx) as a torch state_dict.

For the families that declare ``onnx_warm_start`` (ATAT).

An exported model is the only artefact that ships; its run directory may be gone. The ONNX
graph still holds every weight the classifier uses, under one of three guises:

- initializers named after the torch parameter (``lc_encoder.blocks.0.norm1.weight``);
- linear-layer weights folded into a ``MatMul`` as the transposed matrix, under a generated
  name (``onnx::MatMul_806``), found through the node's scoped name
  (``/lc_encoder/blocks.0/attn/qkv/MatMul`` -> ``lc_encoder.blocks.0.attn.qkv.weight``);
- the quantile tables of the feature tokenizer, constant-folded into its piecewise-linear
  CDF: the upper edges are what the ``Abs`` of the tie tolerance reads (``Greater`` in
  graphs exported before it), the lower edges the folded table whose columns continue them.

What the graph does not hold (the light-curve-only and tabular-only heads, which serving
does not use) keeps its fresh initialisation. :func:`atat_state_from_onnx` returns the
architecture (from the model's metadata) and the state; the caller builds the model, loads
the state with ``strict=False`` and reports what was left fresh.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from astro_classifier.families.registry import family_of
from astro_classifier.inference.model import read_metadata


def atat_state_from_onnx(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(architecture config, state_dict) of an exported ATAT model; see the module docstring."""
    meta = read_metadata(path)
    if not family_of(meta.architecture).onnx_warm_start:
        raise ValueError(
            f"{path}: a {meta.architecture!r} model; its weights cannot be read back from the "
            "graph (a warm start needs a family with onnx_warm_start: ATAT)"
        )
    proto = onnx.load(str(path))
    arrays = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    state: dict[str, torch.Tensor] = {}
    for name, value in arrays.items():
        if not name.startswith("onnx::"):
            state[name] = torch.from_numpy(np.array(value))
    upper = None
    tokenizer_tables = []  # the constants folded into the feature tokenizer
    for node in proto.graph.node:
        scope = node.name.strip("/").split("/")
        generated = [i for i in node.input if i.startswith("onnx::") and i in arrays]
        if not generated:
            continue
        if node.op_type == "MatMul":
            module = ".".join(part for part in scope[:-1] if not _is_repeat(part, scope))
            state[f"{module}.weight"] = torch.from_numpy(
                np.ascontiguousarray(arrays[generated[0]].T)
            )
        elif scope[0] == "tab_tokens":
            if node.op_type in ("Greater", "Abs"):
                # upper edges: compared directly (earlier graphs), or first through the tie
                # tolerance, hi + TIE_TOLERANCE * |hi|, whose Abs reads them
                upper = arrays[generated[0]]
            tokenizer_tables += [arrays[name] for name in generated]
    # lower edges: the folded table whose columns continue the upper edges (lo[j+1] = hi[j]),
    # read by a Sub (earlier graphs) or by the Where that swaps ties for their thresholds
    lower = None
    if upper is not None:
        lower = next(
            (
                table
                for table in tokenizer_tables
                if table.shape == upper.shape
                and np.array_equal(table[:, 1:], upper[:, :-1], equal_nan=True)
            ),
            None,
        )
    # Exported graphs wrap the network in the export graph (export.graph.ExportGraph): its
    # parameters sit under "model.", next to the temperature and the OOD score's tables
    # ("ood."), which are not weights of the network.
    state = {
        key.removeprefix("model."): value
        for key, value in state.items()
        if key != "temperature" and not key.startswith("ood.")
    }
    # The band ids are a constant of the architecture (0 .. n_bands - 1), which graphs whose
    # light-curve tokens gather the points of each band do not hold.
    if "lc_tokens.band_ids" not in state:
        state["lc_tokens.band_ids"] = torch.arange(int(meta.architecture_config["n_bands"]))
    if lower is not None and upper is not None:
        state["tab_tokens.quantiles"] = torch.from_numpy(
            np.concatenate([np.asarray(lower), np.asarray(upper)[:, -1:]], axis=1).astype(
                np.float32
            )
        )
    return dict(meta.architecture_config), state


def _is_repeat(part: str, scope: list[str]) -> bool:
    """Scope names repeat a Sequential's name (``mlp/mlp.0``): keep only the indexed one."""
    return any(other.startswith(part + ".") for other in scope)


def load_onnx_weights(model: torch.nn.Module, path: str | Path) -> list[str]:
    """Load an exported ATAT model's weights into ``model``; returns the keys left fresh."""
    _, state = atat_state_from_onnx(path)
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise ValueError(
                f"{path}: {key} has shape {tuple(value.shape)}, the model {tuple(own[key].shape)}; "
                "the warm start needs the same architecture, bands, features and classes"
            )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"{path}: weights the model does not have: {unexpected}")
    return list(missing)
