"""Continual learning end to end on a tiny BERT: `adapterhub continual train` puts one adapter per task in the
registry with task and sequence tags, the router rebuilt from the registry sends each task's held-out texts
to its adapter, evaluation after the last task equals what each task scored right after it was trained
(zero forgetting), appending a task trains only that task, and mistakes are clear errors."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest
from continual_tasks import TASKS, write_plan, write_task
from tiny_models import make_tiny_bert

from adapterhub import adapters
from adapterhub.base import load_base
from adapterhub.cli import main
from adapterhub.continual import Router, UnknownTaskError, evaluate_sequence, load_plan, train_sequence
from adapterhub.continual.features import BaseFeatures, decode_tensor, encode_tensor
from adapterhub.errors import AdapterHubError, IncompatibleBaseError
from adapterhub.runtime import AdapterPool
from adapterhub_registry import Registry

TEXTS = {"films": "the movie was awesome", "roads": "we drive the car fast", "talk": "i and you so that"}


def run_cli(capsys, *args: str) -> str:
    capsys.readouterr()
    status = main(list(args))
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return captured.out


@pytest.fixture(scope="module")
def trained(tiny_bert, tmp_path_factory):
    """A plan of three tasks trained once through `adapterhub continual train --json`: (plan path, registry, output)."""
    directory = tmp_path_factory.mktemp("continual")
    plan = write_plan(directory, tiny_bert)
    root = directory / "registry"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # capsys is per test; this fixture is per module
        assert main(["continual", "train", str(plan), "--registry", str(root), "--json", "--no-progress"]) == 0
    return plan, Registry(root), json.loads(out.getvalue())


def test_train_pushes_one_adapter_per_task_tagged_with_its_task_and_the_sequence(trained):
    _, registry, output = trained
    assert [(t["task"], t["adapter"], t["trained"]) for t in output["tasks"]] == [
        ("films", "toy-films@1", True), ("roads", "toy-roads@1", True), ("talk", "toy-talk@1", True)]  # fmt: skip
    for position, task in enumerate(TASKS):
        record = registry.resolve(f"toy-{task}:task-{task}")
        assert set(record.tags) == {f"task-{task}", "sequence-toy"}
        assert record.manifest["continual"]["position"] == position and record.manifest["labels"] == sorted(
            TASKS[task][1]
        )
    assert [r.name for r in registry.list(tag="sequence-toy")] == ["toy-films", "toy-roads", "toy-talk"]


def test_every_task_learned_its_labels(trained):
    _, registry, _ = trained
    for task in TASKS:
        assert registry.resolve(f"toy-{task}").metrics["accuracy"] >= 0.9


def test_oracle_eval_after_the_last_task_equals_each_task_right_after_it_was_trained(trained, capsys):
    plan, registry, output = trained
    evaluated = json.loads(run_cli(capsys, "continual", "eval", str(plan), "--registry", str(registry.root), "--json"))
    at_training = {t["task"]: t["metrics"] for t in output["tasks"]}
    for task in evaluated["tasks"]:
        for metric in ("accuracy", "f1_macro"):
            assert task["oracle"][metric] == pytest.approx(at_training[task["task"]][metric], abs=1e-6)


def test_a_per_task_merge_is_evaluated_as_a_sequence_on_the_plans_data(trained, tiny_bert, capsys):
    plan, registry, output = trained
    root = str(registry.root)
    # weight 1 on the first task and 0 on the others: the merged LoRA is the first task's, exactly
    merged = json.loads(run_cli(capsys, "continual", "merge", "toy", "--base", str(tiny_bert), "--heads", "per-task",
                                "--weights", "1,0,0", "--registry", root, "--json"))  # fmt: skip
    assert [m["merged"] for m in merged] == ["toy-merged-films@1", "toy-merged-roads@1", "toy-merged-talk@1"]
    evaluated = json.loads(
        run_cli(capsys, "continual", "eval", str(plan), "--sequence", "toy-merged", "--registry", root, "--json")
    )
    original = json.loads(run_cli(capsys, "continual", "eval", str(plan), "--registry", root, "--json"))
    assert [t["adapter"] for t in evaluated["tasks"]] == [m["merged"] for m in merged]
    assert evaluated["tasks"][0]["oracle"]["accuracy"] == pytest.approx(
        output["tasks"][0]["metrics"]["accuracy"], abs=1e-6
    )
    assert evaluated["router_accuracy"] == original["router_accuracy"]  # the tasks' own router entries, kept


def test_router_sends_every_held_out_text_to_its_task_so_routing_costs_no_accuracy(trained):
    plan, registry, _ = trained
    result = evaluate_sequence(load_plan(plan), registry)
    assert result.router_accuracy == 1.0
    assert [t.routed_to for t in result.tasks] == [{t.task: t.examples} for t in result.tasks]
    assert result.average_routed == pytest.approx(result.average("accuracy"), abs=1e-12)


def test_route_and_show_commands_name_task_and_adapter(trained, tiny_bert, capsys):
    _, registry, _ = trained
    routes = json.loads(run_cli(capsys, "continual", "route", "toy", *TEXTS.values(), "--base", str(tiny_bert),
                                "--registry", str(registry.root), "--json"))  # fmt: skip
    assert [(r["task"], r["adapter"]) for r in routes] == [(t, f"toy-{t}@1") for t in TEXTS]
    shown = json.loads(run_cli(capsys, "continual", "show", "toy", "--registry", str(registry.root), "--json"))
    assert [(t["task"], t["labels"], t["prototypes"]) for t in shown["tasks"]] == [
        ("films", ["neg", "pos"], 2), ("roads", ["fast", "slow"], 2), ("talk", ["no", "yes"], 2)]  # fmt: skip


def test_router_from_registry_takes_task_ids_and_texts(trained, tiny_bert):
    _, registry, _ = trained
    router = Router.from_registry("toy", registry)
    assert router.ref_for("roads") == "toy-roads@1"
    with pytest.raises(AdapterHubError, match="no base to compute input features"):
        router.route(["the movie"])
    router.load_base(str(tiny_bert))
    assert router.route(list(TEXTS.values())) == ["toy-films@1", "toy-roads@1", "toy-talk@1"]
    with pytest.raises(
        UnknownTaskError, match="sequence 'toy' has no task 'cooking'; its tasks are: films, roads, talk"
    ):
        router.ref_for("cooking")


def test_unknown_sequence_is_an_error_saying_how_to_train_it(trained, capsys):
    _, registry, _ = trained
    assert main(["continual", "show", "nope", "--registry", str(registry.root)]) == 1
    assert "no adapters of sequence 'nope'" in capsys.readouterr().err


def test_router_refuses_a_base_other_than_the_one_its_prototypes_came_from(trained, tmp_path):
    _, registry, _ = trained
    other = load_base(make_tiny_bert(tmp_path / "other", seed=5), model_task="seq-cls", labels=["a", "b"])
    with pytest.raises(IncompatibleBaseError, match=other.fingerprint_id):
        Router.from_registry("toy", registry, base=other)


def test_routing_features_are_those_of_the_bare_base_even_with_adapters_loaded(trained, tiny_bert):
    _, registry, _ = trained
    texts = list(TEXTS.values())
    bare = BaseFeatures(load_base(tiny_bert, model_task="seq-cls", labels=["neg", "pos"]), max_length=16).of_texts(
        texts
    )
    pool = AdapterPool(
        load_base(tiny_bert, model_task="seq-cls", labels=["neg", "pos"]), slots=3, max_rank=4, registry=registry
    )
    keys = [pool.load(f"toy-{task}") for task in TASKS]
    with pool.activate(keys):  # a mixed batch leaves no state behind
        pool.base.model(**pool.base.tokenizer(texts, return_tensors="pt", padding=True))
    assert BaseFeatures.of_pool(pool, max_length=16).of_texts(texts) == pytest.approx(bare, abs=1e-6)
    with_adapter = load_base(tiny_bert, model_task="seq-cls", labels=["neg", "pos"])
    adapters.attach(with_adapter, "lora", adapters.make_options("lora", {"r": 2}))
    with pytest.raises(AdapterHubError, match="has an adapter attached"):
        BaseFeatures(with_adapter, max_length=16).of_texts(texts)


def test_prototypes_round_trip_exactly_through_json(trained):
    _, registry, _ = trained
    stored = registry.resolve("toy-films").manifest["continual"]["router"]["prototypes"]
    prototypes = decode_tensor(stored, "toy-films")
    assert prototypes.shape == (2, 32) and encode_tensor(prototypes) == stored
    assert prototypes.norm(dim=-1) == pytest.approx([1.0, 1.0], abs=1e-6)
    with pytest.raises(AdapterHubError, match="toy-films: the stored router prototypes are unreadable"):
        decode_tensor({**stored, "base64": "!!"}, "toy-films")


def test_appending_a_task_trains_only_it_and_leaves_earlier_adapters_untouched(tiny_bert, tmp_path):
    registry = Registry(tmp_path / "registry")
    first = train_sequence(
        load_plan(write_plan(tmp_path, tiny_bert, tasks=("films", "roads"))), registry=registry, progress=False
    )
    before = {r.task: (r.record.ref, r.record.blob_sha256, r.record.manifest["continual"]) for r in first}
    lines: list[str] = []
    runs = train_sequence(
        load_plan(write_plan(tmp_path, tiny_bert)), registry=registry, progress=False, log=lines.append
    )
    assert [(r.task, r.trained) for r in runs] == [("films", False), ("roads", False), ("talk", True)]
    assert {r.task: (r.record.ref, r.record.blob_sha256, r.record.manifest["continual"]) for r in runs[:2]} == before
    assert lines[0] == "[1/3] films: up to date (toy-films@1), not retrained"
    retrained = train_sequence(load_plan(tmp_path / "plan.json"), registry=registry, progress=False, retrain=True)
    assert [r.record.ref for r in retrained] == ["toy-films@2", "toy-roads@2", "toy-talk@2"]


def test_changed_training_data_retrains_that_task_and_eval_refuses_a_changed_file(tiny_bert, tmp_path):
    registry = Registry(tmp_path / "registry")
    plan_path = write_plan(tmp_path, tiny_bert, tasks=("films", "roads"))
    train_sequence(load_plan(plan_path), registry=registry, progress=False)
    (tmp_path / "other").mkdir()
    shutil.copy(write_task(tmp_path / "other", "roads", seed=1), tmp_path / "roads.csv")
    with pytest.raises(AdapterHubError, match="task 'roads': .*roads.csv is not the file toy-roads@1 was trained on"):
        evaluate_sequence(load_plan(plan_path), registry)
    runs = train_sequence(load_plan(plan_path), registry=registry, progress=False)
    assert [(r.task, r.trained, r.record.ref) for r in runs] == [
        ("films", False, "toy-films@1"),
        ("roads", True, "toy-roads@2"),
    ]
