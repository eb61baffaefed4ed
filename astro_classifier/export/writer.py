"""The one ONNX writer: trace, describe, check, compare, then move into place.

:func:`write_onnx` traces a torch module (:func:`trace_to_onnx`, opset
:data:`~astro_classifier.families.opset.OPSET`, named inputs and outputs, dynamic axes),
optionally converts it (float16), attaches ``metadata_props``, runs ``onnx.checker`` (full
check), saves it to a temporary folder, hands that file to the caller's check (the parity
check: it raises to refuse the file), and only then moves it to ``out``: through a temporary
name in ``out``'s folder and an atomic rename, so ``out`` is never half-written and nothing at
all is written when a check fails. Every ONNX file the package writes (a run's export, a
re-export, the image encoder) goes through it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnx
import torch

from astro_classifier.families.opset import OPSET

Report = TypeVar("Report")


def trace_to_onnx(
    module: torch.nn.Module,
    feeds: dict[str, np.ndarray],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> onnx.ModelProto:
    """Trace ``module`` on ``feeds`` (inputs named and ordered as its keys) into an ONNX
    graph (opset :data:`OPSET`)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of torch.export, but it handles
            # these models' dynamic axes and plain ops reliably across versions.
            warnings.simplefilter("ignore", DeprecationWarning)
            # shapes read in forward (head split, scale) are constants of the config
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                module,
                tuple(torch.from_numpy(v) for v in feeds.values()),
                str(tmp_path),
                input_names=list(feeds),
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=OPSET,
                dynamo=False,
            )
        return onnx.load(str(tmp_path))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_onnx(
    module: torch.nn.Module,
    feeds: dict[str, np.ndarray],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    out: Path,
    metadata_props: dict[str, str],
    check: Callable[[Path], Report],
    convert: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None,
) -> Report:
    """Write ``module`` traced on ``feeds`` to ``out`` if ``check`` (called with the written
    file's temporary path) returns; its report is returned. See the module docstring."""
    proto = trace_to_onnx(module, feeds, output_names, dynamic_axes)
    if convert is not None:
        proto = convert(proto)
    for key, value in metadata_props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "astroclf"
    onnx.checker.check_model(proto, full_check=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / Path(out).name
        onnx.save(proto, str(tmp_path))
        report = check(tmp_path)  # raises to refuse the file
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
        os.close(fd)
        try:
            shutil.copyfile(tmp_path, partial)
            os.chmod(partial, 0o666 & ~_umask())  # mkstemp's 0600 is not a model file's mode
            os.replace(partial, out)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
    return report
