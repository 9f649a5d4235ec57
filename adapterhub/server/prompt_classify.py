"""``POST /classify`` on a causal-LM base: classification by prompting (``adapterhub.prompting``), as
``adapterhub zero-shot`` does it.

A request brings a ``template`` (with ``{text}``), its ``labels`` and optionally a ``verbalizer`` and in-context
``examples``; each label is scored by the log-likelihood of its answer after the prompt. The handler calls
``prompt_key``, which checks every prompt field (a 400 naming it), checks the whole prompt against the server's
input limit (a 413) and builds the ``PromptScorer`` once. The key is what the ``Batcher`` groups by: requests with
equal prompts (template, labels, verbalizer, examples) are scored together, so the examples' tokens they all
start with run once per adapter, and requests for different slotted adapters share each forward. ``run_prompt_classify`` is that call; ``batch_runs`` runs it on the batcher's worker, the one
thread that touches the model, between batches and continuous-engine steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from adapterhub.data import ClassificationData
from adapterhub.errors import OptionError
from adapterhub.prompting import PromptScorer, PromptSpec
from adapterhub.runtime import AdapterPool
from adapterhub.server.http_errors import HTTPError, raised_by
from adapterhub.server.schemas import ClassifyRequest


@dataclass(frozen=True)
class PromptKey:
    """The batch key of a prompt classification: requests with equal prompts share one scoring call. The scorer,
    built from the first request's fields, is not compared: equal fields make equal scorers."""

    template: str
    labels: tuple[str, ...]
    verbalizer: tuple[tuple[str, str], ...]
    examples: tuple[tuple[str, str], ...]
    chat_template: bool
    scorer: PromptScorer = field(compare=False, repr=False)


def refuse_prompt_fields(body: ClassifyRequest, model_task: str) -> None:
    """A base with its own classification head has no use for a prompt: say so rather than ignore the fields."""
    if body.prompt_fields:
        raise HTTPError(400, f"{body.prompt_fields[0]}: prompt templates need a causal-LM base; this server runs "
                             f"a {model_task} base, whose adapters classify with their own heads (send text and adapter)")  # fmt: skip


def prompt_key(body: ClassifyRequest, tokenizer, max_input_tokens: int) -> PromptKey:
    """Check the prompt fields of ``body`` (each error names its field) and build its batch key and scorer."""
    if body.template is None:
        raise HTTPError(400, "this server runs a causal-lm base: /classify needs a template (with {text}) and labels, "
                             "and scores each label's answer after the prompt; or use POST /generate")  # fmt: skip
    labels = _checked_labels(body.labels)
    verbalizer = body.verbalizer or {}
    unknown = [name for name in verbalizer if name not in labels]
    if unknown:
        raise HTTPError(400, f"verbalizer names label {unknown[0]!r}, which is not in labels ({', '.join(labels)})")
    examples = body.examples or []
    for i, example in enumerate(examples):
        if example.label not in labels:
            raise HTTPError(400, f"examples[{i}].label {example.label!r} is not in labels ({', '.join(labels)})")
    shots = None
    if examples:
        shots = ClassificationData([e.text for e in examples], [labels.index(e.label) for e in examples], labels)
    try:
        spec = PromptSpec(body.template, verbalizer, len(examples), body.chat_template)
        scorer = PromptScorer(tokenizer, spec, labels, shots)
    except OptionError as exc:  # no {text}, a label or answer that tokenizes to nothing, two labels with one answer
        raise HTTPError(400, str(exc)) from None
    _check_size(scorer, body.text, len(examples), max_input_tokens)
    pairs = tuple((e.text, e.label) for e in examples)
    return PromptKey(body.template, tuple(labels), tuple(sorted(verbalizer.items())), pairs, body.chat_template, scorer)


MAX_LABELS = 64
"""Each label can add a scoring row per text (answers longer than one token): a bound on one request's work."""


