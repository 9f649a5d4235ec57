"""Load the frozen, optionally quantized base model that adapters attach to.

Called by training, evaluation and (later) the runtime. A base is a local transformers model directory or a
GGUF file; nothing is downloaded. Quantization is delegated to a quantizer plugin, which returns the
``from_pretrained`` arguments (bitsandbytes NF4 / int8 in the bundled plugin).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers import logging as transformers_logging

from adapterhub import packaged, plugins
from adapterhub.deprecation import renamed_attribute
from adapterhub.errors import AdapterHubError, OptionError
from adapterhub.fingerprint import content_hash, fingerprint, weight_files
from adapterhub.model_tasks import LOAD_DEFAULT, SEQ_CLS
from adapterhub.model_tasks import model_task as model_task_named
from adapterhub.quantized_forward import use_nf4_kernel

log = logging.getLogger(__name__)


@dataclass
class Base:
    """A loaded, frozen base model with the facts adapters record about it."""

    model: torch.nn.Module
    tokenizer: object
    model_task: str  # adapterhub.model_tasks: what the head computes
    source: Path
    gguf_file: str | None
    quantization: str | None
    fingerprint: dict
    labels: list[str] = field(default_factory=list)
    given: str | None = None  # the packaged name or the absolute path it was loaded from: a user can load it again

    # plugins written against plugin API 1.0 read ``base.task`` in build_config
    task = renamed_attribute[str]("model_task", since="1.1", removed_in="1.3")

    @property
    def fingerprint_id(self) -> str:
        return self.fingerprint["id"]

    def describe(self) -> dict:
        """What an adapter records about the base it was trained on."""
        return {
            "fingerprint": self.fingerprint_id,
            "model_type": self.fingerprint["model_type"],
            "shape": self.fingerprint["shape"],
            "source": self.source.name if self.gguf_file is None else self.gguf_file,
            "quantization": self.quantization,
            "given": self.given,
            "architecture": next(iter(getattr(self.model.config, "architectures", None) or []), None),
        }


def resolve_source(path: str | os.PathLike) -> tuple[Path, str | None]:
    """``(model_dir, gguf_file_name_or_None)`` for a model directory, a ``.gguf`` file, a directory holding one, or
    a packaged name (``minilm``, ``smollm2``: ``adapterhub.packaged``), which every base flag reaches through here."""
    path = packaged.resolve(path, packaged.BASE)
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if not path.is_dir():
        raise AdapterHubError(
            f"base model {str(path)!r} not found: pass a local model directory, a .gguf file, or a packaged name: "
            f"{packaged.help_names(packaged.BASE)}."
        )
    if (path / "config.json").is_file():
        return path, None
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if len(ggufs) == 1:
        return path, ggufs[0]
    found = ", ".join(ggufs) if ggufs else "neither config.json nor a .gguf file"
    raise AdapterHubError(
        f"{str(path)!r} is not a model directory ({found} found): pass a transformers model directory "
        f"(with config.json) or the path of one .gguf file."
    )


def cache_root() -> Path:
    """Where derived files live: ``$ADAPTERHUB_CACHE``, else ``$ADAPTERHUB_HOME/cache``."""
    from adapterhub_registry import default_root

    return Path(os.environ.get("ADAPTERHUB_CACHE") or default_root().parent / "cache").expanduser()


def _gguf_cache_dir(content_sha256: str) -> Path:
    return cache_root() / "gguf" / content_sha256[:16]


def dequantized_gguf_dir(source: Path, gguf_file: str, content_sha256: str, identity: dict | None = None) -> Path:
    """The GGUF base dequantized once into a cached transformers directory (float32 safetensors and tokenizer).

    Every GGUF base loads from there: reading a GGUF through transformers dequantizes every tensor and rebuilds
    the tokenizer from its vocabulary on each load (SmolLM2-135M: ~50 s here; the cached directory loads in a
    few seconds), and bitsandbytes cannot quantize while transformers reads GGUF. ``identity`` (the fingerprint
    of the GGUF as shipped) is stored beside it, so a later load needs neither the GGUF's config nor its weights.
    """
    target = _gguf_cache_dir(content_sha256)
    if (target / "config.json").is_file():
        if identity is not None and not (target / GGUF_IDENTITY).is_file():  # converted by an older version
            (target / GGUF_IDENTITY).write_text(json.dumps(identity, sort_keys=True))
        return target
    log.info("dequantizing %s once into %s", gguf_file, target)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    # The weights are plain float tensors by now; transformers still marks the model "gguf-quantized"
    # and refuses to save it, so drop that marker before writing.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if identity is not None:
        (staging / GGUF_IDENTITY).write_text(json.dumps(identity, sort_keys=True))
    try:
        os.replace(staging, target)
    except OSError:  # another process finished the same conversion first: use theirs
        shutil.rmtree(staging, ignore_errors=True)
    return target


GGUF_IDENTITY = "adapterhub-gguf-fingerprint.json"


def _gguf_identity(source: Path, gguf_file: str) -> tuple[dict, Path | None]:
    """The GGUF's fingerprint and its cached directory when one exists (then the GGUF itself is only hashed)."""
    files = weight_files(source, gguf_file)
    cached = _gguf_cache_dir(content_hash(files))
    if (cached / GGUF_IDENTITY).is_file() and (cached / "config.json").is_file():
        return json.loads((cached / GGUF_IDENTITY).read_text()), cached
    return fingerprint(AutoConfig.from_pretrained(source, gguf_file=gguf_file), files), None


