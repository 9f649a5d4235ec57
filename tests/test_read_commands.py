"""The read commands of `adapterhub`: each has `--json` for scripts, `registry show` reads well without it, and
the messages that send the user to another command write it whole (`adapterhub registry list`, not `list`)."""

from __future__ import annotations

import json

import click
from test_registry_support import write_adapter

from adapterhub.cli import main
from adapterhub.cli.main import cli as adapterhub_cli
from adapterhub_registry import Registry

# Commands that change something or start a server: their outcome is one line, or a service, not a report.
NOT_READ = {
    "registry tag", "registry untag", "registry delete", "registry pull", "registry export-peft",
    "registry export-merged", "registry import-peft", "registry remote add", "registry remote remove", "serve", "ui",
    "registry compact", "registry gc", "registry keys generate", "registry remote trust", "registry remote untrust",
}  # fmt: skip


def _commands(group: click.Group, ctx: click.Context, prefix: str = ""):
    """Every command under ``group``, as (path, command): `registry remote list` is ("registry remote list", ...)."""
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            yield from _commands(command, click.Context(command, parent=ctx, info_name=name), f"{path} ")
        else:
            yield path, command


def test_every_read_command_has_json_output():
    ctx = click.Context(adapterhub_cli, info_name="adapterhub")
    read = {path: command for path, command in _commands(adapterhub_cli, ctx) if path not in NOT_READ}
    assert {"registry show", "registry verify", "registry remote list", "plugins", "registry list"} <= set(read)
    assert [path for path, command in read.items() if "--json" not in {o for p in command.params for o in p.opts}] == []


def test_registry_show_prints_the_main_fields_and_with_json_everything_recorded(tmp_path, capsys):
    with Registry() as registry:
        registry.push("sst2", write_adapter(tmp_path / "a", manifest={"description": "Sentiment", "labels": ["neg", "pos"]}),
                      method="lora", tags=["prod"], metrics={"accuracy": 0.875})  # fmt: skip
    assert main(["registry", "show", "sst2"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[0] == "sst2@1"
    fields = dict(line.split(maxsplit=1) for line in shown[1:-1])
    assert (fields["method"], fields["tags"], fields["labels"], fields["metrics"]) == (
        "lora",
        "prod",
        "neg, pos",
        "accuracy=0.875",
    )
    assert fields["description"] == "Sentiment" and len(fields["sha256"]) == 64
    assert shown[-1].endswith("--json")

    assert main(["registry", "show", "sst2", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["ref"], record["manifest"]["description"], record["peft_config"]["r"]) == ("sst2@1", "Sentiment", 4)


def test_showing_an_unknown_name_writes_the_whole_command_that_lists_the_names(capsys):
    assert main(["registry", "show", "nope"]) == 1
    err = capsys.readouterr().err
    assert "no adapter named 'nope' exists; run `adapterhub registry list`" in err
