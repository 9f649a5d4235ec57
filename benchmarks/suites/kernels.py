"""Triton kernels (CUDA only): fused LoRA linear, training step, gathered multi-adapter LoRA, NF4 matmul vs peft.

Run on a machine with a CUDA GPU, after `pip install -e ./plugins/triton-kernels`:
`python -m benchmarks kernels` (or `adapterhub bench kernels`; `--quick` for small sizes). Without CUDA it
refuses: the Triton interpreter on a CPU is for correctness tests, not timing.

Every kernel is first checked against its torch reference on the GPU (the tests normally run it in the
interpreter only) at r = 8, 16, 64 and 128, the fused kernel with its gradients; a mismatch stops the run.
Timed cases, all bfloat16, r=16:

* `lora forward` (d x d, 4096 tokens): `torch.nn.functional.linear` alone (`torch base`), the fused kernel
  (`adapterhub`), peft's LoRA `Linear` forward (`peft`). The fused kernel's overhead over the base alone is
  stated as a target (<= 15 %).
* `train step` (4 LoRA linears of d x d, 8 x 512 tokens, AdamW): peft's layers vs the same layers dispatched
  through the fused kernel by `adapterhub_lora.dispatch.patch_lora_model`; step time and CUDA peak memory; lora
  dropout 0 (fully fused) and 0.05 (dropout runs in torch, the shrink is precomputed).
* `gather decode` (128 rows of one token) and `gather prefill` (16 rows of 64 tokens), 1, 8, 32 or 128
  distinct adapters: the Triton BGMV / SGMV op (`adapterhub`), peft's mixed-adapter batch (`adapter_names`,
  `peft`) and the core's torch fallback (`torch gather`); compare each to its own 1-adapter row.
* `nf4 matmul` (d x d NF4 weight, double quant; 1, 16 and 4096 tokens): the Triton dequantize-in-the-matmul
  kernel (`adapterhub`) vs bitsandbytes `matmul_4bit` (`peft`: what peft's QLoRA layers call) and the bf16
  base (`torch base`).
"""

from __future__ import annotations

from benchmarks.harness import BASELINE, OURS, Context
from benchmarks.suites import BenchmarkError

REQUIRES = {"triton": "triton", "adapterhub_triton": "-e ./plugins/triton-kernels", "bitsandbytes": "bitsandbytes"}
DEVICES = ("cuda",)  # `bench all` skips this suite on a CPU with one line
BASE = "torch base"
TORCH_GATHER = "torch gather"
RANK = 16


def run(ctx: Context) -> None:
    import torch

    if not ctx.cuda or not torch.cuda.is_available():
        raise BenchmarkError("the kernels suite needs a CUDA GPU (run it with --device cuda on a GPU machine); "
                             "on a CPU the Triton kernels only run in the interpreter, which is for tests")  # fmt: skip
    torch.backends.cuda.matmul.allow_tf32 = False
    dims = [1024] if ctx.quick else [2048, 4096]
    ctx.settings.update(dtype="bfloat16", rank=RANK, dims=dims, gpu=torch.cuda.get_device_name())
    ctx.settings.update(check_correctness("cuda", ctx.seed))
    for d in dims:
        _lora_forward(ctx, d, tokens=512 if ctx.quick else 4096)
        for dropout in (0.0, 0.05):
            _train_step(ctx, d, dropout, layers=2 if ctx.quick else 4, tokens=(2, 256) if ctx.quick else (8, 512))
        for tokens in (1, 16, 512 if ctx.quick else 4096):
            _nf4(ctx, d, tokens)
    d = dims[-1]
    for adapters in (1, 8, 32) if ctx.quick else (1, 8, 32, 128):
        _gather(ctx, "gather decode", d, adapters, rows=32 if ctx.quick else 128, seq=1)
        _gather(ctx, "gather prefill", d, adapters, rows=8 if ctx.quick else 16, seq=32 if ctx.quick else 64)
    ctx.note("ratio = adapterhub / peft (below 1: the Triton kernel took less). `torch base` is the frozen base "
             "matmul alone; `torch gather` is adapterhub's torch fallback for mixed batches.")  # fmt: skip


GATE_RANKS = (8, 16, 64, 128)  # both sides of the 16-wide dot tile and of the fused kernel's in-register shrink


