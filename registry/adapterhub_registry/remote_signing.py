"""Signed remote entries: OpenSSF model-signing v1.0 bundles made with an elliptic-curve key (no network).

`push-remote --sign KEY.pem` signs each version it writes (`sign_entry`); a remote configured with trusted
public keys (`remote add --trust`, `remote trust`) has every fetch check the signature first (`verify_entry`)
and refuse, storing nothing, an entry that is unsigned, signed by a key it does not trust, or changed since.

What is signed. model-signing signs a directory of files, so the entry is laid out as one (`lay_out`):

    adapter_config.json               the entry's PEFT config, byte for byte
    adapterhub_entry.json             name, version, method, base fingerprint, manifest, metrics, blob size
    adapter_model.safetensors.sha256  the blob's sha256, as `sha256sum` writes it

and each file's sha256 goes into the signed in-toto statement. The blob is named by its digest instead of being
included: a fetch checks the signature before it downloads the blob (a forged entry costs no transfer), signing
costs the same at any adapter size, and the downloaded bytes are tied to the signed digest by the sha256 check
every fetch already makes, so a blob swapped for another (same size or not) is refused either way. Anyone can
check a signature with model-signing's own CLI on the directory `lay_out` writes.

Where the signature is kept: inside the entry (`RemoteEntry.signature`, the bundle's JSON). An entry is written
with one conditional create, so it is never visible without its signature, a push that loses the race for a
version number leaves no stray signature behind, and a fetch reads nothing more. The signature is made for each
version number a push tries (`remote_layout.add_entry(seal=...)`), so the version is signed too: a signed
`name@1` copied to `name@7` by someone who can write the bucket does not verify.

Not signed: tags, and which version is a name's newest (a writer of the bucket can point `prod` back at an older
signed version), nor `created_at`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from adapterhub_registry.adapter_dir import CONFIG_FILE, WEIGHTS_FILE
from adapterhub_registry.errors import RegistryError
from adapterhub_registry.keys import SigningKey, fingerprint

if TYPE_CHECKING:
    from adapterhub_registry.remote_layout import RemoteEntry

ENTRY_FILE = "adapterhub_entry.json"
DIGEST_FILE = WEIGHTS_FILE + ".sha256"
_WHAT_CHANGED = {
    CONFIG_FILE: "its PEFT config (adapter_config.json)",
    ENTRY_FILE: "its name, version, method, base, metrics or manifest",
    DIGEST_FILE: "its blob: the entry names another blob than the one signed (a blob swapped for another)",
}


class SignatureError(RegistryError):
    """A trusting remote's entry is unsigned, signed by a key it does not trust, or changed after signing."""


def lay_out(entry: RemoteEntry, directory: Path) -> Path:
    """Write the files that are signed for `entry` (see the module docstring) into `directory`; returns it."""
    directory.mkdir(parents=True)
    (directory / CONFIG_FILE).write_text(entry.peft_config_text, encoding="utf-8")
    described = {
        "name": entry.name, "version": entry.version, "method": entry.method,
        "base_fingerprint": entry.base_fingerprint, "manifest": entry.manifest, "metrics": entry.metrics,
        "size_bytes": entry.size_bytes,
    }  # fmt: skip
    (directory / ENTRY_FILE).write_text(json.dumps(described, sort_keys=True, indent=1), encoding="utf-8")
    (directory / DIGEST_FILE).write_text(f"{entry.blob_sha256}  {WEIGHTS_FILE}\n", encoding="utf-8")
    return directory


def sign_entry(entry: RemoteEntry, key: SigningKey) -> RemoteEntry:
    """`entry` with `signature` set: a model-signing bundle over its laid-out files, signed with `key`."""
    from model_signing import signing  # imports sigstore's stack (~0.5 s): only where something is signed

    with tempfile.TemporaryDirectory(prefix="adapterhub-sign-") as temp:
        model, bundle = lay_out(entry, Path(temp) / "adapter"), Path(temp) / "signature.json"
        signing.Config().use_elliptic_key_signer(private_key=key.path).set_hashing_config(_hashing()).sign(
            model, bundle
        )
        return dataclasses.replace(entry, signature=json.loads(bundle.read_text(encoding="utf-8")))


