"""How one row picks its next token, with its own settings and its own random generator.

Rows of a continuous batch come from different requests (greedy next to sampled, different temperatures and
seeds), so the batch's logits are split by row and each row runs transformers' own logits warpers
(``TemperatureLogitsWarper``, ``TopKLogitsWarper``, ``TopPLogitsWarper``) with its settings. A seeded request
draws from a ``torch.Generator`` of its own: the same request gives the same text whatever runs beside it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper


@dataclass(frozen=True)
class SamplingParams:
    """One request's decoding settings (OpenAI's, plus vLLM's ``ignore_eos`` and ``min_tokens``)."""

    max_tokens: int = 16
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # go on after the end-of-sequence token (load generators want fixed lengths)
    min_tokens: int = 0  # the end-of-sequence token cannot be picked before this many tokens

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class RowSampler:
    """The next-token choice of one request: warpers built once, a generator seeded once."""

    params: SamplingParams
    eos: set[int] = field(default_factory=set)
    warpers: LogitsProcessorList = field(init=False)
    generator: torch.Generator | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        p = self.params
        self.warpers = LogitsProcessorList()
        if not p.greedy:
            if p.temperature != 1.0:
                self.warpers.append(TemperatureLogitsWarper(p.temperature))
            if p.top_k:
                self.warpers.append(TopKLogitsWarper(p.top_k))
            if p.top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(p.top_p))
            self.generator = torch.Generator()
            self.generator.manual_seed(p.seed if p.seed is not None else secrets.randbits(63))

    def pick(self, logits: torch.Tensor, generated: list[int]) -> int:
        """The next token from this row's last-position ``logits`` (vocabulary,), ``generated`` tokens so far."""
        logits = logits.float()
        if len(generated) < self.params.min_tokens and self.eos:
            logits = logits.clone()
            logits[list(self.eos)] = float("-inf")
        if self.params.greedy:
            return int(logits.argmax())
        scores = self.warpers(torch.tensor([generated], dtype=torch.long), logits[None].cpu())[0]
        return int(torch.multinomial(scores.softmax(-1), 1, generator=self.generator))
