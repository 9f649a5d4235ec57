"""How one row picks its next token, with its own settings and its own random generator.

``SamplingParams`` is the one type for a request's decoding settings, from the HTTP edge down to every path that
generates (the continuous engine, its lane for adapters the slots cannot hold, the static batch runs): frozen and
hashable, so the static batcher keys its batches by it.

Rows of a continuous batch come from different requests (greedy next to sampled, different temperatures,
penalties and seeds), so the batch's logits are split by row and each row runs its own processors: transformers'
``RepetitionPenaltyLogitsProcessor`` and logits warpers (``TemperatureLogitsWarper``, ``TopKLogitsWarper``,
``TopPLogitsWarper``), and by hand what transformers has no processor for (OpenAI's presence and frequency
penalties, a plain per-token ``logit_bias``). A seeded request draws from a ``torch.Generator`` of its own: the
same request gives the same text whatever runs beside it.

Log-probabilities (``TokenLogprob``) are the model's raw distribution, ``log_softmax`` of its float32 logits before
any penalty, bias or temperature: vLLM's default, and what lm-evaluation-harness compares with its own forward.
"""

from __future__ import annotations

import secrets
from collections import Counter
from dataclasses import dataclass, field, replace

import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


@dataclass(frozen=True)
class SamplingParams:
    """One request's decoding settings (OpenAI's, plus vLLM's ``ignore_eos``, ``min_tokens``, ``top_k`` and
    ``repetition_penalty``)."""

    max_tokens: int = 16  # 0: only the prompt's log-probabilities (``prompt_logprobs`` must be set)
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # go on after the end-of-sequence token (load generators want fixed lengths)
    min_tokens: int = 0  # the end-of-sequence token cannot be picked before this many tokens
    logprobs: int | None = None  # None: none; k >= 0: each chosen token's log-probability and the top k
    prompt_logprobs: int | None = None  # None: none; k >= 0: each prompt token's log-probability and the top k
    presence_penalty: float = 0.0  # OpenAI: subtracted once from every token already generated
    frequency_penalty: float = 0.0  # OpenAI: subtracted once per time a token was generated
    repetition_penalty: float = 1.0  # transformers / vLLM: divides (or multiplies) prompt and generated tokens' logits
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)

    def __post_init__(self) -> None:
        if self.max_tokens < 0 or (self.max_tokens == 0 and self.prompt_logprobs is None):
            raise ValueError(f"max_tokens must be >= 1 (0 only with prompt_logprobs), got {self.max_tokens}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        for name in ("logprobs", "prompt_logprobs"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be None or >= 0, got {getattr(self, name)}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def batch_key(self) -> SamplingParams:
        """What the rows of one static batch (one transformers ``generate`` call) must share: everything but their
        lengths and stop strings, which each row's finisher applies to its own output."""
        return replace(self, max_tokens=1, stop=())

    @property
    def plain(self) -> bool:
        """Greedy with nothing that changes the logits: the argmax of the batch's logits is this row's token."""
        return (self.greedy and not self.logit_bias and self.presence_penalty == 0 and self.frequency_penalty == 0
                and self.repetition_penalty == 1.0)  # fmt: skip


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-probability under the model's raw distribution, and the ``top`` alternatives (best first)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def token_logprobs(logits: torch.Tensor, tokens: list[int], top: int) -> list[TokenLogprob]:
    """``TokenLogprob`` of ``tokens[i]`` under ``logits[i]`` (positions, vocabulary), with the ``top`` best."""
    logprobs = logits.float().log_softmax(-1)  # (positions, vocabulary)
    chosen = logprobs.gather(-1, torch.tensor(tokens, device=logits.device)[:, None])[:, 0].tolist()
    if top:
        values, ids = logprobs.topk(top, -1)
        best = [tuple(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    else:
        best = [()] * len(tokens)
    return [TokenLogprob(t, c, b) for t, c, b in zip(tokens, chosen, best)]


@dataclass
class RowSampler:
    """The next-token choice of one request: processors built once, a generator seeded once."""

    params: SamplingParams
    eos: frozenset[int] = frozenset()
    prompt: list[int] = field(default_factory=list)  # what the repetition penalty reads besides the generated tokens
    seed_offset: int = 0  # row i of a seeded request with n > 1 draws from seed + i
    warpers: LogitsProcessorList = field(init=False)
    generator: torch.Generator | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        p = self.params
        self.warpers = LogitsProcessorList()
        if p.repetition_penalty != 1.0:
            self.warpers.append(RepetitionPenaltyLogitsProcessor(p.repetition_penalty))
        if not p.greedy:
            if p.temperature != 1.0:
                self.warpers.append(TemperatureLogitsWarper(p.temperature))
            if p.top_k:
                self.warpers.append(TopKLogitsWarper(p.top_k))
            if p.top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(p.top_p))
            self.generator = torch.Generator()
            seed = p.seed + self.seed_offset if p.seed is not None else secrets.randbits(63)
            self.generator.manual_seed(seed)

    def pick(self, logits: torch.Tensor, generated: list[int]) -> tuple[int, TokenLogprob | None]:
        """The next token from this row's last-position ``logits`` (vocabulary,), ``generated`` tokens so far, and
        its log-probability when the request asked for them."""
        raw = logits.float()
        scores = self._biased(raw, generated)
        if self.warpers:
            seen = torch.tensor([self.prompt + generated], dtype=torch.long)
            scores = self.warpers(seen, scores[None].cpu())[0]
        token = int(scores.argmax()) if self.params.greedy else self._draw(scores)
        if self.params.logprobs is None:
            return token, None
        return token, token_logprobs(raw[None], [token], self.params.logprobs)[0]

    def _draw(self, scores: torch.Tensor) -> int:
        return int(torch.multinomial(scores.cpu().softmax(-1), 1, generator=self.generator))

    def _biased(self, raw: torch.Tensor, generated: list[int]) -> torch.Tensor:
        """``raw`` with OpenAI's presence and frequency penalties, the logit bias and the ``min_tokens`` EOS ban;
        ``raw`` itself when none applies. Written here: transformers has no processor for the first two, and its
        ``SequenceBiasLogitsProcessor`` is built for multi-token sequences (a token id and a number are enough)."""
        p = self.params
        ban = len(generated) < p.min_tokens and self.eos
        penalised = (p.presence_penalty or p.frequency_penalty) and generated
        if not (ban or penalised or p.logit_bias):
            return raw
        scores = raw.clone()
        if penalised:
            counts = Counter(generated)
            ids = torch.tensor(list(counts), device=raw.device)
            times = torch.tensor(list(counts.values()), dtype=scores.dtype, device=raw.device)
            scores[ids] -= p.presence_penalty + p.frequency_penalty * times
        for token, bias in p.logit_bias:
            scores[token] += bias
        if ban:
            scores[list(self.eos)] = float("-inf")
        return scores
