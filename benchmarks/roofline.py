"""This machine's floor for a decode step, measured with torch on the spot: the roofline row of the serving suite.

A decode step of a dense model must at least read every weight once (``bytes / read bandwidth``) and do two FLOPs
per parameter per row (``2 x params x rows / matmul rate``); whichever takes longer is the floor, and a measured
step divided by it says how far the engine is from this machine's limits (issue 28). Both rates are measured here,
in the calling process with its torch thread settings, so they describe the machine as the suite found it (a shared
machine's load included), not a datasheet:

* read bandwidth: ``sum`` over a 512 MB float32 tensor, best of several (it reads each byte once and does one add
  per 4 bytes, far below the FLOP rate, so memory bounds it);
* matmul rate: a (512 x 576) @ (576 x 1536) float32 product, big enough to run at the FLOP peak torch reaches here;
* the decode shape (16 x 576) by a (1536 x 576) weight, as ``nn.Linear`` computes it (``x @ W.t()``) and with the
  weight stored transposed (``x @ Wt``), each cold (cycling through more weights than the caches hold, as a decode
  step reads its layers) and warm (one weight, repeated): how much the weights' layout and the caches matter.

``record`` adds them to a suite as its roofline rows (the serving suite calls it); ``python -m benchmarks.roofline``
prints the figures and SmolLM2-135M's 1- and 16-row floors.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.harness import Context

BANDWIDTH_BYTES = 512 * 2**20
MATMUL = (512, 576, 1536)  # (rows, d_in, d_out) of the FLOP-rate product
DECODE = (16, 576, 1536)  # SmolLM2-135M's gate/up projection at 16 rows
COLD_BYTES = 256 * 2**20  # weights cycled through for the cold decode shapes: well past any cache
MACHINE = "this machine"  # the impl column of the roofline's own rows


@dataclass(frozen=True)
class Roofline:
    """Measured rates (best of their runs) and the thread count they were measured with."""

    read_gb_s: float
    matmul_gflop_s: float
    decode_gflop_s: dict[str, float]  # "x @ W.t() cold", "x @ Wt cold", ..., "x @ W packed warm" (oneDNN)
    threads: int

    def step_floor_ms(self, weight_bytes: float, params: float, rows: int) -> float:
        """The least time a decode step of ``rows`` rows can take on a model of ``params`` parameters held in
        ``weight_bytes``: reading every weight once, or its FLOPs at the matmul rate, whichever is longer."""
        return max(weight_bytes / (self.read_gb_s * 1e9), 2 * params * rows / (self.matmul_gflop_s * 1e9)) * 1e3

    def to_dict(self) -> dict:
        return asdict(self)


def _best_s(fn, repeats: int) -> float:
    fn()  # warm-up: first-touch page faults and kernel selection are not the rate
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def read_bandwidth_gb_s(repeats: int = 5, nbytes: int = BANDWIDTH_BYTES) -> float:
    import torch

    data = torch.ones(nbytes // 4, dtype=torch.float32)
    return data.nbytes / _best_s(lambda: data.sum(), repeats) / 1e9


def matmul_gflop_s(rows: int, d_in: int, d_out: int, repeats: int = 10) -> float:
    import torch

    x, w = torch.randn(rows, d_in), torch.randn(d_in, d_out)
    return 2 * rows * d_in * d_out / _best_s(lambda: x @ w, repeats) / 1e9


def decode_gflop_s(
    rows: int, d_in: int, d_out: int, *, transposed: bool, cold: bool, repeats: int = 5, cold_bytes: int = COLD_BYTES,
    packed: bool = False,
) -> float:  # fmt: skip
    """FLOP rate of ``x @ W.t()`` (``nn.Linear``'s layout, W: (d_out, d_in)), ``x @ Wt`` (Wt: (d_in, d_out)
    contiguous), or with ``packed`` W reordered by oneDNN as an adapter pool packs it (adapterhub/runtime/packed.py),
    over enough distinct weights when ``cold`` that each is read from memory, as in a decode step."""
    import torch

    count = max(1, cold_bytes // (4 * d_in * d_out)) if cold else 1
    weights = [torch.randn(d_in, d_out) if transposed else torch.randn(d_out, d_in) for _ in range(count)]
    if packed:
        weights = [torch.ops.mkldnn._reorder_linear_weight(w, None) for w in weights]
    x = torch.randn(rows, d_in)
    passes = 1 if cold else 50  # warm: one weight, used 50 times in a row (a single product is too short to time)

    def product(w):
        if packed:
            return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
        return x @ w if transposed else x @ w.t()

    def products() -> None:
        for _ in range(passes):
            for w in weights:
                product(w)

    return 2 * rows * d_in * d_out * count * passes / _best_s(products, repeats) / 1e9


def measure(repeats: int = 5) -> Roofline:
    """Measure this machine's rates now, with the calling process's torch threads."""
    import torch

    decode = {
        f"{'x @ Wt' if transposed else 'x @ W.t()'} {'cold' if cold else 'warm'}": decode_gflop_s(
            *DECODE, transposed=transposed, cold=cold, repeats=repeats
        )
        for cold in (True, False)
        for transposed in (False, True)
    }
    if torch.backends.mkldnn.is_available():
        for cold in (True, False):
            decode[f"x @ W packed {'cold' if cold else 'warm'}"] = decode_gflop_s(*DECODE, transposed=False, cold=cold,
                                                                                  repeats=repeats, packed=True)  # fmt: skip
    return Roofline(read_bandwidth_gb_s(repeats), matmul_gflop_s(*MATMUL, repeats=2 * repeats), decode,
                    torch.get_num_threads())  # fmt: skip


def record(ctx: Context, measured: Roofline, params: int, weight_bytes: int,
           steps: dict[str, tuple[int, dict[float, float | None]]]) -> None:  # fmt: skip
    """Add the roofline rows to ``ctx``: the measured rates, the decode step's floor for the model (``params``
    parameters in ``weight_bytes``) at each row count of ``steps``, and each measured step as a multiple of its
    floor. ``steps``: ``{impl: (rows, {rate: measured decode step in ms, or None})}``, ``rows`` the most rows that
    impl decodes at once (at lower rates it runs fewer, so the multiple there is a lower bound)."""
    ctx.settings["roofline"] = {**measured.to_dict(), "params": params, "weight_bytes": weight_bytes}
    ctx.record("roofline: read bandwidth", MACHINE, [measured.read_gb_s], unit="GB/s",
               what="torch sum over 512 MB float32, best of 5, in the suite's process and threads")  # fmt: skip
    ctx.record("roofline: matmul rate", MACHINE, [measured.matmul_gflop_s], unit="GFLOP/s",
               what="(512 x 576) @ (576 x 1536) float32, best of 10")  # fmt: skip
    floors = {
        rows: measured.step_floor_ms(weight_bytes, params, rows) for rows in sorted({r for r, _ in steps.values()})
    }
    for rows, floor in floors.items():
        ctx.record("roofline: decode step floor", MACHINE, [floor], params={"rows": rows},
                   what="max(weight bytes / read bandwidth, 2 x params x rows / matmul rate)")  # fmt: skip
    for impl, (rows, by_rate) in steps.items():
        floor = floors[rows]
        for rate, step in by_rate.items():
            if step is not None:
                ctx.record("roofline: decode step / floor", impl, [step / floor], params={"rate": rate, "rows": rows},
                           unit="x", what=f"ITL p50 / the decode step floor at {rows} rows")  # fmt: skip


def model_size(model_dir) -> tuple[int, int]:
    """(parameters, bytes) of the model saved in ``model_dir``, tied weights counted once, built on the meta
    device from its config (no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


if __name__ == "__main__":
    from benchmarks import models

    roofline = measure()
    params, nbytes = model_size(models.transformers_dir(models.smollm2_gguf()))
    print(
        f"threads {roofline.threads}; read {roofline.read_gb_s:.1f} GB/s; matmul {MATMUL} {roofline.matmul_gflop_s:.0f} GFLOP/s"
    )
    for name, rate in roofline.decode_gflop_s.items():
        print(f"decode shape {DECODE} {name}: {rate:.0f} GFLOP/s")
    for rows in (1, 16):
        print(f"SmolLM2-135M ({params / 1e6:.1f} M params, {nbytes / 1e6:.0f} MB float32) decode step floor at {rows} rows: "
              f"{roofline.step_floor_ms(nbytes, params, rows):.1f} ms")  # fmt: skip
