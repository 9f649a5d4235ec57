"""Training step time and peak memory, LoRA and QLoRA (NF4 base): adapterhub's loop vs peft + bitsandbytes;
LoRA again with a bfloat16 base (autocast, float32 adapter) and with gradient checkpointing, both sides the
same way, and adapterhub's cost of writing a checkpoint every 2 steps (no peft counterpart).

adapterhub side: `load_base(model, quantize=None | "nf4")`, `adapters.attach(base, "lora", ...)` and the
real training loop `adapterhub.train.train`, timed per optimizer step through its `on_step` hook.
peft side: transformers `from_pretrained` (with `BitsAndBytesConfig` NF4 + double quant for QLoRA) from the
same weights (for a GGUF: adapterhub's dequantized copy), `prepare_model_for_kbit_training` for QLoRA,
`get_peft_model(LoraConfig(...))` and the textbook loop (AdamW, linear warm-up schedule, grad clipping).

Same LoRA settings, same seeded token blocks in the same order, same hyper-parameters. Each side runs in its
own fresh process, so peak memory (RSS, CUDA) is that side's alone; the first steps are warm-up.
"""

from __future__ import annotations

import multiprocessing
import queue
import resource
import time
import traceback
from dataclasses import dataclass

from benchmarks import models
from benchmarks.harness import BASELINE, MB, OURS, Context, PeakMemory, seed_everything

REQUIRES = {"bitsandbytes": "bitsandbytes"}
LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["all-linear"]}
LEARNING_RATE = 2e-4
# (name, quantize, what differs from the plain run)
VARIANTS = (
    ("lora", None, {}),
    ("qlora", "nf4", {}),
    # a bfloat16 step takes tens of seconds on a CPU without bfloat16 matmul instructions: 1 warm-up + 2 timed there
    ("lora bfloat16", None, {"dtype": "bfloat16", "slow_on_cpu": True}),
    ("lora gradient checkpointing", None, {"gradient_checkpointing": True}),
    ("lora checkpoint every 2", None, {"checkpoint_every": 2}),  # adapterhub only
)
SLOW_STEPS = 2
# Each side runs in a child forked from a clean server process that has imported the libraries once:
# memory is not shared with us or the other side, CUDA is never initialised before the fork, and no
# child pays the import time again.
_processes = multiprocessing.get_context("forkserver")
_processes.set_forkserver_preload(
    ["torch", "transformers", "peft", "bitsandbytes", "adapterhub.train", "benchmarks.suites.training"]
)


@dataclass
class Job:
    """What one side runs, sent to its child process."""

    impl: str
    quantize: str | None
    model: str  # what adapterhub loads (a directory or .gguf)
    hf_dir: str  # what plain transformers loads (the same weights)
    device: str
    batch_size: int
    block_size: int
    warmup: int
    steps: int
    seed: int
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    checkpoint_every: int | None = None
    checkpoint_dir: str = ""


def _rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _adapterhub_model(job: Job):
    from adapterhub import adapters
    from adapterhub.base import DTYPES, load_base

    # a quantized base is placed by its loader
    base = load_base(job.model, model_task="causal-lm", quantize=job.quantize, dtype=DTYPES[job.dtype],
                     device=None if job.quantize else job.device)  # fmt: skip
    if job.gradient_checkpointing:
        base.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return adapters.attach(base, "lora", adapters.make_options("lora", LORA)), base.tokenizer.pad_token_id


def _peft_model(job: Job):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"dtype": getattr(torch, job.dtype)}
    if job.quantize == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
        kwargs["device_map"] = job.device
    model = AutoModelForCausalLM.from_pretrained(job.hf_dir, **kwargs)
    if job.quantize:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model.to(job.device)
    if job.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules="all-linear",
    )
    return get_peft_model(model, config), model.config.pad_token_id


def _train_adapterhub(model, blocks, job: Job, on_step) -> None:
    import torch

    from adapterhub.batches import block_batches
    from adapterhub.checkpoints import CheckpointStore
    from adapterhub.train import TrainSettings, train

    rows = blocks.tolist()
    settings = TrainSettings(
        epochs=1, batch_size=job.batch_size, learning_rate=LEARNING_RATE, seed=job.seed, block_size=job.block_size
    )
    store = (
        CheckpointStore(job.checkpoint_dir, {"suite": "training"}, job.checkpoint_every)
        if job.checkpoint_every
        else None
    )
    train(model, lambda order: block_batches(rows, 0, job.batch_size, order), len(rows), None, "causal-lm", settings,
          on_step=lambda *_: on_step(), progress=False, dtype=getattr(torch, job.dtype), checkpoints=store)  # fmt: skip


def _train_peft(model, blocks, job: Job, on_step) -> None:
    import torch
    from transformers import get_linear_schedule_with_warmup

    dtype = getattr(torch, job.dtype)
    parameters = [p for p in model.parameters() if p.requires_grad]
    n_steps = -(-len(blocks) // job.batch_size)
    optimizer = torch.optim.AdamW(parameters, lr=LEARNING_RATE)
    scheduler = get_linear_schedule_with_warmup(optimizer, max(1, int(0.06 * n_steps)), n_steps)
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(job.seed))  # the order adapterhub uses
    model.train()
    for start in range(0, len(blocks), job.batch_size):
        input_ids = blocks[order[start : start + job.batch_size]].to(job.device)  # (batch, block)
        with torch.autocast(torch.device(job.device).type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=input_ids).loss
        loss.item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        on_step()


