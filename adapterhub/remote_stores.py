"""The core's built-in plugin: the remote registry stores adapterhub ships (S3 and file).

They come through the same ``adapterhub_remote_stores`` hook as a third-party store (GCS, Azure, ...), so
``adapterhub plugins`` shows them beside the others and a plugin claiming ``s3`` too is reported as a conflict
instead of silently replacing the bundled one. ``plugins.load_plugins`` registers this module by name.
"""

from __future__ import annotations

import adapterhub


@adapterhub.hookimpl
def adapterhub_remote_stores() -> list:
    from adapterhub_registry.bundled_stores import bundled_stores

    return list(bundled_stores().values())
