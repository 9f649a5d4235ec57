"""--resume under torchrun: 2 gloo processes killed with SIGKILL inside an optimizer step picked at random among the
middle ones, then resumed with the same command plus --resume, end with the adapter of an uninterrupted 2-process
run; a checkpoint written by 2 processes is refused to 1, naming the world size."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_distributed import _torchrun

pytestmark = pytest.mark.integration  # torchrun and its ranks
STEPS = 14  # 46 training blocks of 16 tokens in global batches of 7: 7 steps, twice
EVERY = 2
# A middle step after the first checkpoint, seeded so a failure replays (seed 1 draws 5: the resumed run starts from
# step 4 and crosses the epoch boundary at step 7, with its evaluation and reshuffle).
KILL_AT = random.Random(1).randint(EVERY + 1, STEPS - 2)

# One launch serves two runs, to pay torchrun's and the ranks' start-up (~15 s of imports per rank here) once: the
# uninterrupted reference first, then the same command into other folders, in which each rank, at its KILL_AT-th
# optimizer step (gradients all-reduced, update not applied), says so in a marker file and waits there; the test
# then SIGKILLs the launcher and both ranks, as a lost node would end them. Each run seeds and loads afresh.
CHILD = """
import contextlib, json, os, signal, sys, torch
from pathlib import Path
from adapterhub.cli import main
reference, killed = json.loads(os.environ["RUNS"])
report = os.environ["REFERENCE_REPORT"] if os.environ["RANK"] == "0" else os.devnull  # rank 0 alone reports
with open(report, "w") as out, contextlib.redirect_stdout(out):
    if main(reference) != 0:
        sys.exit("the reference run failed")
calls = 0
original = torch.optim.AdamW.step
def step(self, *args, **kwargs):
    global calls
    calls += 1
    if calls == int(os.environ["KILL_AT"]):
        marker = Path(os.environ["MARKERS"]) / f"rank-{os.environ['RANK']}"
        marker.with_suffix(".tmp").write_text(str(os.getpid()))
        marker.with_suffix(".tmp").rename(marker)  # whole or absent: the test reads the pid as soon as it appears
        while True:
            signal.pause()
    return original(self, *args, **kwargs)
