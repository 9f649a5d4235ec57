"""`POST /classify` with a prompt template on a causal-LM server: the label scores are `adapterhub.prompting`'s
(the log-likelihood of each label's answer after the prompt), with the bare base or a registry adapter, with or
without in-context examples, requests arriving together batched on the one model thread; every malformed
prompt field is refused in one line naming it, and a seq-cls server refuses templates."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from test_runtime import push_random_adapter

from adapterhub import adapters
from adapterhub.base import load_base
from adapterhub.data import ClassificationData
from adapterhub.prompting import PromptScorer, PromptSpec
from adapterhub.runtime import AdapterPool
from adapterhub.server import ServerSettings, create_app, handlers
from adapterhub.server.http_errors import HTTPError
from adapterhub.server.schemas import ClassifyRequest
from adapterhub.server.state import AppState

TEMPLATE = "{text} ({labels}) it is"
LABELS = ["negative", "positive"]
VERBALIZER = {"negative": "bad", "positive": "very good"}  # answers of 1 and 2 tokens
EXAMPLES = [{"text": "i love this film", "label": "positive"}, {"text": "the car was so boring", "label": "negative"}]
TEXTS = ["the movie was fun", "they drive a slow car", "i hate that road"]
LIMIT = 64  # the server's max_input_tokens


@pytest.fixture(scope="module")
def served(tiny_llama, tmp_path_factory):
    """A causal-LM server over tiny_llama with registry adapters `lm` (in a slot) and `wide` (rank 8 > the pool's 4:
    through peft), and prompting's references: the bare base, and each adapter as peft attaches it to a base of its
    own, independent of the server's slots."""
    directory = tmp_path_factory.mktemp("prompt-classify")
    with pytest.MonkeyPatch.context() as env:  # one registry for the module: its pool outlives each test's home
        env.setenv("ADAPTERHUB_HOME", str(directory / "home"))
        base = load_base(tiny_llama)
        push_random_adapter(base, "lm", {"r": 4}, directory, seed=1)
        push_random_adapter(base, "wide", {"r": 8}, directory, seed=2)
        pool = AdapterPool(base, slots=2, max_rank=4)
    models = {
        ref: adapters.load_registry_adapter(load_base(tiny_llama), *pool.registry.load(ref)) for ref in ("lm", "wide")
    }
    settings = ServerSettings(max_batch_size=8, max_wait_ms=100, max_input_tokens=LIMIT)
    with TestClient(create_app(pool, settings)) as client:
        yield client, {None: load_base(tiny_llama).model, **models}, pool.base.tokenizer


def request(text: str, **fields) -> dict:
    return {"text": text, "template": TEMPLATE, "labels": LABELS, "verbalizer": VERBALIZER, **fields}


def reference(tokenizer, model, texts: list[str], examples: list[dict] | None = None) -> list[list[float]]:
    """What `adapterhub zero-shot` computes for ``texts``: each label's answer log-likelihood after the prompt."""
    shots = None
    if examples:
        shots = ClassificationData([e["text"] for e in examples], [LABELS.index(e["label"]) for e in examples], LABELS)
    scorer = PromptScorer(tokenizer, PromptSpec(TEMPLATE, VERBALIZER, len(examples or [])), LABELS, shots)
    return scorer.score(model, texts).tolist()


def assert_answers(answer: dict, expected: list[float], adapter: str | None) -> None:
    got = [answer["log_likelihoods"][label] for label in LABELS]
    assert got == pytest.approx(expected, abs=1e-4)
    assert answer["label"] == LABELS[expected.index(max(expected))] and answer["adapter"] == adapter
    assert sum(answer["scores"].values()) == pytest.approx(1.0) and list(answer["scores"]) == LABELS


def batches_run(client) -> float:
    line = next(
        line for line in client.get("/metrics").text.splitlines() if line.startswith("adapterhub_batch_size_count")
    )
    return float(line.split()[-1])


