"""Signed adapters on an S3 remote (moto's server on loopback): OpenSSF model-signing with local EC keys.

A trusting remote's fetch, and `serve --remote` through it, refuse every forgery someone who can write the
bucket could make (each written here with boto3, straight to the bucket) and store nothing.
"""

from __future__ import annotations

import json
import stat

import boto3
import pytest
from test_registry_remote_support import add_remote, aws_env, bucket, moto_endpoint  # noqa: F401
from test_registry_support import write_adapter

from adapterhub.cli import main
from adapterhub_registry import CorruptBlobError, DestinationExistsError, Registry, RegistryError
from adapterhub_registry import remote_layout as layout
from adapterhub_registry.keys import SigningKeyError, generate_key_pair, read_public_key, read_signing_key
from adapterhub_registry.remote_config import RemoteConfigs
from adapterhub_registry.remote_signing import SignatureError, sign_entry

pytestmark = pytest.mark.integration  # every test starts (or shares) moto's S3 server


@pytest.fixture
def keys(tmp_path):
    """Two key pairs: `alice` (trusted by the server) and `mallory` (not)."""
    return {name: generate_key_pair(name, tmp_path / "keys") for name in ("alice", "mallory")}


@pytest.fixture
def homes(tmp_path, bucket, moto_endpoint, keys):
    """A publisher's registry and a server's whose remote `origin` trusts alice's key only."""
    publisher, server = Registry(tmp_path / "publisher"), Registry(tmp_path / "server")
    add_remote(publisher, f"s3://{bucket}/team", moto_endpoint)
    RemoteConfigs(server.root).add(
        "origin", f"s3://{bucket}/team", moto_endpoint, trusted_keys=(read_public_key(keys["alice"][1]),)
    )
    publisher.push("sst2", write_adapter(tmp_path / "a", seed=1, manifest={"description": "v1"}), method="lora")
    publisher.push("other", write_adapter(tmp_path / "b", seed=2), method="lora")
    yield publisher, server
    publisher.close()
    server.close()


def forge(remote, key: str, body: bytes) -> None:
    """Overwrite an object of the remote as anyone with write access to the bucket can: boto3, no adapterhub."""
    bucket_name, prefix = remote.config.url.removeprefix("s3://").split("/", 1)
    s3 = boto3.client("s3", endpoint_url=remote.config.endpoint_url)
    s3.put_object(Bucket=bucket_name, Key=f"{prefix}/{key}", Body=body)


def entry_of(remote, ref: str) -> dict:
    name, version = ref.split("@")
    return json.loads(remote.store.read(layout.entry_key(name, int(version))))


def edit_entry(remote, ref: str, **changes) -> None:
    name, version = ref.split("@")
    forge(remote, layout.entry_key(name, int(version)), json.dumps({**entry_of(remote, ref), **changes}).encode())


def test_a_signed_push_is_fetched_and_records_its_signer(homes, keys):
    publisher, server = homes
    pushed = publisher.remote("origin").push("sst2", sign=read_signing_key(keys["alice"][0]))
    fetched = server.remote("origin").fetch("sst2")
    alice = read_signing_key(keys["alice"][0]).fingerprint
    assert (fetched.manifest["remote"]["ref"], fetched.manifest["remote"]["signed_by"]) == (pushed.ref, alice)
    assert fetched.blob_sha256 == publisher.resolve("sst2").blob_sha256
    assert server.remote("origin").fetch("sst2@1") == fetched  # verified again, then the local copy


