"""Zero-shot and few-shot (in-context) classification with a causal LM: the baseline a trained adapter must beat.

Each held-out example is written into a template (``{text}``, and ``{labels}`` for the label words) and every
label is scored by the log-likelihood the model gives its verbalizer (the words standing for the label) as the
continuation; the label with the highest score is the prediction, and the scores, softmaxed, give ROC-AUC.
With ``shots=K``, K examples of the training split (balanced by class, fixed by the seed) come first, each with
its answer. The held-out split is ``adapterhub.prepare.classification_split`` of the same ``DataSpec``, so the
figures compare with ``adapterhub eval`` of a trained adapter. Called by ``adapterhub zero-shot`` and the
``shots`` benchmark.
"""

from __future__ import annotations

import contextlib
import copy
import random
import time
from collections.abc import Callable, Hashable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch

from adapterhub.base import Base, load_base
from adapterhub.data import ClassificationData
from adapterhub.errors import OptionError
from adapterhub.evaluation import classification_metrics
from adapterhub.prepare import classification_split
from adapterhub.settings import DataSpec


@dataclass(frozen=True)
class PromptSpec:
    """How an example becomes a prompt, and which words answer it."""

    template: str  # "{text}" is the example; "{labels}" the label words, comma-separated
    verbalizer: dict[str, str] = field(default_factory=dict)  # label -> its word(s); a label not named is its own word
    shots: int = 0  # training examples shown, with their answers, before each held-out one
    chat_template: bool = True  # wrap in the base's chat template when its tokenizer has one

    def __post_init__(self) -> None:
        if "{text}" not in self.template:
            raise OptionError(
                f"template {self.template!r} has no {{text}} placeholder; put {{text}} where the example goes"
            )
        if self.shots < 0:
            raise OptionError(f"shots must be 0 or more, not {self.shots}")


def parse_verbalizer(text: str | None) -> dict[str, str]:
    """``"negative=bad,positive=good"`` -> ``{"negative": "bad", "positive": "good"}``."""
    verbalizer = {}
    for pair in (text or "").split(","):
        label, sep, words = pair.partition("=")
        if not pair.strip():
            continue
        if not sep or not label.strip():
            raise OptionError(f"verbalizer entry {pair!r} is not of the form label=words (e.g. negative=bad)")
        verbalizer[label.strip()] = words.strip()
    return verbalizer


def balanced_shots(train: ClassificationData, k: int, seed: int) -> ClassificationData:
    """``k`` training examples, taken from each class in turn (a class that runs out is skipped), in a seeded order."""
    if k > len(train.texts):
        raise OptionError(f"--shots {k} is more than the {len(train.texts)} training examples; lower --shots")
    rng = random.Random(seed)
    by_class = [[i for i, label in enumerate(train.labels) if label == c] for c in range(len(train.label_names))]
    for rows in by_class:
        rng.shuffle(rows)
    chosen: list[int] = []
    while len(chosen) < k:
        for rows in by_class:
            if rows and len(chosen) < k:
                chosen.append(rows.pop())
    rng.shuffle(chosen)
    return train.subset(chosen)


def check_verbalizer(verbalizer: dict[str, str], label_names: list[str]) -> None:
    """Refuse a verbalizer naming a label the data does not have."""
    unknown = sorted(set(verbalizer) - set(label_names))
    if unknown:
        raise OptionError(
            f"verbalizer names label {unknown[0]!r}, which the data does not have; its labels: {', '.join(label_names)}"
        )


