"""The package layout as docs/architecture.md draws it, checked from the source (ast; nothing is
imported, so no TensorFlow): no import cycle, no private name borrowed across modules, no
``det_*`` twin of a module, no branch on a kind's name in the engine, no TensorFlow behind the
light commands."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "lepton_vision"
HEAVY = ("tensorflow", "keras", "keras_cv", "gradio")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(modules: dict[str, Path]) -> tuple[dict[str, set[str]], list[str]]:
    """Edges module -> module (every import, at module level or inside a function) and the
    ``from X import _name`` statements that cross modules."""
    edges: dict[str, set[str]] = defaultdict(set)
    private: list[str] = []

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("lepton_vision"):
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    dst = sub if sub in modules else owner(target)
                    if dst and dst != mod:
                        edges[mod].add(dst)
                        if sub not in modules and alias.name.startswith("_") and not alias.name.startswith("__"):
                            private.append(f"{mod}:{node.lineno} imports {alias.name} from {dst}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    dst = owner(alias.name) if alias.name.startswith("lepton_vision") else None
                    if dst and dst != mod:
                        edges[mod].add(dst)
    return edges, private


def _cycles(nodes: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in nodes:
        if v not in index:
            visit(v)
    return found


def test_the_graph_check_sees_a_planted_cycle_and_a_private_import():
    """The checks below can fail: a two-module circle and a borrowed private name are found."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(["a", "b", "c", "d"], edges) == [["a", "b", "c"]]
    modules = _modules()
    edges, private = _imports(modules)
    assert len(modules) > 60 and sum(len(v) for v in edges.values()) > 200  # the graph is real
    assert "lepton_vision.engine.callbacks" in edges["lepton_vision.kinds.classification.train"]


def test_no_import_cycle():
    modules = _modules()
    edges, _ = _imports(modules)
    assert _cycles(sorted(modules), edges) == []


def test_no_private_name_is_imported_from_another_module():
    _, private = _imports(_modules())
    assert private == []


def test_the_folder_shows_the_architecture():
    top = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert {"config", "data", "models", "engine", "evaluate", "export", "serve", "kinds"} <= top
    kinds = {p.name for p in (PKG / "kinds").iterdir() if (p / "__init__.py").is_file()}
    assert kinds == {"classification", "detection"}
    # No twin modules: detection lives in kinds/detection/, not beside classification modules.
    twins = [p for p in PKG.rglob("*.py") if p.stem.startswith(("det_", "detection_"))]
    assert twins == []
    # Flat modules at the top are the entry points and the foundation every package may use.
    flat = sorted(p.name for p in PKG.glob("*.py"))
    assert flat == ["__init__.py", "__main__.py", "backend.py", "cli.py", "console.py", "runio.py", "version.py"]


def test_engine_never_branches_on_a_kind():
    """The engine asks the kind for each step; no kind's name (nor an isinstance on a kind class)
    appears in engine/."""
    from lepton_vision.config.cards import KIND_NAMES

    for path in sorted((PKG / "engine").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in KIND_NAMES, f"{path.name}:{node.lineno} names kind {node.value!r}"
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance":
                names = {getattr(n, "id", getattr(n, "attr", "")) for n in ast.walk(node.args[1])}
                assert not any("Kind" in n for n in names), f"{path.name}:{node.lineno} isinstance on a kind"
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("lepton_vision.kinds.classification", "lepton_vision.kinds.detection")), \
                    f"{path.name}:{node.lineno} imports a kind's module ({node.module}); ask kinds.kind_of instead"


@pytest.mark.parametrize("code", [
    "import lepton_vision",
    "from lepton_vision.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
    "from lepton_vision.cli import main\nmain(['recipe', 'validate', 'recipes/ct_screening/baseline.yaml',"
    " 'recipes/person_detection/baseline.yaml'])",
    "import lepton_vision.kinds, lepton_vision.engine.crossval, lepton_vision.evaluate.compare, "
    "lepton_vision.evaluate.report, lepton_vision.kinds.classification.metrics, lepton_vision.kinds.detection.metrics, "
    "lepton_vision.kinds.classification.report, lepton_vision.kinds.detection.report, lepton_vision.serve.loader, "
    "lepton_vision.kinds.classification.predictor, lepton_vision.kinds.detection.predictor, lepton_vision.data.samples",
], ids=["import", "help", "recipe-validate", "light-modules"])
def test_light_paths_import_no_tensorflow_keras_or_gradio(code):
    probe = code + f"\nimport sys\nprint('HEAVY:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "HEAVY:", out.stdout[-500:]
