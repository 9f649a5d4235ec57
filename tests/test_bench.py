"""Smoke test of the benchmark harness: the registry and adapter-I/O suites in quick mode write well-formed
JSON, markdown and PNG (speed is never asserted); unknown suites and `--list` behave."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from adapterhub.cli import cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    output = tmp_path_factory.mktemp("bench")
    arguments = ["bench", "registry", "adapter_io", "--quick", "--device", "cpu", "--no-progress", "--output", str(output)]
    result = CliRunner().invoke(cli, arguments, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return output


@pytest.mark.parametrize("suite", ["registry", "adapter_io"])
def test_quick_run_writes_json_markdown_and_png(quick_results, suite):
    stem = quick_results / f"{suite}-cpu-quick"
    document = json.loads(stem.with_suffix(".json").read_text())
    assert document["suite"] == suite and document["quick"] is True
    assert {"cpu", "cores", "packages"} <= set(document["environment"])
    assert document["environment"]["packages"]["peft"]
    impls = {m["impl"] for m in document["measurements"]}
    assert impls == {"adapterhub", "peft"}
    for measurement in document["measurements"]:
        stats = measurement["stats"]
        assert stats["n"] == len(measurement["samples"]) > 0
        assert stats["min"] <= stats["q1"] <= stats["median"] <= stats["q3"] <= stats["max"]
    cases = {(m["case"], json.dumps(m["params"])) for m in document["measurements"]}
    assert len(document["comparisons"]) == len(cases)
    assert all(c["ratio"] > 0 for c in document["comparisons"])

    markdown = stem.with_suffix(".md").read_text()
    assert markdown.startswith(f"# `{suite}` benchmark")
    assert "| adapterhub / peft |" in markdown
    assert f"({stem.name}.png)" in markdown
    assert stem.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC


def test_registry_quick_run_covers_every_operation(quick_results):
    document = json.loads((quick_results / "registry-cpu-quick.json").read_text())
    assert {m["case"] for m in document["measurements"]} == {"list", "list first 50", "search", "push", "pull"}
    assert {m["params"]["adapters"] for m in document["measurements"]} == {10, 100}


def test_unknown_suite_is_an_error_naming_the_known_ones():
    result = CliRunner().invoke(cli, ["bench", "no-such-suite", "--quick"])
    assert result.exit_code != 0
    assert "unknown benchmark suite 'no-such-suite'" in result.output
    assert "registry" in result.output and "training" in result.output


def test_list_shows_every_suite_with_its_description():
    result = CliRunner().invoke(cli, ["bench", "--list"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert {"registry", "adapter_io", "training"} <= set(lines)
    assert "latency" in lines["registry"]
