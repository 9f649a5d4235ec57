"""One decode step of 16 rows against this machine's floor: the continuous engine (packed and unpacked weights) vs transformers + peft.

Issue 28's item 2 measured where it is named: one `ContinuousEngine.step()` with 16 running rows (64-token prompts,
prefilled first; nothing to admit or prefill), on the serving suite's base (SmolLM2-135M in float32) and the runtime
suite's rank-16 all-linear LoRAs, with no adapter, one adapter for every row, and 8 adapters (2 rows each).
adapterhub runs on two copies of the base, one pool packing its weights for the CPU (`pack_weights`, the default
`auto`) and one not (`pack_weights=False`: `nn.Linear`'s own products), the two alternated step by step. The
baseline is what a user writes with transformers + peft: the same 16 rows as one batch over a `DynamicCache`, the
bare model, and a `PeftModel` holding the 8 adapters with `adapter_names=` per row (one adapter: all rows the
same). The roofline (benchmarks/roofline.py) is measured first; each step is recorded as a multiple of the floor of a
16-row step. Targets: the 16-row step with 8 adapters within 2x its floor; 8 adapters >= 0.95x the tokens/s of one
(the 1-adapter step's time / the 8-adapter step's).
"""

from __future__ import annotations

from benchmarks import models, roofline
from benchmarks.harness import BASELINE, OURS, Context, Side
from benchmarks.suites.runtime import LORA, _make_adapters

ROWS, PROMPT = 16, 64
UNPACKED = "adapterhub, unpacked weights"
MIXES = {"no adapter": 0, "one adapter": 1, "8 adapters": 8}  # distinct adapters over the 16 rows


def _engine(pool, keys: list[str | None], prompts: list[list[int]], steps: int):
    """An engine with ``ROWS`` running rows (row i on ``keys[i % len(keys)]``), prefilled, with room for ``steps``."""
    from adapterhub.runtime import SamplingParams
    from adapterhub.runtime.continuous import ContinuousEngine, EngineRequest

    engine = ContinuousEngine(pool, max_running=ROWS, prefill_chunk=ROWS * PROMPT, prefix_cache_mb=0)
    params = SamplingParams(max_tokens=steps + 4, temperature=0, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.submit(EngineRequest(prompt, keys[i % len(keys)], params))
    while len(engine.running) < ROWS:
        engine.step()
    return engine


class _PeftSteps:
    """transformers' own decode loop, one step per call: the 16 rows as one batch over a ``DynamicCache``."""

    def __init__(self, model, prompts, **kwargs) -> None:
        import torch
        from transformers import DynamicCache

        self.model, self.kwargs, self.cache = model, kwargs, DynamicCache()
        with torch.inference_mode():
            out = model(input_ids=torch.tensor(prompts), past_key_values=self.cache, use_cache=True, **kwargs)
        self.tokens = out.logits[:, -1:].argmax(-1)

    def step(self) -> None:
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=self.tokens, past_key_values=self.cache, use_cache=True, **self.kwargs)
        self.tokens = out.logits[:, -1:].argmax(-1)


