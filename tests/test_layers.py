"""The package is layered (docs/architecture.md): each layer imports only the layers below it,
nothing imports upward, not even inside a function, and there is no import cycle, between
packages or between modules. Read from the source with ``ast`` (module-level, function-level
and ``TYPE_CHECKING`` imports alike), so nothing is imported to check it."""

from __future__ import annotations

import ast
from collections import defaultdict
from functools import cache
from pathlib import Path

ROOT = "astro_classifier"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / ROOT

# The layers, lowest first. A package may import the packages of its own layer and of the
# layers below; the package graph must also be acyclic, which orders packages within a layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("", "core"),  # "": the root module, astro_classifier/__init__.py (__version__ only)
    ("formats", "catalogs"),  # formats.labelled declares the catalogues: formats -> catalogs
    ("features",),
    ("families",),  # model families: torch modules, their losses and export forms (train extra)
    ("inference",),
    ("evaluation",),  # metrics, evaluate() (classifies through inference), plots
    ("training", "export"),  # export -> training, never the other way
    ("stream",),
    ("spark",),  # spark.py: the Spark adapter over the Arrow-batch core (spark extra)
    ("cli",),
)
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}

# The inference path never imports torch: everything these reach, at any depth.
INFERENCE_PATH = ("core", "formats", "catalogs", "features", "inference", "stream", "spark")
INFERENCE_MODULES = (f"{ROOT}.cli.classify",)

# Imports inside functions are kept only for an optional extra the importing module must
# work without: (importer, imported module) -> why.
LAZY_IMPORTS: dict[tuple[str, str], str] = {
    (f"{ROOT}.cli.stream", f"{ROOT}.stream.config"): "stream extra (pydantic-settings)",
    (f"{ROOT}.cli.stream", f"{ROOT}.stream.worker"): "stream extra (confluent_kafka)",
    (f"{ROOT}.cli.train", f"{ROOT}.training.config"): "train extra (torch)",
    (f"{ROOT}.cli.train", f"{ROOT}.families.registry"): "train extra (torch)",
    (f"{ROOT}.cli.train", f"{ROOT}.training.train"): "train extra (torch)",
    (f"{ROOT}.cli.train", f"{ROOT}.export.onnx_export"): "train extra (torch)",
    (f"{ROOT}.cli.train", f"{ROOT}.export.reexport"): "train extra (torch)",
    (f"{ROOT}.training.config", f"{ROOT}.families.registry"): "train extra (torch)",
}

# Module imports that close a cycle and cannot be removed yet. Each is still required to
# exist (test_known_exceptions_still_exist): delete the entry when its cycle is fixed.
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def package_of(module: str) -> str:
    """``astro_classifier.formats.ztf`` -> ``formats``; the root module -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _resolve(name: str) -> str | None:
    """The project module an imported name refers to (the longest existing prefix)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules():
            return candidate
        parts.pop()
    return None


def _module_level(body: list[ast.stmt]) -> set[int]:
    """ids of the statements run at import time: the module body and the blocks of its
    ``if`` (``TYPE_CHECKING`` included), ``try`` and ``with`` statements, not function or
    class bodies."""
    ids: set[int] = set()
    for node in body:
        ids.add(id(node))
        if isinstance(node, ast.If | ast.Try | ast.With):
            for field in ("body", "orelse", "finalbody"):
                ids |= _module_level(getattr(node, field, []))
            for handler in getattr(node, "handlers", []):
                ids |= _module_level(handler.body)
    return ids