def _checked_labels(labels: list[str] | None) -> list[str]:
    if labels is None or len(labels) < 2:
        raise HTTPError(400, f"labels: give at least 2 labels to choose from (got {len(labels or [])})")
    if len(labels) > MAX_LABELS:
        raise HTTPError(400, f"labels: {len(labels)} labels; this server scores at most {MAX_LABELS} per request")
    repeated = next((name for i, name in enumerate(labels) if name in labels[:i]), None)
    if repeated is not None:
        raise HTTPError(400, f"labels: {repeated!r} is listed twice; give each label once")
    return list(labels)


def _check_size(scorer: PromptScorer, text: str, examples: int, limit: int) -> None:
    """The longest sequence the model reads (the prompt with its examples, then an answer) within the server's
    input limit: the same bound, and the same 413, as a ``/generate`` prompt."""
    tokens = len(scorer.context_ids(text)) + max(len(ids) for ids in scorer.continuations)
    if tokens <= limit:
        return
    if examples:
        raise HTTPError(413, f"examples: the prompt with its {examples} examples and an answer is {tokens} tokens; this "
                             f"server takes at most {limit} ({raised_by('max_input_tokens')}): give fewer or shorter examples")  # fmt: skip
    raise HTTPError(413, f"template: the prompt with the text and an answer is {tokens} tokens; this server takes "
                         f"at most {limit} ({raised_by('max_input_tokens')})")  # fmt: skip


def run_prompt_classify(pool: AdapterPool, payloads: list[ClassifyRequest], key: PromptKey) -> list[dict]:
    """Score every request of a batch with the key's prompt, requests for different adapters gathered.

    Requests whose adapters live in slots (and those for the bare base) are scored in one call, each row with its
    own request's adapter (``pool.activate``, as ``/v1/`` batches rows), so a batch mixing adapters costs the
    forwards of one. An adapter that cannot live in a slot is applied through peft, one adapter at a time: its
    requests are scored in a call of their own."""
    labels = list(key.labels)
    results: list[dict | None] = [None] * len(payloads)
    slotted: list[int] = []
    by_peft_adapter: dict[str, list[int]] = {}
    for i, payload in enumerate(payloads):
        if payload.adapter is None or pool.fetch(payload.adapter).kind == "slotted":
            slotted.append(i)
        else:
            by_peft_adapter.setdefault(payload.adapter, []).append(i)
    calls = [(rows, None) for rows in _within_slots(slotted, [p.adapter for p in payloads], pool.slots)]
    calls += [(rows, adapter) for adapter, rows in by_peft_adapter.items()]
    for rows, peft_adapter in calls:
        texts = [payloads[i].text for i in rows]
        if peft_adapter is None:
            adapters = [payloads[i].adapter for i in rows]
            log_likelihoods = key.scorer.score(pool.base.model, texts, groups=adapters, applying=pool.activate)
        else:
            with pool.peft_adapter(peft_adapter) as model:
                log_likelihoods = key.scorer.score(model, texts)  # (rows, labels)
        for i, scores in zip(rows, log_likelihoods):
            probabilities = scores.softmax(-1)  # over the labels, as a seq-cls head's answer
            results[i] = {"label": labels[int(torch.argmax(scores))], "scores": dict(zip(labels, probabilities.tolist())),
                          "log_likelihoods": dict(zip(labels, scores.tolist())), "adapter": payloads[i].adapter}  # fmt: skip
    return results


def _within_slots(rows: list[int], adapters: list[str | None], slots: int) -> list[list[int]]:
    """``rows`` split into as few calls as hold at most ``slots`` distinct adapters each (the bare base takes none)."""
    calls: list[list[int]] = []
    taken: list[set[str]] = []
    for i in rows:
        adapter = adapters[i]
        at = next((c for c, held in enumerate(taken) if adapter is None or adapter in held or len(held) < slots), None)
        if at is None:
            calls.append([])
            taken.append(set())
            at = len(calls) - 1
        calls[at].append(i)
        if adapter is not None:
            taken[at].add(adapter)
    return calls
