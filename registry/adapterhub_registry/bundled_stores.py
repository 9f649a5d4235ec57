"""The remote stores that ship with adapterhub-registry (S3 and file), by URL scheme.

A module of its own because the stores import `remote_store` (their interface); listing them there would make the
interface import its implementations.
"""

from __future__ import annotations

from adapterhub_registry.remote_file import FILE_STORE
from adapterhub_registry.remote_s3 import S3_STORE
from adapterhub_registry.remote_store import RemoteStoreSpec


def bundled_stores() -> dict[str, RemoteStoreSpec]:
    """The S3 and file stores, by scheme."""
    return {spec.name: spec for spec in (S3_STORE, FILE_STORE)}
