"""Per-request adapters for whole batches: text generation (causal LMs) and classification (sequence classifiers).

Called by the HTTP server's batcher and usable directly. Rows whose adapters are slottable run together in
one forward (one gathered low-rank computation per layer, at most ``pool.slots`` distinct adapters per forward);
rows of a non-slottable adapter run as their own group through peft. Results come back in row order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch

from adapterhub.errors import AdapterHubError
from adapterhub.runtime.finisher import Finisher, FinishReason, eos_ids
from adapterhub.runtime.lane import learns_prompt
from adapterhub.runtime.pool import AdapterPool
from adapterhub.runtime.sampling import SamplingParams

DEFAULT = SamplingParams(max_tokens=32, temperature=0)  # greedy, 32 tokens


class StaticPathUnsupported(AdapterHubError, ValueError):
    """A setting ``generate`` (one transformers ``generate`` call per batch) cannot honour: log-probabilities,
    OpenAI's presence and frequency penalties, ``max_tokens`` 0. The continuous engine serves them."""


STATIC_UNSUPPORTED = ("logprobs", "prompt_logprobs", "presence_penalty", "frequency_penalty")


def refuse_unsupported(params: SamplingParams) -> None:
    """Raise ``StaticPathUnsupported`` naming the first setting of ``params`` that ``generate`` cannot honour."""
    neutral = SamplingParams()
    for name in STATIC_UNSUPPORTED:
        if getattr(params, name) != getattr(neutral, name):
            raise StaticPathUnsupported(f"{name} is not available with --batching static (one generate call per "
                                        "batch); serve with --batching continuous or leave it out")  # fmt: skip


def generate_kwargs(params: SamplingParams, eos: frozenset[int]) -> dict:
    """transformers ``generate`` arguments for ``params`` (after ``refuse_unsupported``). ``generate`` cannot go on
    past an end-of-sequence token, so ``ignore_eos`` keeps it from being picked; ``logit_bias`` is transformers'
    ``sequence_bias`` of one-token sequences."""
    kwargs: dict = {"max_new_tokens": params.max_tokens, "eos_token_id": sorted(eos), "do_sample": not params.greedy,
                    "min_new_tokens": params.max_tokens if params.ignore_eos else params.min_tokens}  # fmt: skip
    if not params.greedy:
        kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
    if params.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = params.repetition_penalty
    if params.logit_bias:
        kwargs["sequence_bias"] = {(token,): bias for token, bias in params.logit_bias}
    return kwargs


def legacy_settings(max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                    top_k: int = 0, seed: int | None = None, min_new_tokens: int = 0) -> SamplingParams:  # fmt: skip
    """What ``GenerationSettings(...)`` (deprecated) builds now: the ``SamplingParams`` of those settings."""
    return SamplingParams(max_tokens=max_new_tokens, temperature=temperature if do_sample else 0, top_p=top_p,
                          top_k=top_k, seed=seed, min_tokens=min_new_tokens)  # fmt: skip


@dataclass
class Generated:
    text: str
    tokens: int  # new tokens, up to and including an end-of-sequence token
    adapter: str | None
    token_ids: list[int] = field(default_factory=list)  # the new tokens themselves
    finish: FinishReason = "length"  # "stop": an end-of-sequence token or a stop string


@dataclass
class Classified:
    label: str
    scores: dict[str, float]
    adapter: str | None


def groups(pool: AdapterPool, keys: Sequence[str | None]) -> list[tuple[list[int], str | None]]:
    """Row indices that can run in one forward: ``(rows, None)`` for slotted/base rows (at most ``pool.slots``
    distinct adapters each), ``(rows, key)`` for each non-slottable adapter."""
    slotted: list[int] = []
    by_peft: dict[str, list[int]] = {}
    for row, key in enumerate(keys):
        if key is not None and pool.fetch(key).kind == "peft":
            by_peft.setdefault(key, []).append(row)
        else:
            slotted.append(row)
    chunks: list[tuple[list[int], str | None]] = []
    current: list[int] = []
    seen: set[str] = set()
    for row in slotted:
        key = keys[row]
        if key is not None and key not in seen and len(seen) == pool.slots:
            chunks.append((current, None))
            current, seen = [], set()
        current.append(row)
        if key is not None:
            seen.add(key)
    if current:
        chunks.append((current, None))
    return chunks + [(rows, key) for key, rows in by_peft.items()]


