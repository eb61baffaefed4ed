"""The inference path never imports torch: the GPU image ships without it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

INFERENCE_MODULES = (
    "astro_classifier.cli.app",
    "astro_classifier.inference.classify",
    "astro_classifier.formats.ztf",
    "astro_classifier.formats.rubin",
    "astro_classifier.formats.registry",
    "astro_classifier.evaluation.evaluate",
)

# Classify the committed PLAsTiCC sample with the shipped atat-lsst model.
CLASSIFY = """
from astro_classifier.formats.registry import read_light_curves
from astro_classifier.inference.classify import classify
from astro_classifier.inference.model import LoadedModel

batch = read_light_curves(
    "examples/plasticc/lightcurves.csv", metadata="examples/plasticc/metadata.csv"
)
result = classify(batch, LoadedModel.load("atat-lsst", provider="cpu"))
assert len(result) == len(batch) == 42, (len(result), len(batch))
print("classified", len(result))
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _imports() -> str:
    return "\n".join(f"import {name}" for name in INFERENCE_MODULES)


def test_inference_path_works_with_torch_blocked() -> None:
    # sys.modules[name] = None makes every `import torch` raise ImportError.
    code = "import sys\nsys.modules['torch'] = None\n" + _imports() + "\n" + CLASSIFY
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert "classified 42" in proc.stdout


def test_inference_path_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        + _imports()
        + "\n"
        + CLASSIFY
        + "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        + "assert not loaded, loaded\n"
        + "print('no torch')\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert "no torch" in proc.stdout
