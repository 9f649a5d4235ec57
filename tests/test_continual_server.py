"""The server with a continual-learning router: a request names a task (its adapter serves it) or "auto" (the
router picks from the input, a batch routed together); answers say which task and adapter served them and use
that adapter's label names; unknown tasks and contradictory requests get clear 4xx answers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from continual_tasks import TASKS, write_corpus, write_plan
from fastapi.testclient import TestClient

from adapterhub.base import load_base
from adapterhub.cli import main
from adapterhub.continual import Router, evaluate_sequence, load_plan, parse_plan, train_sequence
from adapterhub.runtime import AdapterPool, GenerationSettings, classify, generate
from adapterhub.server import ServerSettings, create_app
from adapterhub_registry import Registry

TEXTS = {"films": "the movie was awesome", "roads": "we drive the car slow", "talk": "i and you not that"}


@pytest.fixture(scope="module")
def registry(tiny_bert, tmp_path_factory):
    directory = tmp_path_factory.mktemp("continual-server")
    registry = Registry(directory / "registry")
    train_sequence(load_plan(write_plan(directory, tiny_bert)), registry=registry, progress=False)
    return registry


@pytest.fixture
def served(registry, tiny_bert):
    pool = AdapterPool(
        load_base(tiny_bert, model_task="seq-cls", labels=["neg", "pos"]), slots=3, max_rank=4, registry=registry
    )
    router = Router.from_registry("toy", registry, base=pool)
    with TestClient(create_app(pool, ServerSettings(max_batch_size=8, max_wait_ms=50), router)) as client:
        yield client, pool


def test_named_task_is_served_by_its_adapter_with_its_label_names(served):
    client, pool = served
    answer = client.post("/classify", json={"text": TEXTS["roads"], "task": "roads"})
    assert answer.status_code == 200
    alone = classify(pool, [TEXTS["roads"]], ["toy-roads@1"])[0]
    assert answer.json() == {
        "label": alone.label,
        "scores": alone.scores,
        "adapter": "toy-roads@1",
        "task": "roads",
        "routed": False,
    }
    assert set(answer.json()["scores"]) == {"fast", "slow"}


def test_auto_routes_each_input_of_a_batch_to_its_task(served):
    client, pool = served
    with ThreadPoolExecutor(3) as threads:
        answers = list(
            threads.map(lambda text: client.post("/classify", json={"text": text, "task": "auto"}), TEXTS.values())
        )
    for task, answer in zip(TEXTS, answers):
        assert answer.status_code == 200
        body = answer.json()
        assert (body["task"], body["adapter"], body["routed"]) == (task, f"toy-{task}@1", True)
        assert body["label"] == classify(pool, [TEXTS[task]], [body["adapter"]])[0].label
        assert set(body["scores"]) == set(TASKS[task][1])


def test_requests_without_a_task_still_name_adapters_or_run_the_base(served):
    client, _ = served
    assert client.post("/classify", json={"text": "the movie", "adapter": "toy-films"}).json()["adapter"] == "toy-films"
    assert "task" not in client.post("/classify", json={"text": "the movie"}).json()


def test_unknown_task_is_404_listing_the_tasks(served):
    client, _ = served
    answer = client.post("/classify", json={"text": "the movie", "task": "cooking"})
    assert answer.status_code == 404
    assert answer.json()["detail"] == "sequence 'toy' has no task 'cooking'; its tasks are: films, roads, talk"


def test_adapter_and_task_together_are_refused(served):
    client, _ = served
    answer = client.post("/classify", json={"text": "the movie", "task": "films", "adapter": "toy-roads"})
    assert answer.status_code == 400 and "give one" in answer.json()["detail"]


def test_health_lists_the_router_s_tasks(served):
    client, _ = served
    assert client.get("/health").json()["router"] == {"sequence": "toy", "tasks": {t: f"toy-{t}@1" for t in TASKS}}


def test_task_on_a_server_without_router_is_400_saying_how_to_start_one(registry, tiny_bert):
    pool = AdapterPool(
        load_base(tiny_bert, model_task="seq-cls", labels=["neg", "pos"]), slots=1, max_rank=4, registry=registry
    )
    with TestClient(create_app(pool)) as client:
        answer = client.post("/classify", json={"text": "the movie", "task": "auto"})
    assert answer.status_code == 400 and "--router SEQUENCE" in answer.json()["detail"]


def test_serve_with_an_unknown_router_sequence_fails_before_loading_anything(registry, tiny_bert, capsys):
    assert main(["serve", "--base", str(tiny_bert), "--router", "nope", "--registry", str(registry.root)]) == 1
    assert "no adapters of sequence 'nope'" in capsys.readouterr().err
    assert (
        main(
            [
                "serve",
                "--base",
                str(tiny_bert),
                "--router",
                "toy",
                "--task",
                "causal-lm",
                "--registry",
                str(registry.root),
            ]
        )
        == 1
    )
    assert "sequence 'toy' is a seq-cls sequence" in capsys.readouterr().err


def test_generation_server_routes_prompts_of_a_causal_lm_sequence(tiny_llama, tmp_path):
    for task in ("films", "roads"):
        write_corpus(tmp_path, task)
    plan = parse_plan({
        "sequence": "lm", "base": str(tiny_llama), "model_task": "causal-lm", "method": "lora",
        "options": {"r": 4, "target_modules": "q_proj,v_proj"}, "settings": {"epochs": 1, "block_size": 16, "batch_size": 8},
        "router": {"prototypes": 2}, "tasks": [{"name": t, "path": f"{t}.txt"} for t in ("films", "roads")],
    }, tmp_path)  # fmt: skip
    registry = Registry(tmp_path / "registry")
    train_sequence(plan, registry=registry, progress=False)
    evaluation = evaluate_sequence(plan, registry)
    assert evaluation.router_accuracy == 1.0 and all("perplexity" in t.oracle for t in evaluation.tasks)
    pool = AdapterPool(load_base(tiny_llama), slots=2, max_rank=4, registry=registry)
    router = Router.from_registry("lm", registry, base=pool)
    with TestClient(create_app(pool, ServerSettings(max_new_tokens=4), router)) as client:
        answer = client.post("/generate", json={"prompt": "we drive the car", "task": "auto", "max_new_tokens": 3})
    assert answer.status_code == 200
    body = answer.json()
    assert (body["task"], body["adapter"], body["routed"]) == ("roads", "lm-roads@1", True)
    assert (
        body["text"]
        == generate(pool, ["we drive the car"], ["lm-roads@1"], GenerationSettings(max_new_tokens=3))[0].text
    )
