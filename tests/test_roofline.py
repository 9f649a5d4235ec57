"""The roofline row's floor (benchmarks/roofline.py): a decode step is bounded by reading every weight once or by
its FLOPs at the matmul rate, whichever is longer; and the rates it measures are real rates of this machine."""

from __future__ import annotations

import math

import pytest

from benchmarks.roofline import Roofline, decode_gflop_s, matmul_gflop_s, read_bandwidth_gb_s

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