def run(ctx: Context) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adapterhub.base import load_base
    from adapterhub.runtime import AdapterPool
    from adapterhub_registry import Registry

    path, label = models.model_for(ctx)
    measured = roofline.measure(repeats=3 if ctx.quick else 5)  # before any model is loaded: the machine as found
    repeats, warmup = ctx.repeats, ctx.warmup
    steps = 2 * (repeats + warmup) + 4
    packed_base, plain_base = load_base(path, model_task="causal-lm"), load_base(path, model_task="causal-lm")
    prompts = models.token_blocks(packed_base.model.config.vocab_size, ROWS, PROMPT, ctx.seed).tolist()
    ctx.settings.update(model=label, lora=LORA, rows=ROWS, prompt_tokens=PROMPT, threads=measured.threads)
    step_ms: dict[str, dict[str, float]] = {}
    with ctx.scratch("decode_step") as root:
        registry = Registry(root / "registry")
        directories = _make_adapters(packed_base, root, registry)[:8]
        pools = [AdapterPool(packed_base, slots=8, max_rank=16, registry=registry),
                 AdapterPool(plain_base, slots=8, max_rank=16, registry=registry, pack_weights=False)]  # fmt: skip
        packs = (
            "packed"
            if pools[0].packed_head is not None or any(s.packed for s in pools[0].layers.values())
            else "not packed (auto)"
        )
        ctx.settings["packed"] = packs
        keys = [[pool.load(f"a{i}") for i in range(8)] for pool in pools]
        for mix, distinct in MIXES.items():
            engines = [_engine(pool, ks[:distinct] or [None], prompts, steps) for pool, ks in zip(pools, keys)]
            ours, unpacked = ctx.compare(
                f"decode step, {mix}",
                Side(OURS, f"ContinuousEngine.step(), {ROWS} rows, pool pack_weights auto ({packs})", engines[0].step),
                Side(UNPACKED, f"ContinuousEngine.step(), {ROWS} rows, pool pack_weights=False", engines[1].step),
                params={"rows": ROWS}, repeats=repeats, warmup=warmup,
            )  # fmt: skip
            step_ms.setdefault(OURS, {})[mix] = ours.stats.median
            step_ms.setdefault(UNPACKED, {})[mix] = unpacked.stats.median
            del engines
        for pool in pools:
            pool.close()
        del packed_base, plain_base
        registry.close()

        model = AutoModelForCausalLM.from_pretrained(models.transformers_dir(path), dtype="float32").eval()
        bare = _PeftSteps(model, prompts)
        step_ms[BASELINE] = {"no adapter": ctx.time("decode step, no adapter", Side(BASELINE, "transformers forward, "
                             "16 rows over a DynamicCache", bare.step), params={"rows": ROWS}).stats.median}  # fmt: skip
        del bare
        peft_model = PeftModel.from_pretrained(model, directories[0], adapter_name="a0").eval()
        for i, directory in enumerate(directories[1:], start=1):
            peft_model.load_adapter(directory, adapter_name=f"a{i}")
        for mix, names in (("one adapter", ["a0"] * ROWS), ("8 adapters", [f"a{i % 8}" for i in range(ROWS)])):
            stepper = _PeftSteps(peft_model, prompts, adapter_names=names)
            what = f"PeftModel forward with adapter_names= ({len(set(names))} distinct), 16 rows over a DynamicCache"
            step_ms[BASELINE][mix] = ctx.time(f"decode step, {mix}", Side(BASELINE, what, stepper.step),
                                              params={"rows": ROWS}).stats.median  # fmt: skip
            del stepper

    params, weight_bytes = roofline.model_size(models.transformers_dir(path))
    floor = measured.step_floor_ms(weight_bytes, params, ROWS)
    roofline.record(ctx, measured, params, weight_bytes, {})
    ctx.record("roofline: decode step floor", roofline.MACHINE, [floor], params={"rows": ROWS},
               what="max(weight bytes / read bandwidth, 2 x params x rows / matmul rate)")  # fmt: skip
    for impl, by_mix in step_ms.items():
        for mix, ms in by_mix.items():
            ctx.record(f"decode step / floor, {mix}", impl, [ms / floor], params={"rows": ROWS}, unit="x",
                       what=f"median step / the {ROWS}-row floor ({floor:.1f} ms)")  # fmt: skip
    ours = step_ms[OURS]
    ctx.check(f"{ROWS}-row decode step with 8 adapters / its floor", ours["8 adapters"] / floor, 2.0, unit="x")
    ctx.check(f"{ROWS}-row decode step with no adapter / its floor", ours["no adapter"] / floor, 2.0, unit="x")
    ctx.check("8-adapter step time / one-adapter step time (≤ 1.053 is tokens/s ≥ 0.95x)",
              ours["8 adapters"] / ours["one adapter"], 1 / 0.95, unit="x")  # fmt: skip
    ctx.note(f"Base: {label}, float32, {params / 1e6:.1f} M parameters in {weight_bytes / 1e6:.0f} MB; LoRA r=16 on "
             f"every linear layer; {ROWS} rows, {PROMPT}-token prompts, each step one token per row (greedy).")  # fmt: skip
    ctx.note(
        f"Roofline, measured first with {measured.threads} torch threads: read {measured.read_gb_s:.1f} GB/s, matmul "
        f"{measured.matmul_gflop_s:.0f} GFLOP/s; the decode shape (16 x 576 by 1536 x 576): "
        + ", ".join(f"{k} {v:.0f}" for k, v in measured.decode_gflop_s.items())
        + " GFLOP/s. The floor of a 16-row step is max(bytes / bandwidth, FLOPs / matmul rate)."
    )
    ctx.note("adapterhub's packed and unpacked pools run on two copies of the base, alternated step by step; each "
             "step advances its engine's rows by one token, so the context grows by one column per step of a side. "
             "The baseline's steps run after ours, on a third copy of the weights.")  # fmt: skip
