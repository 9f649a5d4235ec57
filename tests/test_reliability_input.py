"""Untrusted input: nothing is ever unpickled, malformed safetensors and hostile names are refused, and
export/pull never write outside the target directory.

Already covered elsewhere, not repeated here: a `.bin`-only directory and the basic malformed headers
(test_registry_safety.py), a PEFT config targeting modules the base lacks
(test_peft_interop.py::test_import_refuses_an_adapter_whose_targets_the_base_lacks).
"""

from __future__ import annotations

import ast
import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from test_registry_support import LORA_CONFIG, adapter, blob_files, registry, write_adapter  # noqa: F401  (fixtures)

import adapterhub
import adapterhub_registry
from adapterhub import adapters
from adapterhub.base import load_base
from adapterhub.cli import main
from adapterhub.errors import AdapterHubError
from adapterhub.manifest import Manifest
from adapterhub_registry import InvalidNameError, RegistryError, UnsafeFileError
from adapterhub_registry.names import parse_ref, validate_name

REPO = Path(__file__).resolve().parent.parent
# (module, function) pairs that deserialize arbitrary Python objects.
UNPICKLERS = {
    ("torch", "load"),
    ("pickle", "load"),
    ("pickle", "loads"),
    ("pickle", "Unpickler"),
    ("dill", "load"),
    ("dill", "loads"),
    ("joblib", "load"),
    ("cloudpickle", "load"),
    ("cloudpickle", "loads"),
    ("marshal", "loads"),
    ("shelve", "open"),
    ("torch.serialization", "load"),
}


def _package_sources() -> list[Path]:
    roots = [
        Path(adapterhub.__file__).parent,
        Path(adapterhub_registry.__file__).parent,
        *sorted((REPO / "plugins").glob("*")),
    ]
    return sorted(p for root in roots for p in root.rglob("*.py") if "tests" not in p.parts)


def _unpickling_calls(path: Path) -> list[str]:
    """`torch.load(...)`, `pickle.loads(...)`, `from pickle import load` ... in one file, as 'file:line what'."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and isinstance(node.value, (ast.Name, ast.Attribute)):
            owner = ast.unparse(node.value)
            if (owner, node.attr) in UNPICKLERS:
                found.append(f"{path}:{node.lineno} {owner}.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [
                f"{path}:{node.lineno} from {node.module} import {a.name}"
                for a in node.names
                if (node.module, a.name) in UNPICKLERS
            ]
        elif isinstance(node, ast.keyword) and node.arg == "allow_pickle":
            found.append(f"{path}:{node.lineno} allow_pickle=")
    return found


def test_no_package_source_can_unpickle():
    sources = _package_sources()
    assert len(sources) > 20  # the core, the registry and the bundled plugins were all found
    assert [call for path in sources for call in _unpickling_calls(path)] == []


def test_the_source_scan_does_find_unpickling_calls(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import torch, pickle\nfrom pickle import loads\ntorch.load('x')\npickle.Unpickler(f)\n")
    assert [c.split(" ", 1)[1] for c in _unpickling_calls(sample)] == [
        "from pickle import loads",
        "torch.load",
        "pickle.Unpickler",
    ]


class _Bomb:
    """Unpickling this creates `marker`: proof that something ran pickle on untrusted data."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize(
    "file_name", ["adapter_model.bin", "adapter_model.pt", "weights.pth", "adapter.pkl", "model.ckpt"]
)
def test_pickle_weights_are_refused_by_push_import_and_load_without_being_opened(
    tmp_path, tiny_llama, file_name, capsys
):
    directory = tmp_path / "pickled"
    directory.mkdir()
    (directory / "adapter_config.json").write_text(json.dumps(LORA_CONFIG))
    marker = tmp_path / "unpickled"
    (directory / file_name).write_bytes(pickle.dumps(_Bomb(marker)))

    with pytest.raises(UnsafeFileError, match="pickle files are refused"):
        adapterhub_registry.Registry(tmp_path / "registry").push("a", directory, method="lora")
    assert main(["registry", "import-peft", str(directory), "a", "--base", str(tiny_llama)]) == 1
    assert "pickle files are refused" in capsys.readouterr().err
    with pytest.raises(AdapterHubError, match="pickle files are refused"):
        adapters.load_adapter_dir(load_base(tiny_llama), directory)
    assert not marker.exists()


