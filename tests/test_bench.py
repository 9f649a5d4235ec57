"""Smoke test of the benchmark harness: the registry and adapter-I/O suites in quick mode write well-formed
JSON, markdown and PNG (speed is never asserted); unknown suites and `--list` behave."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from adapterhub.cli import cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """registry and adapter_io run; kernels (CUDA only) is named too, and a CPU run must skip it and go on."""
    output = tmp_path_factory.mktemp("bench")
    arguments = [
        "bench",
        "kernels",
        "registry",
        "adapter_io",
        "--quick",
        "--device",
        "cpu",
        "--no-progress",
        "--output",
        str(output),
    ]
    result = CliRunner().invoke(cli, arguments, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return output, result.output


@pytest.fixture(scope="module")
def quick_results(quick_run):
    return quick_run[0]


def test_several_suites_skip_a_cuda_only_suite_on_cpu_with_one_line_and_run_the_rest(quick_run):
    output, printed = quick_run
    skipped = [line for line in printed.splitlines() if line.startswith("kernels:")]
    assert skipped == ["kernels: skipped — suite 'kernels' runs on cuda only, and this run is on cpu; "
                       "run it with --device cuda on a machine that has one"]  # fmt: skip
    assert not list(output.glob("kernels-*"))
    assert (output / "registry-cpu-quick.json").is_file() and (output / "adapter_io-cpu-quick.json").is_file()


def test_a_cuda_only_suite_named_alone_on_cpu_is_an_error():
    result = CliRunner().invoke(cli, ["bench", "kernels", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 1
    assert "suite 'kernels' runs on cuda only, and this run is on cpu" in result.output


def test_markdown_header_states_the_runs_each_row_holds(quick_results):
    document = json.loads((quick_results / "registry-cpu-quick.json").read_text())
    markdown = (quick_results / "registry-cpu-quick.md").read_text()
    rows = len(document["measurements"])
    assert {(m["stats"]["n"], m["warmup"]) for m in document["measurements"]} == {(5, 1)}
    assert f"Runs per row — {rows} rows: n=5 timed runs after 1 untimed warm-up run." in markdown
    assert "20 timed runs" not in markdown


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


def test_markdown_header_says_when_rows_are_single_runs_the_suite_measured(tmp_path):
    from benchmarks.harness import Context
    from benchmarks.report import runs_line

    ctx = Context(suite="methods", quick=True, device="cpu", workdir=tmp_path)
    for method in ("lora", "ia3"):
        ctx.record("accuracy", "adapterhub", [0.7], what="train_adapter", params={"method": method}, unit="")
    ctx.record("train step", "adapterhub", [10.0, 12.0, 11.0], what="train", params={"method": "lora"})
    line = runs_line(ctx.measurements)
    assert line.startswith("Runs per row — 2 rows: one measurement each (n=1; a whole run or a derived value")
    assert "1 row: n=3 samples the suite measured itself" in line


def test_results_go_to_the_current_directory_by_default():
    from pathlib import Path

    from benchmarks.cli import bench_command

    output = next(p for p in bench_command.params if p.name == "output")
    assert output.default == Path("bench-results") and not output.default.is_absolute()
