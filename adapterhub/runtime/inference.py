"""Per-request adapters for whole batches: text generation (causal LMs) and classification (sequence classifiers).

Called by the HTTP server's batcher and usable directly. Rows whose adapters are slottable run together in
one forward (one gathered low-rank computation per layer, at most ``pool.slots`` distinct adapters per forward);
rows of a non-slottable adapter run as their own group through peft. Results come back in row order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from adapterhub.runtime.pool import AdapterPool
from adapterhub.runtime.text_stream import complete_text


@dataclass(frozen=True)
class GenerationSettings:
    """How to continue a prompt; requests are batched together only when their settings are equal."""

    max_new_tokens: int = 32
    do_sample: bool = False  # False: greedy
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    seed: int | None = None  # sampling seed for the batch
    min_new_tokens: int = 0  # the end-of-sequence token cannot be picked before this many new tokens

    def generate_kwargs(self) -> dict:
        extra = {"min_new_tokens": self.min_new_tokens} if self.min_new_tokens else {}
        if not self.do_sample:
            return {"do_sample": False, **extra}
        return {
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k or None,
            **extra,
        }


@dataclass
class Generated:
    text: str
    tokens: int  # new tokens, up to and including an end-of-sequence token
    adapter: str | None
    token_ids: list[int] = field(default_factory=list)  # the new tokens themselves


@dataclass
class Classified:
    label: str
    scores: dict[str, float]
    adapter: str | None


def groups(pool: AdapterPool, adapters: Sequence[str | None]) -> list[tuple[list[int], str | None]]:
    """Row indices that can run in one forward: ``(rows, None)`` for slotted/base rows (at most ``pool.slots``
    distinct adapters each), ``(rows, ref)`` for each non-slottable adapter."""
    slotted: list[int] = []
    by_peft: dict[str, list[int]] = {}
    for row, adapter in enumerate(adapters):
        if adapter is not None and pool.fetch(adapter).kind == "peft":
            by_peft.setdefault(pool.key_of(adapter), []).append(row)
        else:
            slotted.append(row)
    chunks: list[tuple[list[int], str | None]] = []
    current: list[int] = []
    seen: set[str] = set()
    for row in slotted:
        adapter = adapters[row]
        if adapter is not None and adapter not in seen and len(seen) == pool.slots:
            chunks.append((current, None))
            current, seen = [], set()
        current.append(row)
        if adapter is not None:
            seen.add(adapter)
    if current:
        chunks.append((current, None))
    return chunks + [(rows, key) for key, rows in by_peft.items()]


@contextlib.contextmanager
def _running(pool: AdapterPool, rows: list[int], peft_key: str | None, adapters: Sequence[str | None]) -> Iterator:
    if peft_key is None:
        with pool.activate([adapters[i] for i in rows]):
            yield pool.base.model
    else:
        with pool.peft_adapter(peft_key) as model:
            yield model


@torch.inference_mode()
def generate(pool: AdapterPool, prompts: Sequence[str | list[int]], adapters: Sequence[str | None],
             settings: GenerationSettings = GenerationSettings()) -> list[Generated]:  # fmt: skip
    """Continue each prompt (text, or token ids already encoded) with its own adapter (None: the base); greedy
    or sampled per ``settings``."""
    if len(prompts) != len(adapters):
        raise ValueError(f"{len(prompts)} prompts but {len(adapters)} adapters")
    tokenizer = pool.base.tokenizer
    results: list[Generated | None] = [None] * len(prompts)
    for rows, peft_key in groups(pool, adapters):
        batch = _left_padded(tokenizer, [prompts[i] for i in rows]).to(pool.device)
        with _running(pool, rows, peft_key, adapters) as model, _seeded(settings.seed):
            output = model.generate(
                **batch, max_new_tokens=settings.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                **settings.generate_kwargs(),
            )  # fmt: skip
        new = output[:, batch["input_ids"].shape[1] :]  # (rows, new tokens)
        for row, tokens in zip(rows, new.tolist()):
            tokens = _until_eos(tokens, tokenizer.eos_token_id)
            text = complete_text(tokenizer.decode(tokens, skip_special_tokens=True))  # cut inside a character
            results[row] = Generated(text, len(tokens), adapters[row], tokens)
    return results


@torch.inference_mode()
def classify(pool: AdapterPool, texts: Sequence[str], adapters: Sequence[str | None], *,
             max_length: int = 512) -> list[Classified]:  # fmt: skip
    """Class scores for each text with its own adapter (None: the base head), named by that adapter's labels
    (adapters of different tasks share the head's shape, not the meaning of its outputs)."""
    tokenizer = pool.base.tokenizer
    base_labels = pool.base.labels or [
        pool.base.model.config.id2label[i] for i in range(pool.base.model.config.num_labels)
    ]
    own_labels = {
        ref: pool.fetch(ref).labels for ref in set(adapters) if ref is not None
    }  # once per adapter, not per row
    results: list[Classified | None] = [None] * len(texts)
    for rows, peft_key in groups(pool, adapters):
        batch = tokenizer([texts[i] for i in rows], return_tensors="pt", padding=True, truncation=True,
                          max_length=max_length).to(pool.device)  # fmt: skip
        with _running(pool, rows, peft_key, adapters) as model:
            probabilities = model(**batch).logits.float().softmax(-1)  # (rows, labels)
        for row, scores in zip(rows, probabilities.tolist()):
            own = own_labels.get(adapters[row])
            labels = own if own and len(own) == len(scores) else base_labels
            best = max(range(len(scores)), key=scores.__getitem__)
            results[row] = Classified(labels[best], dict(zip(labels, scores)), adapters[row])
    return results


def _left_padded(tokenizer, prompts: list[str | list[int]]):
    """The prompts as one batch padded on the left: new tokens must follow every prompt."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        if all(isinstance(p, str) for p in prompts):
            return tokenizer(prompts, return_tensors="pt", padding=True)
        return tokenizer.pad({"input_ids": [tokenizer(p)["input_ids"] if isinstance(p, str) else list(p) for p in prompts]},
                             return_tensors="pt")  # fmt: skip
    finally:
        tokenizer.padding_side = side


def _until_eos(tokens: list[int], eos: int | None) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos is not None and eos in tokens else tokens


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