class PromptScorer:
    """Turns texts into prompts for one tokenizer and scores every label's continuation with a causal LM."""

    def __init__(self, tokenizer, prompt: PromptSpec, label_names: list[str], shots: ClassificationData | None = None):
        check_verbalizer(prompt.verbalizer, label_names)
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.words = [prompt.verbalizer.get(name, name) for name in label_names]
        self.use_chat = prompt.chat_template and bool(getattr(tokenizer, "chat_template", None))
        self.shots = shots
        # The answer follows the prompt after a space, unless the prompt ends in whitespace (a chat template's
        # "assistant\n"): the space belongs to the word's first token in BPE vocabularies.
        self.separator = "" if self.use_chat or prompt.template[-1:].isspace() else " "
        self.continuations = [
            tokenizer(self.separator + word, add_special_tokens=False).input_ids for word in self.words
        ]
        for name, word, ids in zip(label_names, self.words, self.continuations):
            if not ids and name not in prompt.verbalizer:
                raise OptionError(f"label {name!r} tokenizes to nothing; give it a word in the verbalizer")
            if not ids:
                raise OptionError(f"the verbalizer of label {name!r} ({word!r}) tokenizes to nothing; give it a word")
        seen: dict[tuple, str] = {}
        for name, ids in zip(label_names, self.continuations):
            if tuple(ids) in seen:
                raise OptionError(
                    f"labels {seen[tuple(ids)]!r} and {name!r} tokenize to the same answer; give them different words"
                )
            seen[tuple(ids)] = name

    def _filled(self, text: str) -> str:
        return self.prompt.template.replace("{labels}", ", ".join(self.words)).replace("{text}", text)

    def context_ids(self, text: str) -> list[int]:
        """The tokens before the answer: the shots with their answers, then ``text`` in the template."""
        shots = list(zip(self.shots.texts, self.shots.labels)) if self.shots is not None else []
        if self.use_chat:
            messages = []
            for shot_text, label in shots:
                messages += [
                    {"role": "user", "content": self._filled(shot_text)},
                    {"role": "assistant", "content": self.words[label]},
                ]
            messages.append({"role": "user", "content": self._filled(text)})
            rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return self.tokenizer(rendered, add_special_tokens=False).input_ids
        parts = [self._filled(shot_text) + self.separator + self.words[label] for shot_text, label in shots]
        return self.tokenizer("\n\n".join(parts + [self._filled(text)])).input_ids

    @torch.no_grad()
    def score(
        self,
        model: torch.nn.Module,
        texts: list[str],
        batch_size: int = 16,
        progress: bool = False,
        *,
        groups: Sequence[Hashable] | None = None,
        applying: RowsApplier | None = None,
    ) -> torch.Tensor:
        """``(len(texts), labels)`` log-likelihoods of each label's answer after each text's prompt.

        Answers of one token are all read from one row (the prompt); longer answers add a row each, holding the
        answer but its last token. Rows are sorted by length and left-padded, so each row's last positions
        predict its answer and only those positions' logits are computed. The tokens every prompt starts with
        (the shots) are run once and their key/value cache is shared by every batch.

        ``groups[i]`` (with ``applying``) lets one call score texts for several adapters, as a server gathers
        requests: ``applying(row_groups)`` is a context under which ``model`` runs row ``r`` with ``row_groups[r]``
        (the adapter pool's ``activate``). The shared prefix is then run once per distinct group, and each batch row
        takes its own group's key/value cache, since an adapter on the attention projections changes it.
        """
        from tqdm.auto import tqdm

        groups = list(groups) if groups is not None else [None] * len(texts)
        applying = applying or _as_is
        heads = sorted({tuple(ids[:-1]) for ids in self.continuations})  # the answers' tokens that become input
        contexts = [self.context_ids(text) for text in texts]
        rows = [(i, head) for i in range(len(texts)) for head in heads]
        order = sorted(range(len(rows)), key=lambda r: len(contexts[rows[r][0]]) + len(rows[r][1]))
        row_logprobs: dict[int, torch.Tensor] = {}  # row -> (positions kept, vocab) log-probabilities
        keep = max(len(ids) for ids in self.continuations)
        device = next(model.parameters()).device
        model.eval()
        shared = _shared_prefix(contexts) if _can_cache(model) else []
        distinct = list(dict.fromkeys(groups))  # the prefix's cache rows, one per group, in first-seen order
        prefix_cache = None
        if shared:
            with applying(distinct):
                prefix_cache = model(input_ids=torch.tensor([shared] * len(distinct), device=device)).cache
        for start in tqdm(range(0, len(order), batch_size), desc="scoring", unit="batch", disable=not progress):
            chunk = order[start : start + batch_size]
            chunk_groups = [groups[rows[r][0]] for r in chunk]
            sequences = [(contexts[rows[r][0]] + list(rows[r][1]))[len(shared) :] for r in chunk]
            width = max(len(s) for s in sequences)
            pad = self.tokenizer.pad_token_id
            input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in sequences], device=device)
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=device)
            # left padding: real tokens count on from the prefix
            positions = len(shared) + (mask.cumsum(-1) - 1).clamp(min=0)
            inputs = dict(input_ids=input_ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep)
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)
                cache.batch_select_indices(torch.tensor([distinct.index(g) for g in chunk_groups], device=device))
                inputs.update(cache=cache, attention_mask=torch.cat([mask.new_ones(len(chunk), len(shared)), mask], 1))
            with applying(chunk_groups):
                logits = model(**inputs).logits
            for r, row in zip(chunk, logits.float().log_softmax(-1).cpu()):  # (keep, vocab)
                row_logprobs[r] = row
        scores = torch.empty(len(texts), len(self.continuations))
        head_index = {head: h for h, head in enumerate(heads)}
        for i in range(len(texts)):
            for label, ids in enumerate(self.continuations):
                logprobs = row_logprobs[i * len(heads) + head_index[tuple(ids[:-1])]][-len(ids) :]  # (len(ids), vocab)
                scores[i, label] = logprobs[torch.arange(len(ids)), torch.tensor(ids)].sum()
        return scores


