"""vLLM-compatible ``POST /v1/load_lora_adapter`` and ``POST /v1/unload_lora_adapter``.

``lora_name`` becomes a name requests may give as ``model``; ``lora_path`` is what it serves:

- a registry ref (``name``, ``name@3``, ``name:tag``), resolved now to its immutable ``name@version``;
- a PEFT directory, only when the server was started with ``--allow-lora-dir DIR`` and the path, symlinks
  resolved, lies inside DIR: it is imported into the registry under ``lora_name`` first (checksummed, versioned),
  so the server only ever serves registry entries. Any other path is a 403, answered before anything at that
  path is opened: a client cannot make the server read files it was not meant to.

The adapter is loaded into the pool on the model thread (registry read, integrity and base checks), so a
broken or foreign adapter is refused here, not on its first request. Answers are vLLM's plain-text lines.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from adapterhub.server.handlers import on_worker
from adapterhub.server.http_errors import HTTPError
from adapterhub.server.openai_schemas import LoraLoadRequest, LoraUnloadRequest
from adapterhub.server.state import AppState, StateDep
from adapterhub_registry import InvalidNameError, NotFoundError

lora_endpoints = APIRouter()


@lora_endpoints.post("/v1/load_lora_adapter")
async def load_lora_adapter(body: LoraLoadRequest, state: StateDep) -> PlainTextResponse:
    name = body.lora_name
    if name in state.lora_names or name == state.settings.model_name:
        raise HTTPError(400, f"The lora adapter '{name}' has already been loaded; unload it first or pick another lora_name",
                        param="lora_name")  # fmt: skip
    if _is_path(body.lora_path):
        directory = _allowed_directory(state, body.lora_path)
        key = await on_worker(state, lambda: _import(state, directory, name))
    else:
        try:
            key = (await state.record_of(body.lora_path)).ref
        except (NotFoundError, InvalidNameError) as exc:
            raise HTTPError(
                404, f"lora_path {body.lora_path!r} is not an adapter in the registry ({exc})", param="lora_path"
            ) from None
    await on_worker(state, lambda: state.pool.load(key))
    state.lora_names[name] = key
    return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully (serving {key}).")


@lora_endpoints.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(body: LoraUnloadRequest, state: StateDep) -> PlainTextResponse:
    key = state.lora_names.pop(body.lora_name, None)
    if key is None:
        raise HTTPError(404, f"The lora adapter '{body.lora_name}' is not loaded; loaded: {sorted(state.lora_names) or 'none'}",
                        param="lora_name")  # fmt: skip
    if key not in state.lora_names.values():  # no other name serves it: free its memory (requests may still fetch it)
        await on_worker(
            state, lambda: state.pool.unload(key) if key in {a["adapter"] for a in state.pool.describe()} else None
        )
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")


def _is_path(value: str) -> bool:
    """Registry names never contain a path separator or start with '.' or '~'; paths to directories do."""
    return "/" in value or os.sep in value or value.startswith((".", "~"))


def _allowed_directory(state: AppState, value: str) -> Path:
    allowed = state.settings.allow_lora_dir
    if allowed is None:
        raise HTTPError(403, "loading adapters from a directory is disabled on this server; push the adapter to the "
                             "registry and give its ref, or start the server with --allow-lora-dir DIR", param="lora_path")  # fmt: skip
    root = Path(allowed).resolve()
    candidate = (root / Path(value).expanduser()).resolve()  # a relative path is taken inside DIR
    if not candidate.is_relative_to(root):
        raise HTTPError(403, f"lora_path {value!r} is outside the directory this server may read adapters from "
                             f"({root}); copy it there", param="lora_path")  # fmt: skip
    return candidate


def _import(state: AppState, directory: Path, name: str) -> str:
    from adapterhub.peft_import import import_peft

    return import_peft(state.pool.registry, directory, name).ref
