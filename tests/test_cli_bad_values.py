"""Every bad value a user can give `adapterhub train / eval / continual train` is one `error:` line naming the
option and its valid values, with a non-zero exit status and no traceback.

Values that are wrong on their own are run against a base path that does not exist: the error names the
option, not the base, so it was raised before the base would have been loaded. Values that only the loaded
base or the data can refute (target modules, file encoding) run on tiny real models.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from adapterhub.cli import main
from adapterhub.quiet import GEMM_4BIT_NOTICE

MISSING_BASE = "no-such-base-dir"

METHOD_OPTIONS = [  # (method, -o values, the option the error must name)
    ("lora", ["r=0"], "'r'"),
    ("lora", ["r=-3"], "'r'"),
    ("lora", ["r=four"], "'r'"),
    ("lora", ["dropout=2"], "'dropout'"),
    ("lora", ["dropout=-0.1"], "'dropout'"),
    ("lora", ["bias=foo"], "'bias'"),
    ("lora", ["alpha=-1"], "'alpha'"),
    ("lora", ["target_modules="], "'target_modules'"),
    ("lora", ["dora=maybe"], "'dora'"),
    ("lora", ["rank=4"], "'rank'"),
    ("adalora", ["init_r=0"], "'init_r'"),
    ("adalora", ["target_r=0"], "'target_r'"),
    ("adalora", ["init_r=4", "target_r=8"], "'target_r'"),
    ("adalora", ["warmup_fraction=1.5"], "'warmup_fraction'"),
    ("adalora", ["final_fraction=-0.1"], "'final_fraction'"),
    ("adalora", ["warmup_fraction=0.6", "final_fraction=0.5"], "'warmup_fraction'"),
    ("adalora", ["total_step=-5"], "'total_step'"),
    ("adalora", ["delta_t=0"], "'delta_t'"),
    ("adalora", ["beta1=1"], "'beta1'"),
    ("adalora", ["orth_reg_weight=-1"], "'orth_reg_weight'"),
    ("adalora", ["dropout=1"], "'dropout'"),
    ("bottleneck", ["reduction_factor=0"], "'reduction_factor'"),
    ("bottleneck", ["non_linearity=swish"], "'non_linearity'"),
    ("bottleneck", ["variant=adapterdrop"], "'variant'"),
    ("bottleneck", ["init_std=0"], "'init_std'"),
    ("ia3", ["target_modules=key,value", "feedforward_modules=dense"], "'feedforward_modules'"),
    ("prompt_tuning", ["num_virtual_tokens=0"], "'num_virtual_tokens'"),
    ("prompt_tuning", ["init=vocab"], "'init'"),
    ("prompt_tuning", ["init=text"], "'init_text'"),
    ("prefix_tuning", ["num_virtual_tokens=0"], "'num_virtual_tokens'"),
    ("prefix_tuning", ["projection_hidden_size=0"], "'projection_hidden_size'"),
]

TRAIN_FLAGS = [  # (flag, bad value)
    ("--batch-size", "0"), ("--batch-size", "-1"), ("--batch-size", "many"), ("--epochs", "0"), ("--lr", "-1e-3"),
    ("--max-length", "0"), ("--block-size", "1"), ("--test-split", "1"), ("--test-split", "-0.1"),
    ("--max-samples", "0"), ("--eval-every", "0"), ("--patience", "0"), ("--log-every", "0"), ("--min-delta", "-1"),
    ("--encoding", "utf-9"), ("--alert", "loss_spike=-1"), ("--alert", "no_such_rule=1"), ("--task", "translation"),
    ("--min-delta", "nan"),
]  # fmt: skip

EVAL_FLAGS = [("--test-split", "1.5"), ("--max-samples", "0"), ("--encoding", "utf-9")]

SERVE_FLAGS = [  # (flag, bad value): ServeSpec's, ServerSettings' and AlertThresholds' limits, as flags
    ("--max-running", "0"), ("--prefill-chunk", "0"), ("--max-waiting", "-1"), ("--batching", "dynamic"),
    ("--max-wait-ms", "nan"), ("--max-wait-ms", "60001"), ("--max-batch-size", "0"), ("--slots", "0"),
    ("--host-cache", "-1"), ("--alert-p95-ms", "-1"), ("--alert-memory-mb", "nan"), ("--model-task", "translation"),
]  # fmt: skip


def one_error_line(capsys, args: list[str]) -> str:
    """Run the CLI in-process; it must fail with exactly one non-empty stderr line and no traceback."""
    capsys.readouterr()
    status = main(args)  # an unexpected exception would escape here and fail the test with its traceback
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status != 0, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: "), err
    return lines[0]


def train_args(base, data, *extra: str) -> list[str]:
    return ["train", "--base", str(base), "--data", str(data), "--label-column", "sentiment", "--no-progress", *extra]


@pytest.mark.parametrize(
    "method, values, option", METHOD_OPTIONS, ids=lambda v: ",".join(v) if isinstance(v, list) else str(v)
)
def test_bad_method_option_is_one_line_naming_it_before_the_base_loads(method, values, option, sentiment_csv, capsys):
    flags = [arg for value in values for arg in ("-o", value)]
    line = one_error_line(capsys, train_args(MISSING_BASE, sentiment_csv, "--method", method, *flags))
    assert f"method {method!r}" in line and option in line
    assert MISSING_BASE not in line


@pytest.mark.parametrize("flag, value", TRAIN_FLAGS)
def test_bad_train_flag_is_one_line_naming_it_before_the_base_loads(flag, value, sentiment_csv, capsys):
    line = one_error_line(capsys, train_args(MISSING_BASE, sentiment_csv, "--method", "lora", flag, value))
    assert flag in line and MISSING_BASE not in line


@pytest.mark.parametrize("flag, value", EVAL_FLAGS)
def test_bad_eval_flag_is_one_line_naming_it(flag, value, sentiment_csv, capsys):
    line = one_error_line(
        capsys, ["eval", "some-adapter", "--base", MISSING_BASE, "--data", str(sentiment_csv), flag, value]
    )
    assert flag in line and MISSING_BASE not in line


@pytest.mark.parametrize("flag, value", SERVE_FLAGS)
def test_bad_serve_flag_is_one_line_naming_it_before_the_base_loads(flag, value, capsys):
    line = one_error_line(capsys, ["serve", "--base", MISSING_BASE, flag, value])
    assert flag in line and MISSING_BASE not in line


def test_serve_reports_the_missing_base_itself_once_the_values_are_good(capsys):
    """What makes the test above an ordering check for serve."""
    line = one_error_line(capsys, ["serve", "--base", MISSING_BASE, "--max-running", "4", "--device", "cpu"])
    assert MISSING_BASE in line


def test_the_missing_base_itself_is_reported_once_the_values_are_good(sentiment_csv, capsys):
    """What makes the tests above an ordering check: with good values the missing base is the error."""
    line = one_error_line(capsys, train_args(MISSING_BASE, sentiment_csv, "--method", "lora"))
    assert MISSING_BASE in line


@pytest.mark.parametrize("method", ["lora", "adalora", "ia3", "bottleneck"])
def test_target_modules_matching_no_layer_name_modules_that_exist(method, tiny_bert, sentiment_csv, capsys):
    line = one_error_line(
        capsys, train_args(tiny_bert, sentiment_csv, "--method", method, "-o", "target_modules=no_such_layer")
    )
    assert "'target_modules'" in line and "no_such_layer" in line
    assert "query" in line and "value" in line  # the tiny BERT's attention projections


def test_causal_lm_text_not_in_the_encoding_names_the_file_and_encoding(tmp_path, capsys):
    text = tmp_path / "latin.txt"
    text.write_bytes("café the movie was great ".encode("latin-1") * 40)
    args = [
        "train",
        "--base",
        MISSING_BASE,
        "--task",
        "causal-lm",
        "--method",
        "lora",
        "--data",
        str(text),
        "--no-progress",
    ]
    line = one_error_line(capsys, args)
    assert "latin.txt" in line and "--encoding" in line and MISSING_BASE not in line


def test_classification_csv_not_in_the_encoding_names_the_file_and_encoding(tmp_path, capsys):
    data = tmp_path / "latin.csv"
    data.write_bytes("text,sentiment\ncafé great,pos\nbad film,neg\n".encode("latin-1"))
    line = one_error_line(capsys, train_args(MISSING_BASE, data, "--method", "lora"))
    assert "latin.csv" in line and "--encoding" in line


def test_bad_plan_settings_are_one_line_naming_the_setting(tiny_bert, sentiment_csv, tmp_path, capsys):
    plan = {"sequence": "seq", "base": str(tiny_bert), "method": "lora", "settings": {"batch_size": 0},
            "tasks": [{"name": "one", "path": str(sentiment_csv), "label_column": "sentiment"}]}  # fmt: skip
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    line = one_error_line(capsys, ["continual", "train", str(tmp_path / "plan.json"), "--no-progress"])
    assert "'batch_size'" in line


@pytest.mark.integration
def test_a_fresh_process_prints_one_line_and_no_bitsandbytes_notice(sentiment_csv, tmp_path):
    executable = shutil.which("adapterhub")
    assert executable, "the adapterhub console script is not installed"
    result = subprocess.run(
        [executable, *train_args(MISSING_BASE, sentiment_csv, "--method", "lora", "--batch-size", "0")],
        capture_output=True, text=True, env={**os.environ, "ADAPTERHUB_HOME": str(tmp_path)},
    )  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and len(lines) == 1 and "--batch-size" in lines[0], result.stderr


# bitsandbytes logs its notice at import only on CPUs with AVX512-BF16. The probe re-runs that import-time
# code of bitsandbytes with its CPU-feature probe answering yes, so the notice is really logged here too.
BNB_PROBE = """
import importlib, sys
if sys.argv[1] == "adapterhub":
    from adapterhub.cli import main
import bitsandbytes.functional
bitsandbytes.functional.has_avx512bf16 = lambda: True
importlib.reload(importlib.import_module("bitsandbytes.backends.cpu.ops"))
import logging
logging.getLogger("bitsandbytes.backends.cpu.ops").warning("another bitsandbytes warning")
if sys.argv[1] == "adapterhub":
    sys.exit(main(["plugins"]))
"""


@pytest.mark.parametrize("first_import", ["adapterhub", "bitsandbytes"])
@pytest.mark.integration
def test_bitsandbytes_kernels_notice_is_silenced_but_its_other_warnings_are_not(first_import, tmp_path):
    pytest.importorskip("bitsandbytes")
    result = subprocess.run(
        [sys.executable, "-c", BNB_PROBE, first_import], capture_output=True, text=True,
        env={**os.environ, "ADAPTERHUB_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "another bitsandbytes warning" in result.stderr
    # without adapterhub the notice shows: the probe does reach it on this machine
    assert (GEMM_4BIT_NOTICE in result.stderr) == (first_import == "bitsandbytes"), result.stderr