@cache
def imports() -> dict[str, list[tuple[str, bool]]]:
    """module -> [(imported module, inside a function or class body)]: project modules by
    name, other packages as ``"!" + top-level name`` (``"!torch"``)."""
    out: dict[str, list[tuple[str, bool]]] = {}
    for module, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        top = _module_level(tree.body)
        found: list[tuple[str, bool]] = []
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = module.split(".")
                    if path.name != "__init__.py":
                        base = base[:-1]
                    base = base[: len(base) - node.level + 1]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                # `from pkg import sub` imports the submodule pkg.sub where there is one
                names = [f"{prefix}.{alias.name}" for alias in node.names]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute | ast.Name)
                and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                names = [node.args[0].value]
            for name in names:
                nested = id(node) not in top
                if name == ROOT or name.startswith(ROOT + "."):
                    target = _resolve(name)
                    if target is not None and target != module:
                        found.append((target, nested))
                else:
                    found.append(("!" + name.split(".")[0], nested))
        out[module] = found
    return out


def project_edges(include_exceptions: bool = False) -> set[tuple[str, str]]:
    edges = {
        (src, dst)
        for src, targets in imports().items()
        for dst, _ in targets
        if not dst.startswith("!")
    }
    return edges if include_exceptions else edges - KNOWN_EXCEPTIONS


def cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    graph: dict[str, list[str]] = defaultdict(list)
    for src, dst in edges:
        graph[src].append(dst)
        graph.setdefault(dst, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_package_has_a_layer():
    packages = {package_of(m) for m in modules()}
    assert not packages - set(RANK), f"packages missing from LAYERS: {packages - set(RANK)}"
    assert modules(), "no module found"


def test_every_folder_of_modules_is_a_package():
    """A folder without __init__.py would import here (a namespace package) and be left out
    of the wheel (setuptools finds packages by their __init__.py)."""
    folders = {p.parent for p in PACKAGE_DIR.rglob("*.py")}
    assert sorted(str(f) for f in folders if not (f / "__init__.py").is_file()) == []


def test_no_cycle_between_packages():
    edges = {
        (package_of(src), package_of(dst))
        for src, dst in project_edges()
        if package_of(src) != package_of(dst)
    }
    assert cycles(edges) == []


def test_no_cycle_between_modules():
    assert cycles(project_edges()) == []


def test_each_package_imports_only_its_layer_and_below():
    upward = sorted(
        f"{src} -> {dst}"
        for src, dst in project_edges(include_exceptions=True)
        if RANK[package_of(dst)] > RANK[package_of(src)]
    )
    assert upward == []


def test_the_root_module_imports_nothing_of_the_project():
    assert [dst for dst, _ in imports()[ROOT] if not dst.startswith("!")] == []


def test_imports_inside_functions_only_for_optional_extras():
    lazy = sorted(
        f"{src} -> {dst}"
        for src, targets in imports().items()
        for dst, nested in targets
        if nested
        and not dst.startswith("!")
        and (src, dst) not in LAZY_IMPORTS
        and (src, dst) not in KNOWN_EXCEPTIONS
    )
    assert lazy == [], "import at module level, or list it in LAZY_IMPORTS with its extra"


def test_known_exceptions_still_exist():
    edges = project_edges(include_exceptions=True)
    fixed = sorted(f"{src} -> {dst}" for src, dst in KNOWN_EXCEPTIONS if (src, dst) not in edges)
    assert fixed == [], "these imports are gone: remove them from KNOWN_EXCEPTIONS"
    lazy = {(s, d) for s, t in imports().items() for d, _ in t if not d.startswith("!")}
    stale = sorted(f"{s} -> {d}" for s, d in LAZY_IMPORTS if (s, d) not in lazy)
    assert stale == [], "these lazy imports are gone: remove them from LAZY_IMPORTS"


def test_the_inference_path_never_imports_torch():
    start = [m for m in modules() if package_of(m) in INFERENCE_PATH] + list(INFERENCE_MODULES)
    reached: dict[str, str] = {m: m for m in start}  # module -> a module of `start` reaching it
    todo = list(start)
    while todo:
        module = todo.pop()
        for dst, _ in imports()[module]:
            if not dst.startswith("!") and dst not in reached:
                reached[dst] = reached[module]
                todo.append(dst)
    torch = sorted(
        f"{module} (reached from {reached[module]})"
        for module in reached
        if any(dst == "!torch" for dst, _ in imports()[module])
    )
    assert torch == []
