"""The remotes a local registry knows, like git's: `<root>/remotes.json`, name -> URL, endpoint, trusted keys.

Small and rarely written, so it is a JSON file rewritten whole (temp file + rename, `files.write_atomic`)
under a lock on `remotes.json.lock` (`remote_locks.exclusive`), so two concurrent `remote add`s both land.
A remote's trusted public keys are kept here by content (PEM), not by path: a key file moved or deleted later
cannot silently turn signature checks off (remote_signing.py).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from adapterhub_registry.errors import NotFoundError, RegistryError
from adapterhub_registry.files import write_atomic
from adapterhub_registry.keys import fingerprint
from adapterhub_registry.names import validate_name
from adapterhub_registry.remote_locks import exclusive
from adapterhub_registry.remote_store import check_url

CONFIG_FILE = "remotes.json"


@dataclass(frozen=True)
class RemoteConfig:
    """One configured remote: its name, URL (`s3://...`, `file:///...`), optional S3 endpoint, and the public
    keys (PEM) whose signature every fetch from it requires (none: fetches are not checked for signatures)."""

    name: str
    url: str
    endpoint_url: str | None = None
    trusted_keys: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "trusted_keys", tuple(self.trusted_keys))  # remotes.json holds a list

    def to_dict(self) -> dict[str, str | None | list[str]]:
        """For `remote list --json`: the trusted keys by fingerprint (sha256 of the public key's DER)."""
        return {"name": self.name, "url": self.url, "endpoint_url": self.endpoint_url,
                "trusted_keys": [fingerprint(pem) for pem in self.trusted_keys]}  # fmt: skip


class RemoteConfigs:
    """Reads and edits `<root>/remotes.json`."""

    def __init__(self, root: Path) -> None:
        self.path = root / CONFIG_FILE

    def all(self) -> list[RemoteConfig]:
        return [RemoteConfig(name, **fields) for name, fields in sorted(self._read().items())]

    def get(self, name: str) -> RemoteConfig:
        found = self._read().get(name)
        if found is None:
            known = ", ".join(sorted(self._read())) or "none"
            raise NotFoundError(
                f"no remote named {name!r} (configured: {known}); add it with "
                f"`adapterhub registry remote add {name} s3://bucket/prefix`"
            )
        return RemoteConfig(name, **found)

    def add(
        self, name: str, url: str, endpoint_url: str | None = None, trusted_keys: tuple[str, ...] = ()
    ) -> RemoteConfig:
        """Add remote `name`; `trusted_keys` (PEM public keys, `keys.read_public_key`) make it require signatures."""
        validate_name(name, kind="remote name")
        check_url(url)
        trusted = tuple(dict.fromkeys(trusted_keys))
        with self._editing() as remotes:
            if name in remotes:
                raise RegistryError(
                    f"remote {name!r} already exists ({remotes[name]['url']}); remove it first "
                    f"(`adapterhub registry remote remove {name}`) or choose another name"
                )
            remotes[name] = {"url": url, "endpoint_url": endpoint_url}
            if trusted:  # written only when there are some: an older adapterhub still reads the other remotes
                remotes[name]["trusted_keys"] = list(trusted)
        return RemoteConfig(name, url, endpoint_url, trusted)

    def trust(self, name: str, public_pem: str) -> tuple[RemoteConfig, bool]:
        """Require a signature by one of the keys of remote `name`, `public_pem` among them; returns the remote and
        whether the key is new to it."""
        with self._editing() as remotes:
            if name not in remotes:
                self.get(name)  # raises, naming the configured remotes
            keys = list(remotes[name].get("trusted_keys", []))
            added = public_pem not in keys
            remotes[name]["trusted_keys"] = keys + [public_pem] if added else keys
            return RemoteConfig(name, **remotes[name]), added

    def untrust(self, name: str, key_fingerprint: str) -> tuple[RemoteConfig, str]:
        """Stop trusting the key of remote `name` whose fingerprint is or starts with `key_fingerprint`; returns the
        remote and the key's whole fingerprint. With its last key gone, fetches are no longer checked for signatures."""
        with self._editing() as remotes:
            if name not in remotes:
                self.get(name)  # raises, naming the configured remotes
            keys = list(remotes[name].get("trusted_keys", []))
            found = [pem for pem in keys if fingerprint(pem).startswith(key_fingerprint.lower())]
            if len(found) != 1 or not key_fingerprint:
                trusted = ", ".join(fingerprint(pem) for pem in keys) or "none"
                raise NotFoundError(
                    f"remote {name} trusts {'several keys' if found else 'no key'} whose fingerprint starts with "
                    f"{key_fingerprint!r} (trusted: {trusted}); give one of them (`adapterhub registry remote list "
                    "--json` lists them)"
                )
            keys.remove(found[0])
            if keys:
                remotes[name]["trusted_keys"] = keys
            else:
                remotes[name].pop("trusted_keys", None)
            return RemoteConfig(name, **remotes[name]), fingerprint(found[0])

    def remove(self, name: str) -> None:
        with self._editing() as remotes:
            if remotes.pop(name, None) is None:
                raise NotFoundError(f"no remote named {name!r}; `adapterhub registry remote list` shows them")

    def _read(self) -> dict[str, dict]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            remotes = json.loads(text)["remotes"]
            if not isinstance(remotes, dict):
                raise TypeError("'remotes' is not an object")
            return remotes
        except (ValueError, KeyError, TypeError) as exc:
            raise RegistryError(
                f"{self.path} is damaged ({exc}); fix or delete it, then add the remotes again"
            ) from exc

    @contextlib.contextmanager
    def _editing(self) -> Iterator[dict[str, dict]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(self.path.with_name(CONFIG_FILE + ".lock")):
            remotes = self._read()
            yield remotes
            write_atomic(self.path, json.dumps({"remotes": remotes}, indent=2, sort_keys=True).encode("utf-8"))