# What a forger with write access to the bucket does to a remote holding alice's signed sst2@1 and other@1 (the
# publisher's local sst2 has new bytes since), the ref then fetched, and the refusal's words.
FORGERIES = {
    "unsigned entry": (lambda remote, keys: remote.push("sst2"), "sst2@2", "it is not signed"),
    "signed by an untrusted key": (
        lambda remote, keys: remote.push("sst2", sign=read_signing_key(keys["mallory"][0])),
        "sst2@2",
        "it is signed by a key this remote does not trust",
    ),
    "entry changed after signing": (
        lambda remote, keys: edit_entry(remote, "sst2@1", metrics={"accuracy": 0.99}),
        "sst2@1",
        "it was changed after it was signed by [0-9a-f]{16}: its name, version, method, base, metrics or manifest",
    ),
    "config changed after signing": (
        lambda remote, keys: edit_entry(remote, "sst2@1", peft_config_text='{"peft_type": "LORA", "r": 64}'),
        "sst2@1",
        r"it was changed after it was signed .*: its PEFT config \(adapter_config.json\) differs",
    ),
    "a signed version copied to another number": (
        lambda remote, keys: forge(
            remote, layout.entry_key("sst2", 2), json.dumps({**entry_of(remote, "sst2@1"), "version": 2}).encode()
        ),
        "sst2@2",
        "it was changed after it was signed .*: its name, version",
    ),
    "blob swapped for another": (
        lambda remote, keys: edit_entry(
            remote, "sst2@1", **{k: entry_of(remote, "other@1")[k] for k in ("blob_sha256", "size_bytes")}
        ),
        "sst2@1",
        "it was changed after it was signed .*: its blob: the entry names another blob than the one signed",
    ),
    "a signature that is no bundle": (
        lambda remote, keys: edit_entry(remote, "sst2@1", signature="signed, trust me"),
        "sst2@1",
        "its signature is not a model-signing bundle",
    ),
    "another entry's signature": (
        lambda remote, keys: edit_entry(
            remote,
            "sst2@1",
            signature={
                **entry_of(remote, "sst2@1")["signature"],
                "dsseEnvelope": {
                    **entry_of(remote, "sst2@1")["signature"]["dsseEnvelope"],
                    "signatures": entry_of(remote, "other@1")["signature"]["dsseEnvelope"]["signatures"],
                },
            },
        ),
        "sst2@1",
        "its signature does not match what it says was signed",
    ),
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_a_trusting_remote_refuses_a_forgery_and_stores_nothing(homes, keys, forgery, tmp_path):
    publisher, server = homes
    remote = publisher.remote("origin")
    alice = read_signing_key(keys["alice"][0])
    remote.push("sst2", sign=alice)
    remote.push("other", sign=alice)
    publisher.push("sst2", write_adapter(tmp_path / "c", seed=3), method="lora")  # new bytes, for a forger's push
    make, ref, words = FORGERIES[forgery]
    make(remote, keys)
    with pytest.raises(SignatureError, match=f"remote origin .*: refused {ref}: {words}"):
        server.remote("origin").fetch(ref)
    assert server.list(all_versions=True) == []


def test_a_blob_swapped_in_place_is_refused_by_its_signed_digest(homes, keys):
    publisher, server = homes
    remote = publisher.remote("origin")
    remote.push("sst2", sign=read_signing_key(keys["alice"][0]))
    sha = publisher.resolve("sst2").blob_sha256
    data = bytearray(remote.store.read(layout.blob_key(sha)))
    data[-4:] = b"\x00\x00\x80\x3f"  # another tensor value, same size: the signed entry still names the old digest
    forge(remote, layout.blob_key(sha), bytes(data))
    with pytest.raises(CorruptBlobError, match=f"blob blobs/sha256/{sha} of sst2@1 hashes to .*refused"):
        server.remote("origin").fetch("sst2")
    assert server.list(all_versions=True) == []


def test_a_local_copy_fetched_before_the_remote_was_trusted_is_not_served_as_signed(homes, keys, tmp_path):
    publisher, server = homes
    publisher.remote("origin").push("sst2")  # unsigned
    RemoteConfigs(server.root).remove("origin")
    add_remote(server, publisher.remote("origin").config.url, publisher.remote("origin").config.endpoint_url)
    assert server.remote("origin").fetch("sst2").ref == "sst2@1"  # no trust yet: fetched
    RemoteConfigs(server.root).trust("origin", read_public_key(keys["alice"][1]))
    with pytest.raises(SignatureError, match="refused sst2@1: it is not signed"):
        server.remote("origin").fetch("sst2")


def test_signing_push_makes_a_signed_version_of_bytes_already_there_unsigned(homes, keys):
    publisher, server = homes
    remote = publisher.remote("origin")
    assert remote.push("sst2").ref == "sst2@1"
    alice = read_signing_key(keys["alice"][0])
    assert remote.push("sst2", sign=alice).ref == "sst2@2"  # the unsigned @1 is not reused for a signed push
    assert remote.push("sst2", sign=alice).ref == "sst2@2"  # alice's own @2 is
    assert server.remote("origin").fetch("sst2").manifest["remote"]["ref"] == "sst2@2"
    with pytest.raises(SignatureError, match="refused sst2@1: it is not signed"):
        server.remote("origin").fetch("sst2@1")


def test_a_push_to_a_remote_trusted_here_must_be_signed(homes):
    publisher, server = homes
    server.push("mine", write_adapter(server.root.parent / "m"), method="lora")
    with pytest.raises(RegistryError, match=r"push-remote origin mine --sign KEY.pem"):
        server.remote("origin").push("mine")
    assert layout.versions(server.remote("origin").store, "mine") == []


def test_the_cli_signs_trusts_fetches_and_shows_the_signer(cli, tmp_path, bucket, moto_endpoint):
    publisher, server = str(tmp_path / "publisher"), str(tmp_path / "server")
    with Registry(publisher) as registry:
        registry.push("sst2", write_adapter(tmp_path / "a"), method="lora")
    out = cli("registry", "--registry", publisher, "keys", "generate", "alice")
    private, public = tmp_path / "publisher" / "keys" / "alice.pem", tmp_path / "publisher" / "keys" / "alice.pub"
    assert f"--sign {private}" in out and f"remote trust REMOTE {public}" in out
    moved = tmp_path / "elsewhere.pub"
    moved.write_bytes(public.read_bytes())
    url = f"s3://{bucket}/team"
    cli("registry", "--registry", publisher, "remote", "add", "origin", url, "--endpoint-url", moto_endpoint)
    out = cli("registry", "--registry", server, "remote", "add", "origin", url, "--endpoint-url", moto_endpoint,
              "--trust", str(moved))  # fmt: skip
    fingerprint = read_signing_key(private).fingerprint
    assert f"trusts key {fingerprint}" in out
    moved.unlink()  # the trust was copied into the server's config: the file is no longer needed
    out = cli("registry", "--registry", publisher, "push-remote", "origin", "sst2", "--sign", str(private))
    assert out.strip().endswith(f"signed by {fingerprint[:16]})")
    cli("registry", "--registry", server, "fetch", "origin", "sst2")
    shown = cli("registry", "--registry", server, "show", "sst2")
    assert f"signed by      {fingerprint} (verified when fetched from origin)" in shown
    listed = json.loads(cli("registry", "--registry", server, "remote", "list", "--json"))
    assert listed[0]["trusted_keys"] == [fingerprint]
    out = cli("registry", "--registry", server, "remote", "trust", "origin", str(public))
    assert out.startswith(f"remote origin already trusted key {fingerprint}")


def test_the_cli_refuses_a_forged_fetch_naming_the_adapter(cli, capsys, homes, keys):
    publisher, server = homes
    publisher.remote("origin").push("sst2")
    assert main(["registry", "--registry", str(server.root), "fetch", "origin", "sst2"]) == 1
    err = capsys.readouterr().err
    assert "refused sst2@1: it is not signed" in err and "--sign KEY.pem" in err
    assert server.list(all_versions=True) == []


def test_keys_generate_writes_an_owner_only_private_key_and_never_replaces_one(tmp_path):
    private, public = generate_key_pair("ci", tmp_path / "keys")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert stat.S_IMODE(public.stat().st_mode) == 0o600
    before = private.read_bytes()
    with pytest.raises(DestinationExistsError, match="ci.pem and .*ci.pub already exist"):
        generate_key_pair("ci", tmp_path / "keys")
    assert private.read_bytes() == before
    assert read_signing_key(private).public_pem == read_public_key(public)


def test_the_wrong_half_of_a_key_is_named(tmp_path):
    private, public = generate_key_pair("ci", tmp_path)
    with pytest.raises(SigningKeyError, match="that is a public key: sign with the .pem"):
        read_signing_key(public)
    with pytest.raises(SigningKeyError, match="that is a private key: trust the .pub"):
        read_public_key(private)
    with pytest.raises(SigningKeyError, match="cannot read the private key"):
        read_signing_key(tmp_path / "missing.pem")


def test_sign_entry_signs_the_version_it_is_given(tmp_path):
    private, public = generate_key_pair("ci", tmp_path)
    entry = layout.RemoteEntry(
        name="n", version=3, method="lora", base_fingerprint=None, peft_config_text="{}", manifest={}, metrics={},
        blob_sha256="0" * 64, size_bytes=1, created_at=0.0,
    )  # fmt: skip
    signed = sign_entry(entry, read_signing_key(private))
    statement = json.loads(__import__("base64").b64decode(signed.signature["dsseEnvelope"]["payload"]))
    assert sorted(r["name"] for r in statement["predicate"]["resources"]) == [
        "adapter_config.json",
        "adapter_model.safetensors.sha256",
        "adapterhub_entry.json",
    ]
    assert layout.RemoteEntry.from_json(signed.to_json(), layout.entry_key("n", 3)) == signed
    assert "signature" not in json.loads(entry.to_json())  # unsigned entries are written as before


def test_serve_remote_answers_a_forged_adapter_with_the_refusal_and_serves_a_signed_one(tiny_llama, tmp_path, homes,
                                                                                        keys):  # fmt: skip
    from fastapi.testclient import TestClient
    from test_openai_server import push_adapter

    from adapterhub.base import load_base
    from adapterhub.runtime import AdapterPool
    from adapterhub.server import ServerSettings, create_app
    from adapterhub.server.remote_refs import RemoteRefs

    publisher, server = homes
    base = load_base(tiny_llama)
    push_adapter(base, publisher, "good", tmp_path / "good", 1)
    push_adapter(base, publisher, "forged", tmp_path / "forged", 2)
    publisher.remote("origin").push("good", sign=read_signing_key(keys["alice"][0]))
    publisher.remote("origin").push("forged")  # unsigned: written by someone without alice's key
    pool = AdapterPool(base, slots=2, max_rank=4, registry=server)
    body = {"prompt": "the movie was", "max_tokens": 2, "temperature": 0}
    with TestClient(create_app(pool, ServerSettings(model_name="tiny"), remote=RemoteRefs(server, server.remote("origin")))) as client:  # fmt: skip
        assert client.post("/v1/completions", json={**body, "model": "good"}).status_code == 200
        refused = client.post("/v1/completions", json={**body, "model": "forged"})
    pool.close()
    error = refused.json()["error"]
    assert (refused.status_code, error["code"]) == (502, "remote_refused")  # the remote's content is wrong, not the ask
    assert "remote origin" in error["message"] and "refused forged@1: it is not signed" in error["message"]
    assert [r.ref for r in server.list(all_versions=True)] == ["good@1"]


def test_untrusting_the_last_key_turns_the_check_off_and_a_wrong_key_is_named(cli, capsys, tmp_path, keys):
    root = str(tmp_path / "server")
    cli("registry", "--registry", root, "remote", "add", "origin", "file:///srv/adapters",
        "--trust", str(keys["alice"][1]), "--trust", str(keys["mallory"][1]))  # fmt: skip
    alice, mallory = (read_signing_key(keys[k][0]).fingerprint for k in ("alice", "mallory"))
    assert main(["registry", "--registry", root, "remote", "untrust", "origin", "0" * 64]) == 1
    assert f"trusts no key whose fingerprint starts with '{'0' * 64}' (trusted: " in capsys.readouterr().err
    out = cli("registry", "--registry", root, "remote", "untrust", "origin", alice[:12])
    assert out.strip() == f"remote origin no longer trusts key {alice}; 1 trusted key(s) left"
    out = cli("registry", "--registry", root, "remote", "untrust", "origin", str(keys["mallory"][1]))
    assert f"no longer trusts key {mallory}; no trusted key left" in out
    assert RemoteConfigs(tmp_path / "server").get("origin").trusted_keys == ()
