"""Every method plugin through the real command line: listed with capabilities, trained with
`adapterhub train --method NAME`, pushed, pulled and evaluated; PEFT import maps peft_type to the method;
an adapter whose plugin is missing names the distribution to install."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from adapterhub import plugins
from adapterhub.cli import main
from adapterhub.errors import UnknownNameError
from adapterhub_registry import Registry

METHODS = ("adalora", "bottleneck", "ia3", "prefix_tuning", "prompt_tuning")


def run_json(capsys, *args: str) -> dict:
    capsys.readouterr()
    status = main(list(args))
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return json.loads(captured.out)


def test_plugins_lists_every_method_with_its_capabilities_and_distribution(capsys):
    rows = {row["name"]: row for row in run_json(capsys, "plugins", "--json")["plugins"]}
    for method in METHODS:
        assert rows[method]["methods"] == [method]
        assert rows[method]["distribution"] == f"adapterhub-{method.replace('_', '-')}"
    assert "rank-schedule" in rows["adalora"]["capabilities"]["adalora"]
    assert "causal-lm-only" in rows["prefix_tuning"]["capabilities"]["prefix_tuning"]


@pytest.mark.parametrize(
    "method, options",
    [("adalora", ["init_r=4", "target_r=2"]), ("bottleneck", ["variant=pfeiffer", "reduction_factor=4"]),
     ("ia3", []), ("prompt_tuning", ["num_virtual_tokens=4", "init=text", "init_text=good or bad"])],
)  # fmt: skip
def test_train_push_and_eval_from_the_registry_give_the_same_metrics(method, options, capsys, tiny_bert, sentiment_csv):
    flags = [arg for option in options for arg in ("-o", option)]
    common = ["--base", str(tiny_bert), "--data", str(sentiment_csv), "--label-column", "sentiment", "--dedupe"]
    trained = run_json(capsys, "train", *common, "--method", method, *flags, "--epochs", "1", "--lr", "1e-2",
                       "--max-length", "16", "--push", f"senti-{method}", "--json", "--no-progress")  # fmt: skip
    evaluated = run_json(capsys, "eval", f"senti-{method}", *common, "--json")
    assert evaluated["metrics"]["accuracy"] == trained["metrics"]["accuracy"]
    assert evaluated["metrics"]["roc_auc"] == pytest.approx(trained["metrics"]["roc_auc"], abs=1e-9)


def test_prefix_tuning_trains_a_causal_lm_and_is_refused_for_classification(
    capsys, tiny_llama, tiny_bert, text_file, sentiment_csv
):
    trained = run_json(capsys, "train", "--base", str(tiny_llama), "--model-task", "causal-lm", "--method", "prefix_tuning",
                       "-o", "num_virtual_tokens=4", "--data", str(text_file), "--block-size", "16", "--epochs", "1",
                       "--lr", "1e-2", "--push", "prefix", "--json", "--no-progress")  # fmt: skip
    evaluated = run_json(capsys, "eval", "prefix", "--base", str(tiny_llama), "--data", str(text_file), "--json")
    assert evaluated["metrics"]["loss"] == pytest.approx(trained["metrics"]["loss"], abs=1e-5)
    status = main(["train", "--base", str(tiny_bert), "--method", "prefix_tuning", "--data", str(sentiment_csv),
                   "--label-column", "sentiment", "--no-progress"])  # fmt: skip
    assert status == 1 and "Use prompt_tuning for this task" in capsys.readouterr().err


@pytest.fixture(scope="module")
def bottleneck_registry(tiny_llama, text_file, tmp_path_factory) -> Path:
    """A registry holding ``bn``, a bottleneck adapter trained once through `adapterhub train --push` on the tiny
    Llama; each test works on its own copy (``registry_with_bn``), so the tests stay independent."""
    home = tmp_path_factory.mktemp("bottleneck-home")
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()) as out:
        patch.setenv("ADAPTERHUB_HOME", str(home))  # capsys and monkeypatch are per test; this fixture is per module
        assert main(["train", "--base", str(tiny_llama), "--model-task", "causal-lm", "--method", "bottleneck", "--data",
                     str(text_file), "--block-size", "16", "--epochs", "1", "--push", "bn", "--json", "--no-progress"]) == 0  # fmt: skip
    assert json.loads(out.getvalue())["pushed"] == "bn@1"
    return home / "registry"


@pytest.fixture
def registry_with_bn(bottleneck_registry, adapterhub_home) -> None:
    """This test's registry (the default one under its ADAPTERHUB_HOME) starts as a copy of ``bottleneck_registry``."""
    shutil.copytree(bottleneck_registry, adapterhub_home / "registry")


def test_peft_import_maps_the_bottleneck_type_to_its_method(registry_with_bn, tiny_llama, tmp_path):
    assert main(["registry", "export-peft", "bn", str(tmp_path / "peft-dir")]) == 0
    assert main(["registry", "import-peft", str(tmp_path / "peft-dir"), "bn-copy", "--base", str(tiny_llama)]) == 0
    assert Registry().resolve("bn-copy").method == "bottleneck"


def test_loading_without_the_method_plugin_names_the_distribution_to_install(registry_with_bn):
    record = Registry().resolve("bn")
    assert record.manifest["plugin"]["distribution"] == "adapterhub-bottleneck"

    pm, infos = plugins.load_plugins()  # the installed plugins, minus the bottleneck one
    pm.unregister(name="bottleneck")
    without = plugins.build_catalog(pm, [info for info in infos if info.name != "bottleneck"])
    with pytest.raises(UnknownNameError, match=r"PEFT type 'BOTTLENECK'.*pip install adapterhub-bottleneck"):
        without.method_for_peft_type(record.peft_config["peft_type"], record.manifest["plugin"])
