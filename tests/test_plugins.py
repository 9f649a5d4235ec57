"""Plugin discovery through real entry points, isolation of broken plugins, and name conflicts."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from adapterhub import plugins
from adapterhub.cli import main
from adapterhub.errors import PluginError, UnknownNameError


def install_fake_distribution(root: Path, dist: str, module: str, source: str) -> None:
    """A real (if minimal) installed distribution: a module plus a .dist-info with an `adapterhub` entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.3.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3.1\n")
    (info / "entry_points.txt").write_text(f"[adapterhub]\n{module} = {module}\n")


@pytest.fixture
def site_dir(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in [m for m in sys.modules if m.startswith("fakeplugin")]:
        del sys.modules[name]
    monkeypatch.undo()
    plugins.reload()


GOOD = """
    from dataclasses import dataclass
    import adapterhub
    from adapterhub.specs import MethodSpec

    @dataclass
    class Options:
        size: int = 1

    @adapterhub.hookimpl
    def adapterhub_methods():
        return [MethodSpec("fake-method", "a method from a throw-away distribution", "FAKE", Options, lambda o, t: None)]
"""


def test_bundled_plugins_are_listed_with_their_contributions(capsys):
    assert main(["plugins", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)["plugins"]}
    assert listed["lora"]["distribution"] == "adapterhub-lora" and listed["lora"]["methods"] == ["lora"]
    assert listed["bitsandbytes"]["quantizers"] == ["int8", "nf4"]
    assert listed["bitsandbytes"]["version"] == "0.1.0"


def test_plugins_names_each_ops_implementation_and_says_why_others_were_passed_over_only_when_verbose(capsys):
    from adapterhub.kernels import kernel_report

    ops = kernel_report()
    assert main(["plugins"]) == 0
    plain = [line for line in capsys.readouterr().out.splitlines() if line.startswith("op ")]
    assert [line.split()[1] for line in plain] == [op["op"] for op in ops]
    assert all(line.endswith(f": {op['active']}") for line, op in zip(plain, ops, strict=True))
    assert main(["--verbose", "plugins"]) == 0
    verbose = [line for line in capsys.readouterr().out.splitlines() if line.startswith("op ")]
    assert [("(not: " in line) for line in verbose] == [bool(op["passed_over"]) for op in ops]


def test_plugin_is_discovered_through_its_entry_point(site_dir):
    install_fake_distribution(site_dir, "fakeplugin-good", "fakeplugin_good", GOOD)
    catalog = plugins.reload()
    assert catalog.method("fake-method").peft_type == "FAKE"
    info = {p.name: p for p in catalog.plugins}["fakeplugin_good"]
    assert (info.distribution, info.version, info.error) == ("fakeplugin-good", "0.3.1", None)


def test_plugin_failing_at_import_is_reported_and_others_still_work(site_dir, capsys):
    install_fake_distribution(
        site_dir, "fakeplugin-broken", "fakeplugin_broken", "raise RuntimeError('boom at import')"
    )
    catalog = plugins.reload()
    broken = {p.name: p for p in catalog.plugins}["fakeplugin_broken"]
    assert "RuntimeError: boom at import" in broken.error
    assert catalog.method("lora").name == "lora"
    assert main(["plugins"]) == 0
    assert "FAILED TO LOAD: RuntimeError: boom at import" in capsys.readouterr().out


def test_plugin_raising_inside_a_hook_is_reported_and_others_still_work(site_dir):
    install_fake_distribution(site_dir, "fakeplugin-hook", "fakeplugin_hook", """
        import adapterhub

        @adapterhub.hookimpl
        def adapterhub_methods():
            raise ValueError("bad hook")
    """)  # fmt: skip
    catalog = plugins.reload()
    assert any("fakeplugin_hook" in e and "ValueError: bad hook" in e for e in catalog.hook_errors)
    assert catalog.method("lora").name == "lora"


def test_two_plugins_claiming_one_name_give_an_error_naming_both(site_dir):
    install_fake_distribution(site_dir, "fakeplugin-a", "fakeplugin_a", GOOD)
    install_fake_distribution(site_dir, "fakeplugin-b", "fakeplugin_b", GOOD)
    catalog = plugins.reload()
    with pytest.raises(PluginError, match="fakeplugin_a and fakeplugin_b"):
        catalog.method("fake-method")


def test_unknown_method_lists_installed_methods():
    with pytest.raises(UnknownNameError, match="installed methods: .*lora"):
        plugins.catalog().method("nope")


def test_plugin_can_add_a_cli_command(site_dir, capsys):
    install_fake_distribution(site_dir, "fakeplugin-cmd", "fakeplugin_cmd", """
        import click
        import adapterhub

        @adapterhub.hookimpl
        def adapterhub_commands(cli):
            @cli.command("hello")
            def hello():
                click.echo("hello from a plugin")
    """)  # fmt: skip
    plugins.reload()
    from adapterhub.cli import cli

    cli._plugins_added = False
    assert main(["hello"]) == 0
    assert "hello from a plugin" in capsys.readouterr().out
    cli.commands.pop("hello")
    cli._plugins_added = False


def test_misspelled_hook_refuses_the_plugin_and_is_shown_by_adapterhub_plugins(site_dir, capsys):
    install_fake_distribution(site_dir, "fakeplugin-typo", "fakeplugin_typo", """
        import adapterhub

        @adapterhub.hookimpl
        def adapterhub_method():
            return []
    """)  # fmt: skip
    catalog = plugins.reload()
    info = {p.name: p for p in catalog.plugins}["fakeplugin_typo"]
    assert "adapterhub_method" in info.error and "PluginValidationError" in info.error
    assert not plugins.plugin_manager().has_plugin("fakeplugin_typo")
    assert catalog.method("lora").name == "lora"  # the others still load
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "fakeplugin_typo" in out and "FAILED TO LOAD" in out and "adapterhub_method" in out


@pytest.mark.parametrize("returned, problem", [
    ("MethodSpec", "returned <class 'adapterhub.specs.MethodSpec'>, not a list of MethodSpec"),
    ("[QuantizerSpec('q', 'd', lambda dtype: {})]", "returned a QuantizerSpec in its list, not a MethodSpec"),
    ("[MethodSpec('m', 'd', 'LORA', object, lambda o, b: None, frozenset({'slottable'}))]", "'slottable' without a slot_plan"),
])  # fmt: skip
def test_hook_returning_the_wrong_type_is_reported_and_ignored(site_dir, returned, problem):
    install_fake_distribution(site_dir, "fakeplugin-type", "fakeplugin_type", f"""
        import adapterhub
        from adapterhub.specs import MethodSpec, QuantizerSpec

        @adapterhub.hookimpl
        def adapterhub_methods():
            return {returned}
    """)  # fmt: skip
    catalog = plugins.reload()
    errors = [e for e in catalog.hook_errors if "fakeplugin_type" in e]
    assert errors and "adapterhub_methods contract" in errors[0] and problem in errors[0]
    assert "m" not in catalog.methods and catalog.method("lora").name == "lora"


NO_MERGE = """
    from dataclasses import dataclass
    import adapterhub
    from adapterhub.specs import MethodSpec

    @dataclass
    class Options:
        r: int = 2

    def build_config(options, base):
        from peft import LoraConfig

        return LoraConfig(r=options.r, target_modules=["q_proj", "v_proj"])

    @adapterhub.hookimpl
    def adapterhub_methods():
        return [MethodSpec("lowrank-plain", "peft's LoRA tuner, without a merge spec", "LOWRANK_PLAIN", Options,
                           build_config)]
"""


def test_merging_adapters_of_a_method_without_a_merge_spec_is_refused_naming_the_method(site_dir, tiny_llama, tmp_path):
    from adapterhub import adapters, merging
    from adapterhub.base import load_base
    from adapterhub.errors import OptionError
    from adapterhub_registry import Registry

    install_fake_distribution(site_dir, "fakeplugin-nomerge", "fakeplugin_nomerge", NO_MERGE)
    assert "mergeable" not in plugins.reload().method("lowrank-plain").capabilities
    base = load_base(tiny_llama, model_task="causal-lm")
    options = adapters.make_options("lowrank-plain", {})
    adapters.save_adapter(adapters.attach(base, "lowrank-plain", options), tmp_path / "plain",
                          adapters.build_manifest(base, "lowrank-plain", options))  # fmt: skip
    registry = Registry()
    ref = registry.push("plain", tmp_path / "plain", method="lowrank-plain").ref
    with pytest.raises(OptionError, match=r"plain@1 is an adapter of method 'lowrank-plain' \(plugin "
                                          r"fakeplugin-nomerge 0\.3\.1\), which does not support merging"):  # fmt: skip
        merging.merge(registry, "never", [ref], str(tiny_llama))
    assert registry.list(name="never") == []


@pytest.mark.parametrize("fields", [
    "frozenset({'mergeable'})",
    "merge=MergeSpec(('linear',), lambda key: True, lambda *args: None)",
])  # fmt: skip
def test_a_method_whose_mergeable_capability_disagrees_with_its_merge_spec_breaks_the_contract(site_dir, fields):
    install_fake_distribution(site_dir, "fakeplugin-merge", "fakeplugin_merge", f"""
        import adapterhub
        from adapterhub.specs import MergeSpec, MethodSpec

        @adapterhub.hookimpl
        def adapterhub_methods():
            return [MethodSpec('m', 'd', 'M', object, lambda o, b: None, {fields})]
    """)  # fmt: skip
    catalog = plugins.reload()
    errors = [e for e in catalog.hook_errors if "fakeplugin_merge" in e]
    assert errors and "capability 'mergeable' without a merge spec, or a merge spec without" in errors[0]
    assert "m" not in catalog.methods and catalog.method("lora").merge is not None
