"""The layer map in gitree/__init__.py holds: no module imports from a higher layer (lazy imports inside
functions count), every module is placed, and gitree_compat imports nothing of gitree."""

from __future__ import annotations

import ast
import os

import gitree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _imports(path: str) -> set[str]:
    """gitree modules a source file imports, at any depth of its code."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                out.add(node.module.split(".")[0])
            elif node.level == 1:
                out.update(a.name for a in node.names)
            elif node.module and node.module.split(".")[0] in ("gitree", "gitree_compat"):
                parts = node.module.split(".")
                out.add(parts[1] if parts[0] == "gitree" and len(parts) > 1 else parts[0])
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "gitree_compat":
                    out.add("gitree_compat")
                elif parts[0] == "gitree" and len(parts) > 1:
                    out.add(parts[1])
    return out


def _modules() -> dict[str, str]:
    d = os.path.join(ROOT, "gitree")
    return {n[:-3]: os.path.join(d, n) for n in os.listdir(d) if n.endswith(".py") and n != "__init__.py"}


def upward_imports(layers: dict[str, int], modules: dict[str, str]) -> list[str]:
    bad = []
    for mod, path in sorted(modules.items()):
        for dep in sorted(_imports(path)):
            if dep in layers and layers[dep] > layers[mod]:
                bad.append(f"{mod} (layer {layers[mod]}) imports {dep} (layer {layers[dep]})")
    return bad


def test_every_module_is_in_the_layer_map():
    assert sorted(set(_modules()) - set(gitree.LAYERS)) == []
    assert sorted(set(gitree.LAYERS) - set(_modules()) - {"gitree_compat"}) == []


def test_no_module_imports_a_higher_layer():
    assert upward_imports(gitree.LAYERS, _modules()) == []


def test_the_check_catches_an_upward_import(tmp_path):
    """The checker itself: a repo module importing the API is reported, lazily inside a function too."""
    p = tmp_path / "repo.py"
    p.write_text("def f():\n    from . import api\n    from .cli import main\n")
    assert upward_imports(gitree.LAYERS, {"repo": str(p)}) == [
        "repo (layer 2) imports api (layer 5)", "repo (layer 2) imports cli (layer 6)"]


def import_cycles(modules: dict[str, str]) -> list[list[str]]:
    """Cycles among the modules' imports (lazy ones included), each as the path that closes it."""
    deps = {m: sorted(d for d in _imports(p) if d in modules and d != m) for m, p in modules.items()}
    cycles, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for d in deps[m]:
            if state.get(d) == "open":
                cycles.append(path[path.index(d):] + [m, d] if d in path else [m, d])
            elif d not in state:
                visit(d, path + [m])
        state[m] = "done"

    for m in sorted(modules):
        if m not in state:
            visit(m, [])
    return cycles


def test_no_import_cycles():
    """Modules of one layer may import each other, but never in a cycle (repo uses treeread and importer,
    which take a Repo without importing repo)."""
    assert import_cycles(_modules()) == []


def test_the_cycle_check_catches_a_cycle(tmp_path):
    a, b = tmp_path / "treeread.py", tmp_path / "repo.py"
    a.write_text("def f():\n    from .repo import Repo\n")
    b.write_text("from . import treeread\n")
    assert import_cycles({"treeread": str(a), "repo": str(b)}) == [["repo", "treeread", "repo"]]


def test_compat_imports_nothing_of_gitree():
    d = os.path.join(ROOT, "compat")
    for n in os.listdir(d):
        if n.endswith(".py"):
            src = open(os.path.join(d, n), encoding="utf-8").read()
            assert "import gitree\n" not in src and "from gitree" not in src, n


def test_cli_calls_only_the_api():
    """cli.py parses, calls gitree.api and prints: besides the API it reads only errors (exit codes), progress
    (the terminal display), entry.MAX_DEPTH (the stack it needs) and packwriter (temporaries to drop on ^C)."""
    deps = _imports(os.path.join(ROOT, "gitree", "cli.py"))
    assert deps - {"api", "errors", "progress", "entry", "packwriter"} == set()
