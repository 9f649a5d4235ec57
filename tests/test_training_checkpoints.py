"""--checkpoint-every / --resume: a run killed with SIGKILL mid-step and resumed ends with the adapter the
uninterrupted run trains; checkpoints are written atomically, the newest K kept, and one from another run is
refused naming the difference."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapterhub.checkpoints import CheckpointStore
from adapterhub.errors import OptionError

# Run in a child process: the command line, killed by SIGKILL inside optimizer step KILL_AT (mid-step: its
# gradients computed, its update not applied), as a crash or an OOM killer would.
CHILD = """
import os, signal, sys, torch
from adapterhub.cli import main
calls = 0
original = torch.optim.AdamW.step
def step(self, *args, **kwargs):
    global calls
    calls += 1
    if calls == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, *args, **kwargs)
torch.optim.AdamW.step = step
sys.exit(main(sys.argv[1:]))
"""


def _command(tiny_bert, sentiment_csv, checkpoints: Path, output: Path, *flags: str) -> list[str]:
    return ["train", "--base", str(tiny_bert), "--method", "lora", "-o", "r=4", "-o", "target_modules=query,value",
            "--data", str(sentiment_csv), "--label-column", "sentiment", "--max-samples", "48", "--batch-size", "8",
            "--epochs", "2", "--lr", "5e-3", "--checkpoint-every", "2", "--checkpoint-dir", str(checkpoints),
            "--output", str(output), "--json", "--no-progress", *flags]  # fmt: skip


@pytest.mark.integration
def test_a_run_killed_mid_step_and_resumed_ends_with_the_uninterrupted_runs_adapter(cli_json, tiny_bert, sentiment_csv,
                                                                                   tmp_path, capsys):  # fmt: skip
    checkpoints = tmp_path / "checkpoints"
    killed = subprocess.Popen([sys.executable, "-c", CHILD, *_command(tiny_bert, sentiment_csv, checkpoints, tmp_path / "killed")],
                              env={**os.environ, "KILL_AT": "10"}, stderr=subprocess.PIPE, text=True)  # fmt: skip
    # the uninterrupted run, while the child starts
    whole = cli_json(*_command(tiny_bert, sentiment_csv, tmp_path / "whole-checkpoints", tmp_path / "whole"))
    assert whole["steps"] == 12  # 6 steps of batches of 8, twice; the base's dropout draws from the RNG
    _, stderr = killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL, stderr
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000006", "step-00000008"]  # the newest 2 kept

    from adapterhub.cli import main

    other = _command(tiny_bert, sentiment_csv, checkpoints, tmp_path / "other", "--resume")
    assert main([*other, "--batch-size", "4"]) == 1  # the last --batch-size given wins
    assert "settings.batch_size: 8 in the checkpoint, 4 now" in capsys.readouterr().err

    resumed = cli_json(*_command(tiny_bert, sentiment_csv, checkpoints, tmp_path / "resumed", "--resume"))
    assert resumed["steps"] == 12 and resumed["metrics"] == pytest.approx(whole["metrics"], abs=1e-6)
    expected, got = (
        load_file(tmp_path / "whole" / "adapter_model.safetensors"),
        load_file(tmp_path / "resumed" / "adapter_model.safetensors"),
    )
    assert expected.keys() == got.keys()
    assert max(float((expected[k] - got[k]).abs().max()) for k in expected) <= 1e-6


def _identity(**changes) -> dict:
    return {"base": "bert-1234", "method": "lora", "settings": {"batch_size": 8, "learning_rate": 5e-3}, **changes}


def test_checkpoints_are_atomic_pruned_to_the_newest_k_and_refused_for_another_base(tmp_path):
    store = CheckpointStore(tmp_path, _identity(), every=1, keep=2)
    (tmp_path / ".tmp-step-00000004-99").mkdir()  # what a crash while writing leaves
    (tmp_path / "step-00000005").mkdir()  # a folder without its identity file is not a checkpoint
    for step in (1, 2, 3):
        store.write(step, {"w": torch.full((2,), float(step))}, {"position": step})
    assert [c.step for c in store.complete()] == [2, 3]
    newest = store.newest()
    assert newest.step == 3 and newest.state() == {"position": 3} and float(newest.adapter()["w"][0]) == 3.0
    assert json.loads((newest.path / "run.json").read_text()) == _identity()

    with pytest.raises(
        OptionError, match=r"base: 'bert-1234' in the checkpoint, 'llama-9' now.*another --checkpoint-dir"
    ):
        CheckpointStore(tmp_path, _identity(base="llama-9"), every=1).newest()
    store.clear()
    assert store.newest() is None and not list(tmp_path.glob(".tmp-*"))


def test_checkpoint_state_round_trips_without_pickle_and_refuses_unknown_classes(tmp_path):
    import collections

    from adapterhub.alerts import Alert, AlertRule
    from adapterhub.checkpoint_state import load_state, save_state

    state = {"optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2, 2)}}, "param_groups": [{"params": [0]}]},
             "python": (3, (1, 2, 3), None), "losses": collections.deque([0.5, float("nan")], maxlen=20), "active": {"nan"},
             "fired": [Alert(AlertRule("loss_spike", 4.0, "warn"), 7, "spike")]}  # fmt: skip
    save_state(state, tmp_path)
    back = load_state(tmp_path)
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], torch.ones(2, 2)) and back["python"] == (
        3,
        (1, 2, 3),
        None,
    )
    assert back["losses"].maxlen == 20 and back["active"] == {"nan"} and back["fired"] == state["fired"]
    crafted = json.loads((tmp_path / "state.json").read_text())
    crafted["__dict__"][0][1] = {"__class__": "Popen", "fields": {"args": "touch pwned"}}
    (tmp_path / "state.json").write_text(json.dumps(crafted))
    with pytest.raises(ValueError, match="unknown class 'Popen'"):
        load_state(tmp_path)
