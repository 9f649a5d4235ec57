"""`adapterhub registry remote|push-remote|fetch|list --remote|...` end to end, and remote stores as plugins."""

from __future__ import annotations

import types

import pytest
from test_registry_remote_support import aws_env, bucket, moto_endpoint  # noqa: F401
from test_registry_support import write_adapter

import adapterhub
from adapterhub import plugins
from adapterhub.cli import main
from adapterhub_registry import Registry
from adapterhub_registry.remote_store import RemoteStoreSpec


@pytest.mark.integration
def test_cli_shares_an_adapter_between_two_registries_through_s3(cli, cli_json, tmp_path, bucket, moto_endpoint):
    trainer, server = str(tmp_path / "trainer"), str(tmp_path / "server")
    with Registry(trainer) as registry:
        local = registry.push(
            "sst2", write_adapter(tmp_path / "a", manifest={"description": "Sentiment"}), method="lora"
        )
    for root in (trainer, server):
        out = cli("registry", "--registry", root, "remote", "add", "origin", f"s3://{bucket}/team",
                  "--endpoint-url", moto_endpoint)  # fmt: skip
        assert out.strip() == f"added remote origin -> s3://{bucket}/team (endpoint {moto_endpoint})"
    assert cli_json("registry", "--registry", trainer, "remote", "list", "--json") == [
        {"name": "origin", "url": f"s3://{bucket}/team", "endpoint_url": moto_endpoint, "trusted_keys": []}
    ]
    pushed = cli_json("registry", "--registry", trainer, "push-remote", "origin", "sst2", "--tag", "prod", "--json")
    assert (pushed["ref"], pushed["tags"], pushed["blob_sha256"]) == ("sst2@1", ["prod"], local.blob_sha256)

    listed = cli_json("registry", "--registry", server, "list", "--remote", "origin", "--json")
    assert [(r["ref"], r["tags"]) for r in listed] == [("sst2@1", ["prod"])]
    assert [
        r["ref"] for r in cli_json("registry", "--registry", server, "search", "senti", "--remote", "origin", "--json")
    ] == ["sst2@1"]
    assert cli_json("registry", "--registry", server, "list", "--json") == []
    out = cli("registry", "--registry", server, "fetch", "origin", "sst2:prod")
    assert out.strip() == f"fetched origin sst2@1 as sst2@1 (sha256 {local.blob_sha256[:12]})"
    shown = cli_json("registry", "--registry", server, "show", "sst2", "--json")
    origin = shown["manifest"]["remote"]
    assert (origin["name"], origin["url"], origin["ref"], origin["version"], origin["sha256"]) == (
        "origin",
        f"s3://{bucket}/team",
        "sst2@1",
        1,
        local.blob_sha256,
    )
    assert shown["blob_sha256"] == local.blob_sha256

    assert (
        cli("registry", "--registry", server, "tag", "--remote", "origin", "sst2@1", "stable").strip()
        == "stable -> sst2@1"
    )
    shown = cli_json("registry", "--registry", trainer, "show", "--remote", "origin", "sst2:stable", "--json")
    assert shown["tags"] == [
        "prod",
        "stable",
    ]
    assert cli("registry", "--registry", server, "remote", "remove", "origin").strip() == "removed remote origin"


def test_cli_names_an_unknown_remote_and_how_to_add_it(tmp_path, capsys):
    assert main(["registry", "--registry", str(tmp_path / "r"), "list", "--remote", "origin"]) != 0
    assert (
        "no remote named 'origin' (configured: none); add it with `adapterhub registry remote add origin"
        in capsys.readouterr().err
    )


def test_s3_and_file_stores_are_contributed_by_the_builtin_plugin():
    catalog = plugins.catalog()
    assert {scheme: c.plugin for scheme, c in catalog.remote_stores.items()} == {
        "s3": "adapterhub",
        "file": "adapterhub",
    }
    assert catalog.contributions_of("adapterhub")["remote_stores"] == ["file", "s3"]


def test_a_plugin_adds_a_scheme_and_a_second_s3_is_reported_as_a_conflict():
    fake = types.ModuleType("fake_stores")

    @adapterhub.hookimpl
    def adapterhub_remote_stores():
        return [RemoteStoreSpec("gs", "Google Cloud Storage", lambda url, endpoint: None),
                RemoteStoreSpec("s3", "another S3", lambda url, endpoint: None)]  # fmt: skip

    fake.adapterhub_remote_stores = adapterhub_remote_stores
    pm, infos = plugins.load_plugins()
    pm.register(fake, name="fake_stores")
    catalog = plugins.build_catalog(pm, infos)
    assert sorted(catalog.remote_store_specs()) == ["file", "gs"]
    assert catalog.conflicts[("remote store", "s3")] == ["adapterhub", "fake_stores"]