def verify_entry(entry: RemoteEntry, trusted_keys: Sequence[str], *, where: str) -> str:
    """The fingerprint of the trusted key that signed exactly this `entry` (PEM public keys in `trusted_keys`);
    `SignatureError` naming `entry.ref` on `where` (the remote) and why, otherwise."""
    from cryptography.exceptions import InvalidSignature
    from model_signing import verifying

    refused = f"{where}: refused {entry.ref}"
    if entry.signature is None:
        raise SignatureError(
            f"{refused}: it is not signed, and this remote takes only adapters signed by a key it trusts "
            f"({_names(trusted_keys)}); nothing was stored. Its publisher pushes it again signed "
            f"(`adapterhub registry push-remote REMOTE {entry.name} --sign KEY.pem`)"
        )
    if not isinstance(entry.signature, dict):
        raise SignatureError(f"{refused}: its signature is not a model-signing bundle; nothing was stored")
    signer = _signing_key(entry.signature, trusted_keys)
    if signer is None:
        raise SignatureError(
            f"{refused}: it is signed by a key this remote does not trust (trusted: {_names(trusted_keys)}); "
            "nothing was stored. If you trust that key, add it: `adapterhub registry remote trust REMOTE PUB.pem`"
        )
    with tempfile.TemporaryDirectory(prefix="adapterhub-verify-") as temp:
        model, bundle, public = lay_out(entry, Path(temp) / "adapter"), Path(temp) / "sig.json", Path(temp) / "key"
        bundle.write_text(json.dumps(entry.signature), encoding="utf-8")
        public.write_text(signer, encoding="utf-8")
        try:
            verifying.Config().use_elliptic_key_verifier(public_key=public).set_hashing_config(_hashing()).verify(
                model, bundle
            )
        except InvalidSignature:
            raise SignatureError(
                f"{refused}: its signature does not match what it says was signed (key {fingerprint(signer)[:16]}): "
                "the signature was altered; nothing was stored"
            ) from None
        except Exception as exc:  # model-signing raises ValueError, protobuf or JSON errors: every one refuses
            changed = _changed_files(entry.signature, model)
            if not changed:
                raise SignatureError(
                    f"{refused}: its signature cannot be checked ({exc}); nothing was stored"
                ) from None
            raise SignatureError(
                f"{refused}: it was changed after it was signed by {fingerprint(signer)[:16]}: "
                f"{'; '.join(_WHAT_CHANGED[f] for f in changed)} differ{'s' if len(changed) == 1 else ''} from what "
                "was signed; nothing was stored"
            ) from None
    return fingerprint(signer)


def signed_by(entry: RemoteEntry, key: SigningKey) -> bool:
    """Whether `entry` carries a valid signature of `key` (a push reuses such an entry instead of a new version)."""
    try:
        verify_entry(entry, [key.public_pem], where="")
    except SignatureError:
        return False
    return True


def _hashing():
    from model_signing import hashing

    # sha256 per file, the model-signing default for a directory; one worker: three small files
    return hashing.Config().use_file_serialization(hashing_algorithm="sha256", max_workers=1)


def _names(trusted_keys: Sequence[str]) -> str:
    return ", ".join(fingerprint(pem)[:16] for pem in trusted_keys)


def _signing_key(bundle: dict, trusted_keys: Sequence[str]) -> str | None:
    """The trusted key the bundle says signed it: model-signing writes the sha256 of the signer's PEM as a hint."""
    material = bundle.get("verificationMaterial")
    key = material.get("publicKey") if isinstance(material, dict) else None
    hint = key.get("hint") if isinstance(key, dict) else None
    for pem in trusted_keys:
        if hint == hashlib.sha256(pem.encode("utf-8")).hexdigest():
            return pem
    return None


def _changed_files(bundle: dict, model: Path) -> list[str]:
    """The laid-out files whose sha256 differs from the one the bundle's statement lists (read after model-signing
    checked the signature: its message prints digests as bytes, this names the files)."""
    try:
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        signed = {r["name"]: r["digest"] for r in statement["predicate"]["resources"]}
    except (KeyError, TypeError, ValueError):
        return []
    return [f.name for f in sorted(model.iterdir()) if signed.get(f.name) != hashlib.sha256(f.read_bytes()).hexdigest()]


__all__ = ["DIGEST_FILE", "ENTRY_FILE", "SignatureError", "lay_out", "sign_entry", "signed_by", "verify_entry"]
