"""What `adapterhub train` and `eval` print, run as a user runs them (a fresh process, its real stdout and
stderr): our own output and progress bars, none of the model libraries' warnings or bars unless `--verbose`
asks for them; and what they leave behind in the temporary folder: nothing of their own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # each test runs the CLI in a subprocess

LIBRARY_NOISE = ("Warning", "warnings.warn", "Loading weights")
OUR_STDERR = ("train:", "step ", "eval at step ")  # our progress bar, log lines and per-epoch evaluation


def _run(tmp: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    """``adapterhub *args`` in a fresh process with its own TMPDIR and ADAPTERHUB_HOME; must succeed."""
    env = {**os.environ, "TMPDIR": str(tmp), "ADAPTERHUB_HOME": str(home)}
    for name in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS", "PYTHONWARNINGS"):
        env.pop(name, None)  # as on a user's machine: the libraries' defaults
    done = subprocess.run([sys.executable, "-m", "adapterhub.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def _not_ours(stderr: str) -> list[str]:
    """The lines of ``stderr`` (progress bars redraw with carriage returns) that adapterhub did not write."""
    lines = (line.strip() for line in stderr.replace("\r", "\n").splitlines())
    return [line for line in lines if line and not line.startswith(OUR_STDERR)]


def _train_args(tiny_bert: Path, sentiment_csv: Path, *extra: str) -> list[str]:
    return ["train", "--base", str(tiny_bert), "--method", "lora", "-o", "target_modules=query,value",
            "--data", str(sentiment_csv), "--label-column", "sentiment", "--epochs", "1", *extra]  # fmt: skip


def _ours(tmp: Path) -> list[str]:
    # torch creates its per-user compile cache (torchinductor_<user>) in the temporary folder on `import
    # torch._dynamo`, which peft imports: one folder shared by every run, not something a command made
    return sorted(p.name for p in tmp.iterdir() if not p.name.startswith("torchinductor_"))


@pytest.fixture(scope="module")
def trained(tiny_bert, sentiment_csv, tmp_path_factory):
    """One `adapterhub train --push` and one `adapterhub eval` of it, with progress: (tmp, train, eval)."""
    tmp, home = tmp_path_factory.mktemp("tmpdir"), tmp_path_factory.mktemp("home")
    train = _run(tmp, home, *_train_args(tiny_bert, sentiment_csv, "--push", "quiet"))
    evaluated = _run(tmp, home, "eval", "quiet", "--base", str(tiny_bert), "--data", str(sentiment_csv))
    return tmp, train, evaluated


def test_train_shows_our_progress_and_no_library_warnings_or_bars(trained):
    _, train, _ = trained
    assert "train:" in train.stderr and "step/s" in train.stderr  # our progress bar
    assert "pushed: quiet@1" in train.stdout
    for noise in LIBRARY_NOISE:
        assert noise not in train.stderr + train.stdout, noise
    assert _not_ours(train.stderr) == []


def test_eval_shows_its_metrics_and_no_library_warnings_or_bars(trained):
    _, _, evaluated = trained
    assert "adapter: quiet@1" in evaluated.stdout and "accuracy: " in evaluated.stdout
    for noise in LIBRARY_NOISE:
        assert noise not in evaluated.stderr + evaluated.stdout, noise
    assert _not_ours(evaluated.stderr) == []


def test_verbose_shows_the_library_warnings_and_bars(tiny_bert, sentiment_csv, tmp_path):
    train = _run(
        tmp_path / "tmp", tmp_path / "home", "--verbose", *_train_args(tiny_bert, sentiment_csv, "--push", "loud")
    )
    assert "FutureWarning" in train.stderr and "Loading weights" in train.stderr


def test_train_with_push_and_without_output_leaves_nothing_in_the_temporary_folder(trained):
    tmp, train, _ = trained
    assert "adapter_dir: None" in train.stdout  # the registry holds it
    assert _ours(tmp) == []


def test_train_with_output_keeps_the_adapter_there_and_nothing_in_the_temporary_folder(tiny_bert, sentiment_csv,
                                                                                     tmp_path):  # fmt: skip
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    train = _run(tmp, tmp_path / "home", *_train_args(tiny_bert, sentiment_csv, "--push", "kept", "--output",
                                                      str(tmp_path / "kept"), "--no-progress"))  # fmt: skip
    assert (
        f"adapter_dir: {tmp_path / 'kept'}" in train.stdout
        and (tmp_path / "kept" / "adapter_model.safetensors").is_file()
    )
    assert _ours(tmp) == []