def test_a_pickle_beside_the_safetensors_file_is_ignored_not_stored(registry, adapter, tmp_path):
    marker = tmp_path / "unpickled"
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps(_Bomb(marker)))
    record = registry.push("a", adapter, method="lora")
    registry.export_peft("a", tmp_path / "export")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert record.size_bytes == (adapter / "adapter_model.safetensors").stat().st_size
    assert not marker.exists()


def _safetensors(header: dict, data: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def _raw_header(text: bytes, data: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text + data


# Cases beyond test_registry_safety.MALFORMED: each breaks one more rule of the format.
MORE_MALFORMED = {
    "negative dimension": (
        _safetensors({"w": {"dtype": "F32", "shape": [-1, 2], "data_offsets": [0, 8]}}, bytes(8)),
        "invalid shape",
    ),
    "float dimension": (
        _safetensors({"w": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, bytes(8)),
        "invalid shape",
    ),
    "bool dimension": (
        _safetensors({"w": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, bytes(4)),
        "invalid shape",
    ),
    "lower-case dtype": (
        _safetensors({"w": {"dtype": "f32", "shape": [1], "data_offsets": [0, 4]}}, bytes(4)),
        "unknown dtype",
    ),
    "dtype wider than the data": (
        _safetensors({"w": {"dtype": "F64", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)),
        "needs 16",
    ),
    "reversed offsets": (_safetensors({"w": {"dtype": "U8", "shape": [0], "data_offsets": [4, 0]}}, bytes(4)), "span"),
    "gap before a tensor": (
        _safetensors({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)),
        "unused bytes",
    ),
    "huge shape, tiny data": (
        _safetensors({"w": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 4]}}, bytes(4)),
        "needs",
    ),
    "duplicate tensor names": (
        _raw_header(
            b'{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
            bytes(1),
        ),
        "duplicate",
    ),
    "header is a list": (_raw_header(b"[1, 2]", b""), "must be a JSON object"),
    "metadata not strings": (
        _safetensors(
            {"__metadata__": {"step": 3}, "w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, bytes(1)
        ),
        "__metadata__",
    ),
    "entry not an object": (_safetensors({"w": "F32"}, b""), "must be an object"),
    "header length over 100 MB": (struct.pack("<Q", 200_000_000) + bytes(16), "beyond the file size"),
}


@pytest.mark.parametrize("case", MORE_MALFORMED, ids=list(MORE_MALFORMED))
def test_push_refuses_safetensors_that_lie_about_shape_dtype_or_size(registry, adapter, case):
    content, message = MORE_MALFORMED[case]
    (adapter / "adapter_model.safetensors").write_bytes(content)
    with pytest.raises(UnsafeFileError, match=message):
        registry.push("a", adapter, method="lora")
    assert registry.list() == [] and blob_files(registry) == []


def test_tensors_of_the_wrong_shape_for_the_base_are_refused_with_the_tensor_named(tiny_llama, tmp_path):
    base = load_base(tiny_llama)
    adapters.save_adapter(adapters.attach(base, "lora"), tmp_path / "a", Manifest())
    files, tensors = adapters.read_adapter(tmp_path / "a")
    config = files.peft_config
    key = sorted(tensors)[0]
    tensors[key] = torch.zeros(tensors[key].shape[0], tensors[key].shape[1] + 3)
    with pytest.raises(AdapterHubError, match=r"does not fit this base .*size mismatch for .*lora_A"):
        adapters.load_adapter(load_base(tiny_llama), config, tensors, label="wrong-shape")


HOSTILE = [
    "../escape",
    "a/b",
    "a\\b",
    "/etc/passwd",
    "C:\\x",
    "x\x00y",
    "a\n",
    ".",
    ".hidden",
    "..",
    "ｆｕｌｌ",
    "٣",
    "x" * 129,
]


@pytest.mark.parametrize("bad", HOSTILE)
def test_every_entry_point_refuses_hostile_names(registry, adapter, tmp_path, bad):
    registry.push("ok", adapter, method="lora")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(InvalidNameError):
        validate_name(bad)
    for ref in (bad, f"{bad}@1", f"ok:{bad}"):
        with pytest.raises(InvalidNameError):
            parse_ref(ref)
    calls = [
        lambda: registry.push(bad, adapter, method="lora"), lambda: registry.push("ok", adapter, method="lora", tags=[bad]),
        lambda: registry.pull(bad, tmp_path / "out"), lambda: registry.export_peft(bad, tmp_path / "out"),
        lambda: registry.tag("ok@1", bad), lambda: registry.untag(bad, "t"), lambda: registry.untag("ok", bad),
        lambda: registry.delete(bad), lambda: registry.set_metrics(bad, {}), lambda: registry.list(name=bad),
        lambda: registry.list(tag=bad),
    ]  # fmt: skip
    for call in calls:
        with pytest.raises(InvalidNameError):
            call()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert [r.ref for r in registry.list(all_versions=True)] == ["ok@1"]


def test_hostile_names_are_refused_by_the_cli(registry, adapter, capsys):
    registry.push("ok", adapter, method="lora")
    root = str(registry.root)
    for args in (
        ["show", "../ok"],
        ["tag", "ok@1", "../../x"],
        ["delete", "/etc", "--yes"],
        ["pull", "ok/../ok", "out"],
    ):
        assert main(["registry", "--root", root, *args]) == 1
        assert "invalid adapter" in capsys.readouterr().err


def _outside_state(directory: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in directory.rglob("*") if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize("operation", ["export_peft", "pull"])
@pytest.mark.parametrize("file_name", ["adapter_config.json", "adapter_model.safetensors", "adapterhub.json"])
def test_export_and_pull_replace_planted_symlinks_instead_of_writing_through_them(
    registry, adapter, tmp_path, operation, file_name
):
    registry.push("a", adapter, method="lora")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep me")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / file_name).symlink_to(outside / "victim")
    (dest / "dangling-target").symlink_to(outside / "would-be-created")
    before = _outside_state(outside)
    if operation == "export_peft":
        registry.export_peft("a", dest, overwrite=True)
    else:
        registry.pull("a", dest)
    assert _outside_state(outside) == before and not (outside / "would-be-created").exists()
    written = {p.name for p in dest.iterdir() if not p.is_symlink()}
    assert written == {"adapter_config.json", "adapter_model.safetensors"} | (
        {"adapterhub.json"} if operation == "pull" else set()
    )


def test_export_refuses_planted_symlinks_without_overwrite(registry, adapter, tmp_path):
    registry.push("a", adapter, method="lora")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "adapter_model.safetensors").symlink_to(tmp_path / "nowhere")
    with pytest.raises(RegistryError, match="already exist"):
        registry.export_peft("a", dest)
    assert not (tmp_path / "nowhere").exists()


def test_a_damaged_index_row_cannot_point_a_read_outside_the_blob_store(registry, adapter, tmp_path):
    registry.push("a", adapter, method="lora")
    secret = tmp_path / "secret"
    secret.write_bytes(b"not yours")
    with registry._index.write() as writer:
        writer._conn.execute("UPDATE adapters SET blob_sha256 = ?", ("../../../secret",))
    with pytest.raises(adapterhub_registry.CorruptBlobError, match="not a sha256 hex digest"):
        registry.load("a")
    assert "not a sha256" in dict(registry.verify().corrupt)["a@1"]