def _run_side(job: Job, messages) -> None:
    """Child process: load, train `warmup + steps` steps, report per-step times, memory and a few facts."""
    try:
        import torch

        seed_everything(job.seed)
        started = time.perf_counter()
        model, _ = (_adapterhub_model if job.impl == OURS else _peft_model)(job)
        load_s = time.perf_counter() - started
        vocab = model.get_input_embeddings().num_embeddings
        blocks = models.token_blocks(vocab, (job.warmup + job.steps) * job.batch_size, job.block_size, job.seed)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        stamps = [time.perf_counter()]

        def on_step() -> None:
            if job.device.startswith("cuda"):
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
            messages.put(("step", len(stamps) - 1))

        with PeakMemory(job.device.startswith("cuda")) as memory:
            (_train_adapterhub if job.impl == OURS else _train_peft)(model, blocks, job, on_step)
        step_ms = [(b - a) * 1000.0 for a, b in zip(stamps, stamps[1:])]
        messages.put(("done", {
            "step_ms": step_ms[job.warmup :], "warmup_ms": step_ms[: job.warmup], "load_s": load_s,
            "trainable_parameters": trainable, "peak_rss_mb": _rss_peak_bytes() / MB, "memory": memory.summary(),
        }))  # fmt: skip
    except BaseException:
        messages.put(("error", traceback.format_exc()))


def _in_child(ctx: Context, job: Job, label: str) -> dict:
    from tqdm.auto import tqdm

    messages = _processes.Queue()
    process = _processes.Process(target=_run_side, args=(job, messages), daemon=True)
    process.start()
    total = job.warmup + job.steps
    with tqdm(
        total=total, desc=f"training: {label} (loading)", unit="step", leave=False, disable=not ctx.progress
    ) as bar:
        while True:
            try:
                kind, value = messages.get(timeout=5)
            except queue.Empty:
                if not process.is_alive():
                    raise RuntimeError(f"the {label} benchmark process died (exit code {process.exitcode})") from None
                continue
            if kind == "step":
                bar.set_description(f"training: {label}")
                bar.update(value - bar.n)
            elif kind == "error":
                process.join()
                raise RuntimeError(f"the {label} benchmark failed in its child process:\n{value}")
            else:
                process.join()
                return value


def run(ctx: Context) -> None:
    path, label = models.model_for(ctx)
    hf_dir = models.transformers_dir(path)
    batch_size, block_size, steps, warmup = (4, 32, 6, 2) if ctx.quick else (2, 64, 8, 2)
    ctx.settings.update(model=label, lora=LORA, learning_rate=LEARNING_RATE, batch_size=batch_size, block_size=block_size,
                        timed_steps=steps, warmup_steps=warmup)  # fmt: skip
    for variant, quantize, differences in VARIANTS:
        params = {"method": variant}
        for impl in (OURS,) if "checkpoint_every" in differences else (OURS, BASELINE):
            slow = differences.get("slow_on_cpu") and ctx.device == "cpu" and not ctx.quick
            fields = {k: v for k, v in differences.items() if k != "slow_on_cpu"}
            job = Job(impl, quantize, path, str(hf_dir), ctx.device, batch_size, block_size, 1 if slow else warmup,
                      SLOW_STEPS if slow else steps, ctx.seed, checkpoint_dir=str(ctx.workdir / "checkpoints"), **fields)  # fmt: skip
            result = _in_child(ctx, job, f"{variant} [{impl}]")
            memory = {**result["memory"], "peak_rss_mb": result["peak_rss_mb"]}
            what = ("load_base + adapters.attach + adapterhub.train.train" if impl == OURS
                    else "from_pretrained + get_peft_model + AdamW loop") + (" (NF4 base)" if quantize else "")  # fmt: skip
            extra = {k: result[k] for k in ("warmup_ms", "load_s", "trainable_parameters")}
            ctx.record("train step", impl, result["step_ms"], what=what, params=params, memory=memory, extra=extra)
    ctx.note(f"{batch_size} sequences x {block_size} tokens per step (seeded random token ids); first {warmup} steps are warm-up, "
             f"the next {steps} are timed. Each side runs in a fresh process.")  # fmt: skip
    ctx.note("Peak RSS is the process maximum, loading included: compare it between the two sides. RSS increase is "
             "the training loop's peak over the RSS after loading; it depends on what the load left in the allocator "
             "(adapterhub reads the GGUF, peft the dequantized safetensors), so it does not compare across sides.")  # fmt: skip
    ctx.note("On CPU, bitsandbytes dequantizes the NF4 weights in every matmul, so QLoRA steps are slower than LoRA; "
             "its peak RSS is not lower here because loading reads the fp32 weights before packing them to NF4.")  # fmt: skip
    if ctx.device == "cpu" and not ctx.quick:
        ctx.note(f"bfloat16 on CPU: 1 warm-up and {SLOW_STEPS} timed steps per side (a step takes tens of seconds where the CPU "
                 "has no bfloat16 matmul instructions; aten::mm is most of it under the profiler).")  # fmt: skip
    ctx.note("bfloat16: the base loaded in bfloat16, the forward under torch.autocast, LoRA weights float32 (both sides). "
             "Gradient checkpointing: transformers' non-reentrant recomputation (both sides). Checkpoint every 2: "
             "adapterhub writing adapter, optimizer, scheduler, RNG and monitor state atomically (fsync) every 2 steps, "
             "the keep-2 pruning included; peft has no such loop to compare with.")  # fmt: skip
