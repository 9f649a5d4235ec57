"""The command line starts without the heavy stack: importing it, `--help` (which imports every installed plugin)
and the registry commands load neither torch, peft nor transformers, and the core never imports the benchmark
harness. Speed itself is measured (README, "Cold start"), not asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration  # each test runs a fresh interpreter

HEAVY = ("torch", "peft", "transformers", "benchmarks")


def heavy_modules_after(code: str, tmp_path) -> list[str]:
    """The heavy modules a fresh interpreter holds after running ``code`` (with an empty ADAPTERHUB_HOME)."""
    report = f"import json, sys; print(json.dumps(sorted(set({HEAVY!r}) & set(sys.modules))))"
    env = {**os.environ, "ADAPTERHUB_HOME": str(tmp_path)}
    env.pop("ADAPTERHUB_REGISTRY", None)
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\n{report}"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_importing_the_cli_loads_no_torch_peft_transformers_or_benchmarks(tmp_path):
    assert heavy_modules_after("import adapterhub.cli", tmp_path) == []


def test_registry_list_loads_no_torch(tmp_path):
    code = "from adapterhub.cli import main\nassert main(['registry', 'list']) == 0"
    assert heavy_modules_after(code, tmp_path) == []


def test_help_imports_every_plugin_and_still_no_torch(tmp_path):
    code = "from adapterhub.cli import main\nassert main(['--help']) == 0"
    assert set(heavy_modules_after(code, tmp_path)) <= {"benchmarks"}  # the bench plugin's light module, if installed