def keys_of(pool: AdapterPool, adapters: Sequence[str | None]) -> list[str | None]:
    """Each row's adapter key, every distinct ref resolved once (``generate`` and ``classify`` called directly take
    refs; a key already in memory costs no registry look-up)."""
    keys = {a: pool.key_of(a) for a in set(adapters) if a is not None}
    return [None if a is None else keys[a] for a in adapters]


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
             params: SamplingParams | Sequence[SamplingParams] = DEFAULT) -> list[Generated]:  # fmt: skip
    """Continue each prompt (text, or token ids already encoded) with its own adapter (a ref or key; None: the
    base), with ``params`` (one for every row, or one per row sharing their ``batch_key``: rows may differ in
    length and stop strings only). The batch runs as long as its longest row; each row ends where its
    ``Finisher`` says (EOS, stop string, its ``max_tokens``)."""
    if len(prompts) != len(adapters):
        raise ValueError(f"{len(prompts)} prompts but {len(adapters)} adapters")
    each = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
    if len(each) != len(prompts) or len({p.batch_key for p in each}) > 1:
        raise ValueError("generate takes one SamplingParams, or one per prompt differing only in max_tokens and stop")
    for p in each:
        refuse_unsupported(p)
    batch_params = replace(each[0], max_tokens=max(p.max_tokens for p in each))
    tokenizer = pool.base.tokenizer
    eos = eos_ids(pool.base.model, tokenizer)
    keys = keys_of(pool, adapters)
    results: list[Generated | None] = [None] * len(prompts)
    for rows, peft_key in groups(pool, keys):
        batch = _left_padded(tokenizer, [prompts[i] for i in rows]).to(pool.device)
        # peft 0.21 hands a prompt-learning model's KV cache to transformers 5.2x under a name it no longer reads
        # and injects the virtual tokens again at every step; without a cache each step sees them once (lane.py)
        uncached = {"use_cache": False} if peft_key is not None and learns_prompt(pool.fetch(peft_key)) else {}
        with _running(pool, rows, peft_key, keys) as model, _seeded(batch_params.seed):
            output = model.generate(**batch, pad_token_id=tokenizer.pad_token_id, **generate_kwargs(batch_params, eos),
                                    **uncached)  # fmt: skip
        new = output[:, batch["input_ids"].shape[1] :]  # (rows, new tokens)
        for row, tokens in zip(rows, new.tolist()):
            finisher = Finisher(tokenizer, each[row], eos)
            for token in tokens:
                finisher.add(token)
                if finisher.reason is not None:
                    break
            results[row] = Generated(finisher.text, len(finisher.tokens), adapters[row], finisher.tokens,
                                     finisher.reason or "length")  # fmt: skip
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
    keys = keys_of(pool, adapters)
    own_labels = {key: pool.fetch(key).labels for key in set(keys) if key is not None}  # once per adapter, not per row
    results: list[Classified | None] = [None] * len(texts)
    for rows, peft_key in groups(pool, keys):
        batch = tokenizer([texts[i] for i in rows], return_tensors="pt", padding=True, truncation=True,
                          max_length=max_length).to(pool.device)  # fmt: skip
        with _running(pool, rows, peft_key, keys) as model:
            probabilities = model(**batch).logits.float().softmax(-1)  # (rows, labels)
        for row, scores in zip(rows, probabilities.tolist()):
            own = own_labels.get(keys[row])
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


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
