"""The roofline row's floor (benchmarks/roofline.py): a decode step is bounded by reading every weight once or by
its FLOPs at the matmul rate, whichever is longer; and the rates it measures are real rates of this machine."""

from __future__ import annotations

import math

import pytest

from benchmarks.harness import Context
from benchmarks.roofline import MACHINE, Roofline, decode_gflop_s, matmul_gflop_s, read_bandwidth_gb_s, record

SMOLLM2 = {"params": 134.5e6, "weight_bytes": 538e6}  # float32, tied embeddings counted once


def test_a_decode_step_floor_is_the_weight_read_at_few_rows_and_the_flops_at_many():
    roofline = Roofline(read_gb_s=16.6, matmul_gflop_s=144.0, decode_gflop_s={}, threads=2)
    read_ms = 538e6 / 16.6e9 * 1e3  # 32.4 ms: the weights read once
    assert roofline.step_floor_ms(rows=1, **SMOLLM2) == pytest.approx(read_ms)
    assert roofline.step_floor_ms(rows=16, **SMOLLM2) == pytest.approx(read_ms)  # 29.9 ms of FLOPs: still the read
    assert roofline.step_floor_ms(rows=64, **SMOLLM2) == pytest.approx(2 * 134.5e6 * 64 / 144e9 * 1e3)  # 120 ms


def test_measured_rates_are_finite_and_positive_on_small_sizes():
    rates = [read_bandwidth_gb_s(repeats=2, nbytes=8 * 2**20), matmul_gflop_s(64, 64, 128, repeats=2),
             decode_gflop_s(4, 64, 128, transposed=False, cold=True, repeats=2, cold_bytes=2**20),
             decode_gflop_s(4, 64, 128, transposed=True, cold=False, repeats=2)]  # fmt: skip
    assert all(math.isfinite(rate) and rate > 0 for rate in rates), rates


def test_a_suites_roofline_rows_give_each_measured_step_as_a_multiple_of_its_floor(tmp_path):
    roofline = Roofline(read_gb_s=16.6, matmul_gflop_s=144.0, decode_gflop_s={}, threads=2)
    ctx = Context(suite="serving", quick=True, device="cpu", workdir=tmp_path)
    steps = {"ours": (16, {0.5: 97.2, 2.0: 324.0}), "static": (16, {0.5: None}), "peft": (1, {0.5: 64.8})}
    record(ctx, roofline, int(SMOLLM2["params"]), int(SMOLLM2["weight_bytes"]), steps)
    rows = {(m.case, m.impl, tuple(sorted(m.params.items()))): m.stats.median for m in ctx.measurements}
    floor = 538e6 / 16.6e9 * 1e3  # both row counts are bound by the weight read here
    assert rows[("roofline: read bandwidth", MACHINE, ())] == 16.6
    assert rows[("roofline: decode step floor", MACHINE, (("rows", 16),))] == pytest.approx(floor)
    assert rows[("roofline: decode step / floor", "ours", (("rate", 2.0), ("rows", 16)))] == pytest.approx(
        324.0 / floor
    )
    assert rows[("roofline: decode step / floor", "peft", (("rate", 0.5), ("rows", 1)))] == pytest.approx(64.8 / floor)
    assert not [m for m in ctx.measurements if m.impl == "static"]  # no inter-token latency, no multiple
    assert ctx.settings["roofline"]["weight_bytes"] == 538e6
