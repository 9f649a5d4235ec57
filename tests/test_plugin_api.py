"""The plugin API holds: renamed names keep working with a warning, docs/plugins.md names the whole surface and its
example plugin works, and a plugin written against plugin API 1.0 still trains (in its own process)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pluggy
import pytest

from adapterhub import PLUGIN_API_VERSION, hookspecs, plugins, specs
from adapterhub.base import Base, load_base
from adapterhub.deprecation import ALIASES, Alias

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "plugins.md"
OLD_SURFACE = Path(__file__).resolve().parent / "plugins" / "old_surface"


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


@pytest.fixture(scope="module")
def tiny_base(tiny_bert) -> Base:
    return load_base(tiny_bert, model_task="seq-cls", labels=["neg", "pos"])


def test_reading_base_task_warns_naming_model_task_and_returns_it(tiny_base):
    with pytest.warns(DeprecationWarning, match=r"Base\.task .* goes away in 1\.3: use Base\.model_task") as caught:
        value = tiny_base.task
    assert value == tiny_base.model_task == "seq-cls"
    assert caught[0].filename == __file__  # the warning points at the plugin's line, not at adapterhub


def test_setting_base_task_warns_and_sets_model_task(tiny_base):
    base = dataclasses.replace(tiny_base)
    with pytest.warns(DeprecationWarning, match=r"use Base\.model_task"):
        base.task = "causal-lm"
    assert base.model_task == "causal-lm"
    assert "task" not in {f.name for f in dataclasses.fields(Base)}  # the alias is no constructor argument


def test_peft_task_type_from_its_old_module_warns_and_is_the_model_tasks_one():
    from adapterhub import model_tasks

    with pytest.warns(DeprecationWarning, match=r"use adapterhub\.model_tasks\.peft_task_type"):
        from adapterhub.adapters import peft_task_type
    assert peft_task_type is model_tasks.peft_task_type
    with pytest.raises(AttributeError, match="adapterhub.adapters"):
        importlib.import_module("adapterhub.adapters").no_such_name  # noqa: B018


def test_an_alias_must_last_through_the_next_minor_version():
    with pytest.raises(ValueError, match=r"removed_in=1\.3 or later"):
        Alias("Thing.old", "Thing.new", since="1.1", removed_in="1.2")
    with pytest.raises(ValueError, match="major.minor"):
        Alias("Thing.old", "Thing.new", since="1.1", removed_in="2")
    assert Alias("Thing.old", "Thing.new", since="1.9", removed_in="2.0").removed_in == "2.0"


def test_no_alias_outlives_its_removal_version():
    importlib.import_module("adapterhub.adapters")  # defines its aliases on import
    assert {"Base.task", "adapterhub.adapters.peft_task_type"} <= {alias.old for alias in ALIASES}
    overdue = [a.old for a in ALIASES if _version(a.removed_in) <= _version(PLUGIN_API_VERSION)]
    assert not overdue, f"plugin API {PLUGIN_API_VERSION} should no longer have the aliases {overdue}"


def test_plugins_command_shows_the_plugin_api_version(cli, cli_json):
    assert re.fullmatch(r"\d+\.\d+", PLUGIN_API_VERSION)
    assert cli_json("plugins", "--json")["plugin_api_version"] == PLUGIN_API_VERSION
    assert cli("plugins").splitlines()[0] == f"plugin API {PLUGIN_API_VERSION} (docs/plugins.md)"


def test_docs_name_every_hook_spec_field_base_attribute_and_alias():
    text = DOCS.read_text()
    assert f"**Plugin API version: {PLUGIN_API_VERSION}**" in text
    hooks = [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("adapterhub_")]
    from adapterhub_registry.remote_store import RemoteStoreSpec

    spec_classes = [c for _, c in inspect.getmembers(specs, inspect.isclass) if c.__module__ == specs.__name__]
    fields = [f"{c.__name__}.{f.name}" for c in [*spec_classes, RemoteStoreSpec, Base] if dataclasses.is_dataclass(c)
              for f in dataclasses.fields(c)]  # fmt: skip
    importlib.import_module("adapterhub.adapters")
    missing = [name for name in [*hooks, *(c.__name__ for c in spec_classes), *(a.old for a in ALIASES)]
               if f"`{name}" not in text]  # fmt: skip
    missing += [field for field in fields if not re.search(rf"`{field.split('.')[1]}[`(]", text)]
    assert not missing, f"docs/plugins.md does not mention {missing}"


def _docs_block(after: str, language: str) -> str:
    """The first ```language block after the line ``after`` in docs/plugins.md."""
    text = DOCS.read_text()
    start = text.index(f"\n{after}\n")
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(text, start)
    assert match, f"no {language} block after {after!r} in docs/plugins.md"
    return match.group(1)


def test_the_docs_example_plugin_keeps_the_contract_and_attaches(tiny_bert, tmp_path, monkeypatch):
    import peft

    from adapterhub.errors import OptionError
    from adapterhub.options import build_options

    tomllib = pytest.importorskip("tomllib")  # python 3.11+
    project = tomllib.loads(_docs_block("`pyproject.toml`:", "toml"))
    assert project["project"]["entry-points"]["adapterhub"] == {"loha": "adapterhub_loha"}
    (tmp_path / "adapterhub_loha").mkdir()
    (tmp_path / "adapterhub_loha" / "__init__.py").write_text(_docs_block("`adapterhub_loha/__init__.py`:", "python"))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("adapterhub_loha")
    try:
        pm = pluggy.PluginManager("adapterhub")
        pm.add_hookspecs(hookspecs)
        pm.register(module, name="loha")
        pm.check_pending()
        catalog = plugins.build_catalog(pm, [])
    finally:
        del sys.modules["adapterhub_loha"]
    assert catalog.hook_errors == [] and list(catalog.methods) == ["loha"]
    spec = catalog.method("loha")
    options = build_options(spec.options, {"r": "2", "target_modules": "query,value"}, owner="method 'loha'")
    with pytest.raises(OptionError, match="option 'r'"):
        build_options(spec.options, {"r": "0"}, owner="method 'loha'")
    base = load_base(tiny_bert, model_task="seq-cls", labels=["neg", "pos"])  # get_peft_model changes the model
    model = peft.get_peft_model(base.model, spec.build_config(options, base))
    trained = [name for name, p in model.named_parameters() if p.requires_grad and "hada_" in name]
    assert len(trained) == 2 * 2 * 4  # 2 layers x (query, value) x 4 LoHa factors
    assert model.peft_config["default"].peft_type.value == spec.peft_type


@pytest.mark.integration
def test_a_plugin_written_against_api_1_0_still_trains_with_warnings(tiny_bert, sentiment_csv, tmp_path):
    """The package in tests/plugins/old_surface reads ``base.task`` and imports ``adapterhub.adapters.peft_task_type``.
    It is installed into a directory of its own (not this environment, which other tests share) and put on
    PYTHONPATH for one ``adapterhub train`` process."""
    source, site = tmp_path / "old_surface", tmp_path / "site"
    shutil.copytree(OLD_SURFACE, source)  # building writes build/ and *.egg-info beside the sources
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation",
         "--target", str(site), str(source)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-W", "default::DeprecationWarning", "-m", "adapterhub.cli", "train", "--base", str(tiny_bert),
         "--method", "old_surface_lora", "-o", "r=2", "--data", str(sentiment_csv), "--label-column", "sentiment",
         "--epochs", "1", "--output", str(tmp_path / "adapter"), "--json", "--no-progress"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    plugin_file = str(site / "adapterhub_old_surface" / "__init__.py")
    assert re.search(rf"{re.escape(plugin_file)}:\d+: DeprecationWarning: Base\.task is deprecated .* "
                     r"use Base\.model_task instead", result.stderr), result.stderr  # fmt: skip
    assert "use adapterhub.model_tasks.peft_task_type instead" in result.stderr
    assert json.loads(result.stdout)["steps"] > 0
    manifest = json.loads((tmp_path / "adapter" / "adapterhub.json").read_text())
    assert manifest["method"] == "old_surface_lora"
    assert manifest["plugin"] == {"distribution": "adapterhub-old-surface", "name": "old_surface", "version": "1.0.0"}
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size > 0