def test_requests_with_and_without_adapters_score_as_prompting_does_batched_together(served):
    client, models, tokenizer = served
    calls = [(text, adapter) for text in TEXTS for adapter in models]
    before = batches_run(client)
    with ThreadPoolExecutor(len(calls)) as threads:
        answers = list(
            threads.map(lambda call: client.post("/classify", json=request(call[0], adapter=call[1])), calls)
        )
    assert [a.status_code for a in answers] == [200] * len(calls), [a.text for a in answers]
    assert batches_run(client) - before < len(calls)  # requests that arrived together shared a batch
    tiers = {row["adapter"]: row["tier"] for row in client.get("/adapters").json()["adapters"]}
    assert tiers == {"lm@1": "device", "wide@1": "peft"}  # both ways the pool applies an adapter
    expected = {adapter: reference(tokenizer, model, TEXTS) for adapter, model in models.items()}
    for (text, adapter), answer in zip(calls, answers):
        assert_answers(answer.json(), expected[adapter][TEXTS.index(text)], adapter)
    for adapter in ("lm", "wide"):  # each adapter changes the scores
        assert all(
            max(abs(p - a) for p, a in zip(plain, adapted)) > 1e-3
            for plain, adapted in zip(expected[None], expected[adapter])
        )


def test_in_context_examples_come_first_and_change_the_scores(served):
    client, models, tokenizer = served
    bare = models[None]
    answer = client.post("/classify", json=request(TEXTS[0], examples=EXAMPLES))
    assert answer.status_code == 200, answer.text
    expected = reference(tokenizer, bare, [TEXTS[0]], EXAMPLES)[0]
    assert_answers(answer.json(), expected, None)
    zero_shot = reference(tokenizer, bare, [TEXTS[0]])[0]
    assert max(abs(e - z) for e, z in zip(expected, zero_shot)) > 1e-3


@pytest.mark.parametrize(
    "fields, status, message",
    [
        ({"template": None}, 400, "needs a template"),
        ({"template": "Review: it is"}, 400, "template 'Review: it is' has no {text} placeholder"),
        ({"labels": ["positive"]}, 400, "labels: give at least 2 labels"),
        ({"labels": ["positive", "positive"]}, 400, "labels: 'positive' is listed twice"),
        ({"labels": [f"label{i}" for i in range(65)]}, 400, "labels: 65 labels; this server scores at most 64"),
        ({"verbalizer": {"neutral": "so"}}, 400, "verbalizer names label 'neutral', which is not in labels"),
        (
            {"verbalizer": {"negative": " ", "positive": "good"}},
            400,
            "the verbalizer of label 'negative' (' ') tokenizes to nothing",
        ),
        (
            {"labels": ["bad", " "], "verbalizer": None},
            400,
            "label ' ' tokenizes to nothing; give it a word in the verbalizer",
        ),
        ({"verbalizer": {"negative": "bad", "positive": "bad"}}, 400, "tokenize to the same answer"),
        ({"examples": [{"text": "so fun", "label": "neutral"}]}, 400, "examples[0].label 'neutral' is not in labels"),
        (
            {"examples": [{"text": "the movie was very very good", "label": "positive"}] * 6},
            413,
            "examples: the prompt with its 6 examples",
        ),
    ],
)
def test_bad_prompt_fields_are_refused_in_one_line_naming_the_field(served, fields, status, message):
    client = served[0]
    body = {key: value for key, value in request(TEXTS[0], **fields).items() if value is not None}
    answer = client.post("/classify", json=body)
    detail = answer.json()["detail"]
    assert answer.status_code == status and message in detail and "\n" not in detail, detail


def test_a_seq_cls_server_refuses_a_template_saying_it_needs_a_causal_lm(tiny_bert):
    state = AppState.build(AdapterPool(load_base(tiny_bert, model_task="seq-cls", labels=["neg", "pos"]), slots=1, max_rank=2),
                           ServerSettings())  # fmt: skip
    try:
        for body in (request("great movie"), {"text": "great movie", "examples": EXAMPLES}):
            with pytest.raises(HTTPError) as refused:
                asyncio.run(handlers.classify(ClassifyRequest(**body), state))
            assert (
                refused.value.status == 400
                and "need a causal-LM base; this server runs a seq-cls base" in refused.value.detail
            )
        assert refused.value.detail.startswith("examples:")
    finally:
        state.batcher.worker.shutdown(wait=True)
