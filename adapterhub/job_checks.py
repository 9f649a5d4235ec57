"""The checks of a ``train`` or ``eval`` job that need no model: method options, and the data file (there, readable
in its encoding and, for a classifier, with its columns and known labels).

A base takes 10-20 s to load, and torch, transformers and peft seconds to import; these checks take neither. The
CLI runs them before it imports the jobs (``workflow``), and the jobs run the same functions before they load the
base, so a mistake made from Python is caught before the load too. Torch-free: the plugin catalog, the options
dataclasses and ``adapterhub.data`` are all it reads; the rules themselves stay where they are written
(``options.build_options``, ``data.parse_classification``).
"""

from __future__ import annotations

from typing import Any

from adapterhub import plugins
from adapterhub.data import DataFile, parse_classification, read_data_file
from adapterhub.manifest import Manifest
from adapterhub.model_tasks import SEQ_CLS
from adapterhub.options import build_options
from adapterhub.settings import DataSpec


def method_options(method: str, values: dict[str, Any] | None = None) -> Any:
    """The options dataclass of ``method`` filled from ``values`` (validated, with clear errors)."""
    spec = plugins.catalog().method(method)
    return build_options(spec.options, values or {}, owner=f"method {method!r}")


def checked_data(spec: DataSpec, model_task: str, label_names: list[str] | None = None) -> DataFile:
    """The job's data file, read once and checked as the job reads it: for a classifier (``seq-cls``) its text and
    label columns, and with ``label_names`` (an adapter's) no label outside them."""
    source = read_data_file(spec.path, spec.encoding)
    if model_task == SEQ_CLS.name:
        parse_classification(source, text_column=spec.text_column, label_column=spec.label_column,
                             dedupe=spec.dedupe, label_names=label_names)  # fmt: skip
    return source


def recorded_data_spec(manifest: dict, path: str, **overrides: Any) -> DataSpec:
    """The DataSpec an adapter was trained with (``manifest`` as the registry stores it), pointed at ``path``
    (a local copy of the same file)."""
    recorded = {
        k: v for k, v in (Manifest.from_dict(manifest).data or {}).items() if k in DataSpec.__dataclass_fields__
    }
    recorded.update({k: v for k, v in overrides.items() if v is not None})
    recorded["path"] = path
    return DataSpec(**recorded)
