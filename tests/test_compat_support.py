"""Shared helpers for the compat tests (no tests here).

Makes ``gitree_compat`` importable when the project is not installed, by loading the ``compat/``
folder under its installed name exactly as pyproject.toml maps it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

try:
    import gitree_compat  # noqa: F401
except ImportError:
    _root = Path(__file__).resolve().parents[1] / "compat"
    _spec = importlib.util.spec_from_file_location(
        "gitree_compat", _root / "__init__.py", submodule_search_locations=[str(_root)])
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules["gitree_compat"] = _mod
    _spec.loader.exec_module(_mod)