def check_correctness(device: str, seed: int, dims: tuple[int, int, int] = (300, 520, 700)) -> dict[str, float]:
    """The kernels against their references at every rank of ``GATE_RANKS``, before any timing: fused LoRA forward
    and its three gradients, BGMV, SGMV, NF4, in bfloat16 (tolerance 6e-2 relative to the largest value) on
    ``dims`` = (tokens, d_in, d_out). Returns the max errors; raises ``BenchmarkError`` on a mismatch. (The tests
    run it in the interpreter on small dims.)"""
    import torch
    from adapterhub_triton import bgmv, fused_lora, nf4_matmul, sgmv
    from bitsandbytes.functional import quantize_4bit

    tokens, d_in, d_out = dims
    g = torch.Generator(device=device).manual_seed(seed)
    rand = lambda *shape, s=0.2: (torch.randn(*shape, device=device, generator=g) * s).bfloat16()  # noqa: E731
    x, W = rand(tokens, d_in, s=1.0), rand(d_out, d_in)
    ids = torch.randint(-1, 9, (tokens,), device=device, generator=g)
    scales = torch.rand(9, device=device, generator=g) + 0.5
    errors = {}
    for rank in GATE_RANKS:
        A, B = rand(rank, d_in), rand(d_out, rank)
        slots_A, slots_B = rand(9, rank, d_in), rand(9, d_out, rank)
        fused_out, reference_out = _fused_outputs_and_grads(fused_lora, x, W, A, B)
        pairs = {f"fused lora {what} r={rank}": (ours, ref) for what, ours, ref in zip(
            ("forward", "dx", "dA", "dB"), fused_out, reference_out)}  # fmt: skip
        pairs[f"bgmv r={rank}"] = (bgmv.bgmv(x, slots_A, slots_B, scales, ids),
                                   bgmv.bgmv_reference(x, slots_A, slots_B, scales, ids))  # fmt: skip
        sorted_ids = ids.sort().values
        pairs[f"sgmv r={rank}"] = (sgmv.sgmv(x, slots_A, slots_B, scales, sorted_ids),
                                   bgmv.bgmv_reference(x, slots_A, slots_B, scales, sorted_ids))  # fmt: skip
        errors.update(_gate(pairs))
    packed, state = quantize_4bit(rand(d_out, d_in), quant_type="nf4", compress_statistics=True)
    errors.update(
        _gate({"nf4": (nf4_matmul.nf4_linear(x, packed, state), nf4_matmul.nf4_linear_reference(x, packed, state))})
    )
    return errors


def _fused_outputs_and_grads(fused_lora, x, W, A, B):
    """(y, dx, dA, dB) of the fused op in bfloat16 and of the reference in float32, for the loss ``(y * g).sum()``."""
    import torch

    g = torch.randn(x.shape[0], W.shape[0], device=x.device, generator=torch.Generator(device=x.device).manual_seed(1))
    results = []
    for fn, dtype in ((fused_lora.lora_linear, torch.bfloat16), (fused_lora.lora_linear_reference, torch.float32)):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (x, A, B)]
        y = fn(leaves[0], W.to(dtype), None, leaves[1], leaves[2], 0.5)
        (y.float() * g).sum().backward()
        results.append([y.detach(), *(t.grad for t in leaves)])
    return results


def _gate(pairs: dict) -> dict[str, float]:
    errors = {}
    for name, (ours, reference) in pairs.items():
        error = (ours.float() - reference.float()).abs().max().item()
        scale = reference.float().abs().max().item()
        if error > 6e-2 * max(1.0, scale):
            raise BenchmarkError(f"the Triton {name} kernel disagrees with its torch reference on this device "
                                 f"(max error {error:.3g} on values up to {scale:.3g}); fix it before timing")  # fmt: skip
        errors[f"max_error_{name.replace(' ', '_').replace('=', '')}"] = round(error, 6)
    return errors


def _peft_layers(d: int, layers: int, dropout: float, adapters: int = 1):
    import torch
    from peft import LoraConfig, get_peft_model

    model = torch.nn.Sequential(*[torch.nn.Linear(d, d, bias=False) for _ in range(layers)])
    config = LoraConfig(
        r=RANK, lora_alpha=2 * RANK, lora_dropout=dropout, target_modules=[str(i) for i in range(layers)]
    )
    model = get_peft_model(model, config, adapter_name="a0", autocast_adapter_dtype=False)
    for i in range(1, adapters):
        model.add_adapter(f"a{i}", config)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.02)  # a LoRA after some training, not peft's zero start
    return model.to("cuda", torch.bfloat16)


