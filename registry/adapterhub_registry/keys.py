"""Signing keys: elliptic-curve key pairs as PEM files, and the fingerprint that names a key everywhere.

`registry keys generate NAME` writes `NAME.pem` (the private key, PKCS#8, owner-only) and `NAME.pub` (the public
key) into `<registry root>/keys/` or a directory of the user's choice; `push-remote --sign NAME.pem` signs with
the first, `remote trust REMOTE NAME.pub` trusts the second. The curves are the ones OpenSSF model-signing
accepts for key signing (P-256, P-384, P-521); P-256 is generated. A key's fingerprint is the sha256 of its
public key in DER (SubjectPublicKeyInfo), as TLS and SSH tools print one: the same for the PEM file, its copy in
`remotes.json` and a fetched adapter's manifest, whatever the line endings of the file it came from.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from adapterhub_registry.errors import DestinationExistsError, RegistryError
from adapterhub_registry.names import validate_name

KEYS_DIR = "keys"
PRIVATE_SUFFIX, PUBLIC_SUFFIX = ".pem", ".pub"
_CURVES = ("secp256r1", "secp384r1", "secp521r1")  # what model-signing's elliptic-key signer and verifier accept


class SigningKeyError(RegistryError):
    """A key file is missing, unreadable, encrypted, or not an elliptic-curve key model-signing can use."""


@dataclass(frozen=True)
class SigningKey:
    """A private key to sign with: where it is (model-signing reads the file) and its public half."""

    path: Path
    public_pem: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_pem)


def keys_dir(registry_root: Path) -> Path:
    """Where `keys generate` writes by default: `<registry root>/keys`."""
    return registry_root / KEYS_DIR


def fingerprint(public_pem: str) -> str:
    """The sha256 (hex) of the public key's DER encoding: the name a key goes by in messages and manifests."""
    key = _public_key(public_pem.encode("utf-8"), "the public key")
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def read_public_key(path: Path | str) -> str:
    """The public key in `path` as canonical PEM text (what `remotes.json` stores); refused unless it is an
    elliptic-curve public key on a curve model-signing verifies."""
    path = Path(path).expanduser()
    return _pem(_public_key(_read(path, "public key"), str(path)))


def read_signing_key(path: Path | str) -> SigningKey:
    """The private key in `path`, checked now so a push fails before it uploads anything."""
    path = Path(path).expanduser()
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise SigningKeyError(
            f"{path} is encrypted; adapterhub signs with an unencrypted key kept owner-only (chmod 600), "
            "such as one from `adapterhub registry keys generate NAME`"
        ) from None
    except ValueError as exc:
        hint = " (that is a public key: sign with the .pem beside it)" if b"PUBLIC KEY" in data else ""
        raise SigningKeyError(f"{path} is not a PEM private key{hint}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in _CURVES:
        raise SigningKeyError(f"{path} is not an elliptic-curve key on P-256, P-384 or P-521, which model-signing needs; "
                        "make one with `adapterhub registry keys generate NAME`")  # fmt: skip
    return SigningKey(path.absolute(), _pem(key.public_key()))


def generate_key_pair(name: str, directory: Path) -> tuple[Path, Path]:
    """Write `NAME.pem` (private) and `NAME.pub` (public) into `directory` (made owner-only if new), both owner-only
    (mode 0600, as the issue asks: hand the public key out by copying it, deliberately); never replaces a file.
    Returns the two paths."""
    validate_name(name, kind="key name")
    private, public = directory / f"{name}{PRIVATE_SUFFIX}", directory / f"{name}{PUBLIC_SUFFIX}"
    existing = [str(p) for p in (private, public) if p.exists()]
    if existing:
        raise DestinationExistsError(
            f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; a key is never replaced "
            "(what it signed would no longer verify): choose another NAME or --out directory",
            existing,
        )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _create(private, private_pem, 0o600)  # created with its mode: never readable by others, even for an instant
    try:
        _create(public, _pem(key.public_key()).encode("ascii"), 0o600)
    except BaseException:
        private.unlink(missing_ok=True)  # half a pair is no use: leave nothing
        raise
    return private, public


def _create(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise DestinationExistsError(
            f"{path} appeared while the key was written; nothing replaced", [str(path)]
        ) from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)  # the umask may have taken bits from `mode` on open; set exactly what was asked


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def _public_key(data: bytes, where: str) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        hint = " (that is a private key: trust the .pub beside it, never share the .pem)" if b"PRIVATE" in data else ""
        raise SigningKeyError(f"{where} is not a PEM public key{hint}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVES:
        raise SigningKeyError(f"{where} is not an elliptic-curve public key on P-256, P-384 or P-521, which model-signing "
                        "verifies; make a pair with `adapterhub registry keys generate NAME`")  # fmt: skip
    return key


def _pem(key: ec.EllipticCurvePublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


__all__ = [
    "SigningKeyError",
    "SigningKey",
    "fingerprint",
    "generate_key_pair",
    "keys_dir",
    "read_public_key",
    "read_signing_key",
]
