"""Plugins and benchmarks are users of the core: they import its public names only.

import-linter (pyproject.toml) keeps plugins off the core's internal modules; this keeps every package outside the
core off the private names (``_x``) of adapterhub and adapterhub_registry, so the core can change those freely.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
USERS = [*sorted((ROOT / "plugins").glob("*/adapterhub_*")), ROOT / "benchmarks"]
CORE = ("adapterhub", "adapterhub_registry")


def private_imports(source: str) -> list[str]:
    """``module.name`` for every ``from adapterhub... import _name`` and ``import adapterhub._module`` in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in CORE:
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
            found += [node.module for part in node.module.split(".") if part.startswith("_")][:1]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in CORE and "._" in a.name]
    return found


def test_the_check_sees_a_private_import():
    assert private_imports("from adapterhub.cli.main import _Group\nimport adapterhub._hidden\n") == [
        "adapterhub.cli.main._Group",
        "adapterhub._hidden",
    ]
    assert private_imports("from adapterhub.specs import MethodSpec\nfrom peft import _private\n") == []


def test_plugins_and_benchmarks_import_only_public_names_of_the_core():
    offenders = {
        str(path.relative_to(ROOT)): names
        for folder in USERS
        for path in sorted(folder.rglob("*.py"))
        if (names := private_imports(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}, "import these through a public name (add one to the core if it is missing)"