def _lora_forward(ctx: Context, d: int, tokens: int) -> None:
    import adapterhub_triton
    import torch

    params = {"d": d, "tokens": tokens}
    x = torch.randn(tokens, d, device="cuda", dtype=torch.bfloat16)
    model = _peft_layers(d, 1, 0.0).eval()
    layer = model.base_model.model[0]
    W, A, B, scale = layer.base_layer.weight, layer.lora_A["a0"].weight, layer.lora_B["a0"].weight, layer.scaling["a0"]
    with torch.no_grad():
        base = ctx.time(
            "lora forward", BASE, lambda: torch.nn.functional.linear(x, W), what="F.linear(x, W)", params=params
        )
        ours = ctx.time("lora forward", OURS, lambda: adapterhub_triton.lora_linear(x, W, None, A, B, scale),
                        what="adapterhub_triton.lora_linear (one launch)", params=params)  # fmt: skip
        ctx.time("lora forward", BASELINE, lambda: layer(x), what="peft lora.Linear.forward", params=params)
    overhead = 100.0 * (ours.stats.median / base.stats.median - 1.0)
    ctx.check(f"fused LoRA forward overhead over the base matmul, d={d}", overhead, 15.0, unit="%")


def _train_step(ctx: Context, d: int, dropout: float, layers: int, tokens: tuple[int, int]) -> None:
    import adapterhub_triton
    import torch
    from adapterhub_lora.dispatch import patch_lora_model
    from adapterhub_triton.support import supports

    params = {"d": d, "layers": layers, "dropout": dropout}
    for impl in (BASELINE, OURS):
        model = _peft_layers(d, layers, dropout).train()
        if impl == OURS:
            patch_lora_model(model, adapterhub_triton.lora_linear, supports)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        x = torch.randn(*tokens, d, device="cuda", dtype=torch.bfloat16)

        def step() -> None:
            model(x).float().square().mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        what = (
            "peft LoRA layers, fwd + bwd + AdamW"
            if impl == BASELINE
            else "the same, dispatched by adapterhub_lora.dispatch"
        )
        ctx.time("train step", impl, step, what=what, params=params, memory=True)
        model = optimizer = None  # free them before the next side's run
        torch.cuda.empty_cache()


def _gather(ctx: Context, case: str, d: int, adapters: int, rows: int, seq: int) -> None:
    import adapterhub_triton
    import torch

    from adapterhub import kernels

    params = {"adapters": adapters, "rows": rows, "seq": seq}
    model = _peft_layers(d, 1, 0.0, adapters).eval()
    layer = model.base_model.model[0]
    names = [f"a{i}" for i in range(adapters)]
    A_slots = torch.stack([layer.lora_A[n].weight for n in names])  # (slots, r, d)
    B_slots = torch.stack([layer.lora_B[n].weight for n in names])  # (slots, d, r)
    scales = torch.tensor([layer.scaling[n] for n in names], device="cuda")
    slot_ids = torch.arange(rows, device="cuda") % adapters  # rows interleaved across adapters
    row_names = [names[i] for i in slot_ids.tolist()]
    x = torch.randn(rows, seq, d, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        ctx.time(
            case,
            OURS,
            lambda: adapterhub_triton.lora_gather_forward(x, A_slots, B_slots, scales, slot_ids),
            what="Triton BGMV (seq 1) / SGMV delta",
            params=params,
        )
        ctx.time(
            case,
            TORCH_GATHER,
            lambda: kernels.lora_gather_forward(x, A_slots, B_slots, scales, slot_ids),
            what="index_select + bmm delta",
            params=params,
        )
        ctx.time(case, BASELINE, lambda: model(x, adapter_names=row_names),
                 what="peft mixed batch (base + delta)", params=params)  # fmt: skip
    model = None  # free it before the next case
    torch.cuda.empty_cache()


def _nf4(ctx: Context, d: int, tokens: int) -> None:
    import adapterhub_triton
    import bitsandbytes
    import torch
    from bitsandbytes.functional import quantize_4bit

    params = {"d": d, "tokens": tokens}
    W = torch.randn(d, d, device="cuda", dtype=torch.bfloat16) * 0.02
    packed, state = quantize_4bit(W, quant_type="nf4", compress_statistics=True)
    x = torch.randn(tokens, d, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        ctx.time("nf4 matmul", BASE, lambda: torch.nn.functional.linear(x, W), what="bf16 F.linear", params=params)
        ctx.time(
            "nf4 matmul",
            OURS,
            lambda: adapterhub_triton.nf4_linear(x, packed, state),
            what="Triton NF4 dequant-in-matmul",
            params=params,
        )
        ctx.time("nf4 matmul", BASELINE, lambda: bitsandbytes.matmul_4bit(x, packed.t(), quant_state=state),
                 what="bitsandbytes matmul_4bit", params=params)  # fmt: skip
