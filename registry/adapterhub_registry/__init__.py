"""adapterhub-registry: a local, content-addressed, crash-safe store of PEFT adapters.

Adapters are pushed from PEFT directories (adapter_config.json + adapter_model.safetensors, plus an optional
adapterhub.json manifest), stored once per distinct content under `blobs/sha256/`, and indexed in SQLite by
name, version and tag. The adapterhub core and CLI use it through `Registry`.
"""

from adapterhub_registry.errors import (
    CorruptBlobError,
    DestinationExistsError,
    InvalidNameError,
    NotFoundError,
    RegistryError,
    UnsafeFileError,
)
from adapterhub_registry.records import AdapterRecord, VerifyReport
from adapterhub_registry.registry import Registry, default_root

__all__ = [
    "AdapterRecord",
    "CorruptBlobError",
    "DestinationExistsError",
    "InvalidNameError",
    "NotFoundError",
    "Registry",
    "RegistryError",
    "UnsafeFileError",
    "VerifyReport",
    "default_root",
]
__version__ = "0.1.0"