def _quantization_kwargs(quantize: str | None, dtype: torch.dtype) -> dict:
    if quantize is None:
        return {}
    spec = plugins.catalog().quantizer(quantize)
    reason = spec.unavailable()
    if reason:
        raise AdapterHubError(f"quantizer {quantize!r} cannot run here: {reason}")
    return spec.load_kwargs(dtype)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_placement(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """The device and dtype that ``--device`` / ``--dtype`` name (see ``adapterhub.settings.Placement``).

    auto: this process's GPU when there is one (``cuda:$LOCAL_RANK`` under torchrun), else the CPU; bfloat16 on a
    GPU that supports it, else float32. A GPU asked for where none is visible is refused, not silently replaced.
    """
    if device == "auto":
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise OptionError(f"--device {device}: no CUDA GPU is visible to this torch ({torch.__version__}); "
                              "pass --device cpu or --device auto")  # fmt: skip
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise OptionError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s), "
                              f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")  # fmt: skip
    placed = torch.device(device)
    if dtype == "auto":
        gpu_bf16 = placed.type == "cuda" and torch.cuda.is_bf16_supported()
        return placed, torch.bfloat16 if gpu_bf16 else torch.float32
    return placed, DTYPES[dtype]


@contextlib.contextmanager
def _quiet_transformers():
    previous = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(previous)


def load_base(
    path: str | os.PathLike,
    *,
    model_task: str = LOAD_DEFAULT,
    quantize: str | None = None,
    dtype: torch.dtype = torch.float32,
    labels: list[str] | None = None,
    device: torch.device | str | None = None,
) -> Base:
    """Load a local model for ``model_task``, quantized through the ``quantize`` plugin if given, with every weight frozen.

    ``labels`` (sequence classification) sets the number of classes and their names. ``device`` places the base
    there (default: the CPU, or the GPU a quantizer needs) before any adapter is attached, so that a method's
    kernel dispatch at attach time sees the real device and dtype.
    """
    task = model_task_named(model_task)
    if task is SEQ_CLS and not labels:
        raise OptionError("sequence classification needs the list of labels (e.g. from the training data)")
    source, gguf_file = resolve_source(path)
    if gguf_file:
        identity, _ = _gguf_identity(source, gguf_file)
    else:
        identity = fingerprint(AutoConfig.from_pretrained(source), weight_files(source, None))

    load_from, load_gguf = source, gguf_file
    kwargs: dict = {"dtype": dtype, **_quantization_kwargs(quantize, dtype)}
    if gguf_file:  # the fingerprint stays the GGUF's own: adapters record the base as shipped
        load_from, load_gguf = dequantized_gguf_dir(source, gguf_file, identity["content_sha256"], identity), None
    if quantize:
        # under torchrun every rank quantizes onto its own GPU
        gpu = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        placed = str(device) if device is not None else gpu if torch.cuda.is_available() else "cpu"
        kwargs["device_map"] = kwargs.get("device_map") or placed
    if load_gguf:
        kwargs["gguf_file"] = load_gguf
    if task is SEQ_CLS:
        kwargs.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
    tokenizer = AutoTokenizer.from_pretrained(load_from, **({"gguf_file": load_gguf} if load_gguf else {}))
    with _quiet_transformers():  # a fresh classification head is expected: the adapter trains and saves it
        model = task.model_class().from_pretrained(load_from, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if device is not None and not quantize:
        model.to(device)
    model.eval()
    if quantize:
        use_nf4_kernel(model, dtype)  # a plugin's NF4 kernel, where one supports this device and dtype
    log.debug("loaded base %s (%s)", identity["id"], json.dumps(identity["shape"]))
    return Base(model, tokenizer, task.name, source, gguf_file, quantize, identity, list(labels or []),
                given=packaged.as_given(path, packaged.BASE))  # fmt: skip
