"""Task-sequence plans: JSON and TOML read alike, and every mistake is caught before training with a message
naming the task and what to change. No model is loaded here (the base only has to exist)."""

from __future__ import annotations

import json

import pytest
from continual_tasks import write_plan, write_task

from adapterhub.cli import main
from adapterhub.continual import PlanError, load_plan, parse_plan


@pytest.fixture
def plan_dir(tmp_path):
    (tmp_path / "base").mkdir()
    write_plan(tmp_path, tmp_path / "base")
    return tmp_path


def raw_plan(plan_dir) -> dict:
    return json.loads((plan_dir / "plan.json").read_text())


def refused(plan_dir, **changes) -> str:
    with pytest.raises(PlanError) as caught:
        parse_plan({**raw_plan(plan_dir), **changes}, plan_dir)
    return str(caught.value)


def test_plan_lists_tasks_in_order_with_paths_relative_to_the_plan_and_their_labels(plan_dir):
    plan = load_plan(plan_dir / "plan.json")
    assert [(t.name, t.position) for t in plan.tasks] == [("films", 0), ("roads", 1), ("talk", 2)]
    assert plan.tasks[1].data.path == str(plan_dir / "roads.csv")
    assert plan.labels == {"films": ["neg", "pos"], "roads": ["fast", "slow"], "talk": ["no", "yes"]}
    assert plan.settings.learning_rate == 0.05 and plan.prototypes == 2
    assert plan.adapter_name("roads") == "toy-roads"
    assert [t.name for t in plan.prefix(2).tasks] == ["films", "roads"] and set(plan.prefix(2).labels) == {
        "films",
        "roads",
    }


def test_toml_plan_equals_the_json_plan(plan_dir):
    (plan_dir / "plan.toml").write_text(
        'sequence = "toy"\nbase = "base"\nmethod = "lora"\nrouter = {prototypes = 2}\n'
        '[options]\nr = 4\ntarget_modules = "query,value"\n'
        '[settings]\n' + "".join(f"{k} = {v}\n" for k, v in raw_plan(plan_dir)["settings"].items())
        + "".join(f'[[tasks]]\nname = "{t}"\npath = "{t}.csv"\n' for t in ("films", "roads", "talk"))
    )  # fmt: skip
    toml, plain = load_plan(plan_dir / "plan.toml"), load_plan(plan_dir / "plan.json")
    assert toml.tasks == plain.tasks and toml.settings == plain.settings and toml.options == plain.options


def test_shared_data_options_apply_to_every_task_unless_a_task_overrides_them(plan_dir):
    tasks = [{"name": "films", "path": "films.csv", "max_samples": 30}, {"name": "roads", "path": "roads.csv"}]
    plan = parse_plan({**raw_plan(plan_dir), "data": {"dedupe": True, "test_split": 0.3}, "tasks": tasks}, plan_dir)
    assert [(t.data.dedupe, t.data.test_split, t.data.max_samples) for t in plan.tasks] == [
        (True, 0.3, 30),
        (True, 0.3, None),
    ]


def test_unknown_key_in_a_task_names_the_task_and_the_valid_keys(plan_dir):
    message = refused(plan_dir, tasks=[{"name": "films", "path": "films.csv", "lable_column": "label"}])
    assert "task 'films' (tasks[0])" in message and "'lable_column'" in message and "label_column" in message


def test_unknown_top_level_key_and_setting_are_named(plan_dir):
    assert "'epoch'" in refused(plan_dir, epoch=3) and "valid keys" in refused(plan_dir, epoch=3)
    message = refused(plan_dir, settings={"epoch": 3})
    assert "plan's settings" in message and "'epoch'" in message and "epochs" in message


def test_unknown_method_option_and_quantizer_are_named(plan_dir):
    assert "'rank'" in refused(plan_dir, options={"rank": 4})
    assert "'nf5'" in refused(plan_dir, quantize="nf5")


def test_missing_data_file_names_the_task_and_the_path(plan_dir):
    message = refused(plan_dir, tasks=[{"name": "films", "path": "nope.csv"}])
    assert "task 'films'" in message and "nope.csv" in message and "relative to the plan file" in message


def test_missing_base_is_named(plan_dir):
    assert "base model" in refused(plan_dir, base="no-such-model")


def test_duplicate_task_name_is_refused(plan_dir):
    message = refused(plan_dir, tasks=[{"name": "films", "path": "films.csv"}, {"name": "films", "path": "roads.csv"}])
    assert "tasks[1]" in message and "unique" in message


def test_labels_differing_in_count_are_refused_naming_both_tasks(plan_dir):
    three = plan_dir / "three.csv"
    three.write_text("text,label\nthe movie,a\nthe film,b\nthe car,c\n")
    message = refused(plan_dir, tasks=[{"name": "films", "path": "films.csv"}, {"name": "three", "path": "three.csv"}])
    assert "task 'three' has 3 labels (a, b, c)" in message and "task 'films' has 2 (neg, pos)" in message


def test_reserved_and_invalid_task_names_are_refused(plan_dir):
    assert "reserved" in refused(plan_dir, tasks=[{"name": "auto", "path": "films.csv"}])
    assert "invalid adapter name" in refused(plan_dir, tasks=[{"name": "../x", "path": "films.csv"}])
    assert "sequence name" in refused(plan_dir, sequence="a/b")


def test_empty_task_list_and_missing_path_are_refused(plan_dir):
    assert "non-empty list" in refused(plan_dir, tasks=[])
    assert "has no path" in refused(plan_dir, tasks=[{"name": "films"}])


def test_unreadable_plan_files_are_clear_errors(tmp_path):
    with pytest.raises(PlanError, match="not found"):
        load_plan(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text('{"sequence": ')
    with pytest.raises(PlanError, match="line 1: not valid JSON"):
        load_plan(tmp_path / "bad.json")
    (tmp_path / "bad.toml").write_text("sequence = = 1")
    with pytest.raises(PlanError, match="not valid TOML"):
        load_plan(tmp_path / "bad.toml")


def test_cli_reports_a_bad_plan_as_one_error_line(plan_dir, capsys):
    write_task(plan_dir, "films")
    (plan_dir / "bad.json").write_text(
        json.dumps({**raw_plan(plan_dir), "tasks": [{"name": "films", "path": "gone.csv"}]})
    )
    assert main(["continual", "train", str(plan_dir / "bad.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: task 'films'") and "gone.csv" in err[0]