RowsApplier = Callable[[list[Any]], AbstractContextManager[Any]]
"""``applying(row_groups)``: a context under which the model runs batch row ``r`` with ``row_groups[r]``."""


def _as_is(row_groups: list[Any]) -> AbstractContextManager[Any]:
    return contextlib.nullcontext()


def _shared_prefix(contexts: list[list[int]]) -> list[int]:
    """The tokens every context starts with, leaving each at least one token of its own."""
    limit = min(len(c) for c in contexts) - 1
    n = 0
    while n < limit and all(c[n] == contexts[0][n] for c in contexts):
        n += 1
    return contexts[0][:n]


def _can_cache(model: torch.nn.Module) -> bool:
    """Soft prompts and prefixes (peft prompt learning) put their own tokens before the input: no shared cache."""
    config = getattr(model, "active_peft_config", None)
    return not (config is not None and config.is_prompt_learning)


def held_out(data: DataSpec) -> tuple[ClassificationData, ClassificationData]:
    """``(train, test)`` exactly as ``adapterhub train``/``eval`` split ``data`` (labels sorted by name)."""
    train, test = classification_split(data)
    if not test.texts:
        raise OptionError(f"the split of {data.path} left no held-out examples; raise --test-split")
    return train, test


def evaluate_prompting(
    base: str | Base,
    data: DataSpec,
    prompt: PromptSpec,
    *,
    adapter: str | None = None,
    registry_root: str | None = None,
    force: bool = False,
    quantize: str | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> dict:
    """Accuracy, macro-F1, ROC-AUC and the majority baseline of prompting ``base`` (a path or a loaded causal-LM
    ``Base``; with registry ``adapter`` on it, which stays attached to a ``Base`` passed in) on the held-out split
    of ``data``."""
    train, test = held_out(data)
    check_verbalizer(prompt.verbalizer, test.label_names)  # before the slow base load
    shots = balanced_shots(train, prompt.shots, data.seed) if prompt.shots else None
    if isinstance(base, str):
        base = load_base(base, model_task="causal-lm", quantize=quantize)
    if base.model_task != "causal-lm":
        raise OptionError(f"prompting scores answers with a causal LM; this base was loaded as {base.model_task}")
    scorer = PromptScorer(
        base.tokenizer, prompt, test.label_names, shots
    )  # a bad verbalizer fails before the adapter loads
    model = base.model if adapter is None else _with_adapter(base, adapter, registry_root, force)
    started = time.perf_counter()
    scores = scorer.score(model, test.texts, batch_size, progress)
    seconds = time.perf_counter() - started
    return {
        **classification_metrics(scores, test.labels),
        "majority_baseline": test.majority_fraction(),
        "test_examples": len(test.texts),
        "train_examples": len(train.texts),
        "shots": prompt.shots,
        "chat_template": scorer.use_chat,
        "label_words": dict(zip(test.label_names, scorer.words)),
        "score_seconds": round(seconds, 2),
    }


def _with_adapter(base: Base, ref: str, registry_root: str | None, force: bool):
    """Registry adapter ``ref`` on ``base``, with the checks of ``adapterhub eval`` (same base, complete weights)."""
    from adapterhub import adapters
    from adapterhub.manifest import Manifest
    from adapterhub_registry import Registry

    record, tensors = Registry(registry_root).load(ref)
    task = Manifest.from_dict(record.manifest).model_task
    if task and task != "causal-lm":
        raise OptionError(
            f"adapter {record.ref} is a {task} adapter; prompting needs a causal-lm one (or no --adapter)"
        )
    return adapters.load_registry_adapter(base, record, tensors, force=force)