torch.optim.AdamW.step = step
sys.exit(main(killed))
"""


def _command(base: Path, data: Path, checkpoints: Path, output: Path, *flags: str) -> list[str]:
    """A causal LM: its evaluation is a mean token loss computed in the loop, so no rank spends seconds importing
    `evaluate` (as a classifier's first evaluation does) and the launches stay short. A global batch of 7 splits
    4/3, so LoRA's dropout (0.05) draws a different number of masks on each rank and their RNG states part: a
    checkpoint must carry each rank's own."""
    return ["train", "--base", str(base), "--model-task", "causal-lm", "--method", "lora", "-o", "r=4", "--data", str(data),
            "--block-size", "16", "--batch-size", "7", "--epochs", "2", "--lr", "5e-3", "--checkpoint-every", str(EVERY),
            "--checkpoint-dir", str(checkpoints), "--output", str(output), "--json", "--no-progress", *flags]  # fmt: skip


def _env(home: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "ADAPTERHUB_HOME": str(home), "OMP_NUM_THREADS": "1", **extra}


def _wait_for_markers(launcher: subprocess.Popen, markers: Path, log: Path, deadline_s: float) -> list[int]:
    """The pids of both ranks once each is held inside step KILL_AT; fails if the launcher ends first."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        found = sorted(markers.glob("rank-[0-9]"))
        if len(found) == 2:
            return [int(p.read_text()) for p in found]
        if launcher.poll() is not None:
            pytest.fail(f"the launcher exited ({launcher.returncode}) before both ranks reached step {KILL_AT}: "
                        f"{log.read_text()[-3000:]}")  # fmt: skip
        time.sleep(0.05)
    pytest.fail(f"the ranks did not reach step {KILL_AT} within {deadline_s} s: {log.read_text()[-3000:]}")


@dataclass
class Runs:
    """What the one launch left: the uninterrupted run's JSON report and adapter, the killed run's checkpoints."""

    reference: dict
    reference_adapter: Path
    checkpoints: Path


@pytest.fixture(scope="module")
def runs(tiny_llama, text_file, tmp_path_factory) -> Runs:
    root = tmp_path_factory.mktemp("launch")
    (root / "markers").mkdir()
    (root / "child.py").write_text(CHILD)
    reference = _command(tiny_llama, text_file, root / "reference-checkpoints", root / "reference")
    killed = _command(tiny_llama, text_file, root / "checkpoints", root / "killed")
    env = _env(root / "home", RUNS=json.dumps([reference, killed]), REFERENCE_REPORT=str(root / "reference.json"),
               KILL_AT=str(KILL_AT), MARKERS=str(root / "markers"))  # fmt: skip
    # its own session: the SIGKILL below reaches the launcher and nothing of pytest's
    with (root / "stderr.txt").open("w") as log:
        launcher = subprocess.Popen([*_torchrun(), str(root / "child.py")], env=env, stdout=subprocess.DEVNULL, stderr=log,
                                    start_new_session=True)  # fmt: skip
    try:
        ranks = _wait_for_markers(launcher, root / "markers", root / "stderr.txt", deadline_s=240)
    except BaseException:
        launcher.terminate()  # torchrun's agent stops its ranks on SIGTERM
        launcher.wait(timeout=60)
        raise
    # torchrun starts each rank in a session of its own: the launcher's group and each rank's are killed
    for group in (launcher.pid, *ranks):
        os.killpg(group, signal.SIGKILL)
    launcher.wait(timeout=60)
    assert launcher.returncode == -signal.SIGKILL
    assert not (root / "killed").exists()
    return Runs(json.loads((root / "reference.json").read_text()), root / "reference", root / "checkpoints")


def test_two_processes_killed_mid_step_and_resumed_end_with_the_uninterrupted_runs_adapter(runs, tiny_llama, text_file,
                                                                                             tmp_path):  # fmt: skip
    last_written = (KILL_AT - 1) // EVERY * EVERY  # the newest checkpoint before the step the ranks died in
    assert sorted(p.name for p in runs.checkpoints.glob("step-*"))[-1] == f"step-{last_written:08d}"

    args = _command(tiny_llama, text_file, runs.checkpoints, tmp_path / "resumed", "--resume")
    done = subprocess.run([*_torchrun(), "-m", "adapterhub.cli", *args], capture_output=True, text=True,
                          env=_env(tmp_path / "home"), timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    # not anchored to lines: two ranks write to one stderr pipe, so one rank's line can land inside the other's
    resumed_from = re.findall(r"resuming from \S*step-(\d+)", done.stderr)
    assert resumed_from == [f"{last_written:08d}"] * 2  # both ranks, from the same checkpoint, not from step 0
    resumed = json.loads(done.stdout)  # one JSON document: rank 0 alone reports
    assert (resumed["world_size"], resumed["steps"], runs.reference["steps"]) == (2, STEPS, STEPS)
    assert resumed["metrics"] == pytest.approx(runs.reference["metrics"], abs=1e-6)
    expected = load_file(runs.reference_adapter / "adapter_model.safetensors")
    got = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    largest = max(float((expected[k] - got[k]).abs().max()) for k in expected)
    assert largest <= 1e-6, f"max |diff| {largest}"
    assert any(float(t.abs().sum()) > 0 for k, t in expected.items() if "lora_B" in k)  # it did train


def test_a_checkpoint_of_two_processes_is_refused_to_one(runs, tiny_llama, text_file, tmp_path, capsys):
    from adapterhub.cli import main

    before = sorted(p.name for p in runs.checkpoints.iterdir())
    assert main(_command(tiny_llama, text_file, runs.checkpoints, tmp_path / "one", "--resume")) == 1
    assert "world_size: 2 in the checkpoint, 1 now" in capsys.readouterr().err
    assert sorted(p.name for p in runs.checkpoints.iterdir()) == before  # refused before writing anything
