"""The layer map in gitree/__init__.py holds: no module imports from a higher layer (lazy imports inside
functions count), every module is placed, and gitree_compat imports nothing of gitree."""

from __future__ import annotations

import ast
import os

import gitree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _resolve(parts: list[str], names: list[str], known: set[str]) -> set[str]:
    """`from <parts> import <names>`: each name that is a module itself, else the module <parts>."""
    out = set()
    for n in names:
        sub = ".".join(parts + [n])
        if sub in known:
            out.add(sub)
        elif parts:
            out.add(".".join(parts))
    return out


def _imports(path: str, mod: str = "") -> set[str]:
    """gitree modules (dotted below gitree: "repo", "ostree.export") that the source file of module `mod`
    imports, at any depth of its code; relative imports are resolved against mod's package."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    known = set(gitree.LAYERS) | set(_modules())
    package = mod.split(".") if path.endswith("__init__.py") else mod.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                out |= _resolve(base + (node.module.split(".") if node.module else []), names, known)
            elif node.module and node.module.split(".")[0] == "gitree_compat":
                out.add("gitree_compat")
            elif node.module and node.module.split(".")[0] == "gitree":
                out |= _resolve(node.module.split(".")[1:], names, known)
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "gitree_compat":
                    out.add("gitree_compat")
                elif parts[0] == "gitree" and len(parts) > 1:
                    out.add(".".join(parts[1:]))
    return out


def _modules() -> dict[str, str]:
    """Every module of gitree by dotted name ("repo", "ostree.export"; a subpackage's __init__ as "ostree")."""
    d = os.path.join(ROOT, "gitree")
    out = {}
    for dirpath, dirnames, files in os.walk(d):
        dirnames[:] = [n for n in dirnames if not n.startswith((".", "__"))]
        rel = os.path.relpath(dirpath, d)
        pkg = [] if rel == "." else rel.split(os.sep)
        for n in files:
            if n.endswith(".py") and (pkg or n != "__init__.py"):
                out[".".join(pkg if n == "__init__.py" else pkg + [n[:-3]])] = os.path.join(dirpath, n)
    return out


def upward_imports(layers: dict[str, int], modules: dict[str, str]) -> list[str]:
    bad = []
    for mod, path in sorted(modules.items()):
        for dep in sorted(_imports(path, mod)):
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
    # in a subpackage: relative imports resolve against it, and a package's modules are placed one by one
    (tmp_path / "ostree").mkdir()
    q = tmp_path / "ostree" / "export.py"
    q.write_text("from ..boot import deploy\nfrom .signing import sign_commit\nfrom .. import api, repo\n"
                 "import gitree.boot.lxc\nfrom gitree.transport.bundle import read_pack\n")
    assert upward_imports(gitree.LAYERS, {"ostree.export": str(q)}) == [
        "ostree.export (layer 3) imports api (layer 5)", "ostree.export (layer 3) imports boot.deploy (layer 4)",
        "ostree.export (layer 3) imports boot.lxc (layer 4)"]
    assert _imports(str(q), "ostree.export") == {"boot.deploy", "ostree.signing", "api", "repo", "boot.lxc",
                                                  "transport.bundle"}


def import_cycles(modules: dict[str, str]) -> list[list[str]]:
    """Cycles among the modules' imports (lazy ones included), each as the path that closes it."""
    deps = {m: sorted(d for d in _imports(p, m) if d in modules and d != m) for m, p in modules.items()}
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
    deps = _imports(os.path.join(ROOT, "gitree", "cli.py"), "cli")
    assert deps - {"api", "errors", "progress", "entry", "packwriter"} == set()
