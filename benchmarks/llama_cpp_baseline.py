"""llama.cpp's own server (`llama-server`) as the CPU peer of `adapterhub serve` in the serving benchmarks.

On a CPU, the engine people pick is llama.cpp: it runs SmolLM2's Q4_1 GGUF natively, loads several LoRA adapters at
start and picks one per request. This module is llama.cpp's side of the comparison: finding its server and its LoRA
converter, converting our adapters (PEFT directories, as `Registry.export_peft` writes them) into GGUF LoRAs with
llama.cpp's own `convert_lora_to_gguf.py`, the server's command line, and the request body that selects an adapter
the way llama-server wants it: a per-request `lora` list of ids and scales (adapters not listed get scale 0).

Why llama-server and not llama-cpp-python's `python -m llama_cpp.server`: that server holds one model at a time and
takes one request at a time. A LoRA is fixed when a model is loaded, so 8 adapters are 8 models in its config file,
and every change of adapter between two requests closes one and loads the next from disk (its `LlamaProxy`).
llama-server loads every `--lora` once, runs its slots with continuous batching, and sets the scales per request.

llama.cpp is no pip dependency of the bench: llama-cpp-python's wheel ships the libraries, not `llama-server` nor the
converter. Both come from one llama.cpp source tree, e.g. the one vendored in llama-cpp-python's sdist, with
`llama-server` built by cmake; `LLAMA_CPP_DIR` names the tree (docs/benchmarks.md has the commands). The converter
runs with this Python (torch, transformers, safetensors) and the tree's own `gguf-py`, so the GGUF writer is always
the one the tree's server reads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from benchmarks import loadgen
from benchmarks.suites import BenchmarkError, SuiteUnavailable

SOURCE_ENV = "LLAMA_CPP_DIR"  # a llama.cpp source tree: convert_lora_to_gguf.py, gguf-py/, and (usually) the build
SERVER_ENV = "LLAMA_SERVER"  # the llama-server binary, when it is not under the tree's build/bin nor on PATH
CONVERTER = "convert_lora_to_gguf.py"
SERVER = "llama-server"
HOW_TO = "see docs/benchmarks.md, 'llama.cpp beside us'"


@dataclass(frozen=True)
class LlamaCpp:
    """Where llama.cpp is on this machine: its source tree (the converter and gguf-py) and its server binary."""

    source: Path
    server: Path

    def version(self) -> str:
        """What `llama-server --version` says (its build number and commit), for the report's settings."""
        done = subprocess.run([str(self.server), "--version"], capture_output=True, text=True, timeout=60)
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("version")]
        return lines[0] if lines else "unknown"


def source_tree(environ: Mapping[str, str] | None = None) -> Path:
    """The llama.cpp source tree `LLAMA_CPP_DIR` names (what the LoRA conversion needs); `SuiteUnavailable` saying
    what is missing and where it comes from otherwise, so a run without llama.cpp skips its row."""
    environ = os.environ if environ is None else environ
    source = environ.get(SOURCE_ENV)
    if not source:
        raise SuiteUnavailable(f"llama.cpp's row needs a llama.cpp source tree with {SERVER} built; set {SOURCE_ENV} "
                               f"to it ({HOW_TO})")  # fmt: skip
    tree = Path(source).expanduser()
    if not (tree / CONVERTER).is_file() or not (tree / "gguf-py" / "gguf").is_dir():
        raise SuiteUnavailable(f"{SOURCE_ENV}={source} is not a llama.cpp source tree: it has no {CONVERTER} and "
                               f"gguf-py/ beside it ({HOW_TO})")  # fmt: skip
    return tree


def locate(environ: Mapping[str, str] | None = None) -> LlamaCpp:
    """The source tree (`source_tree`) and the server: `LLAMA_SERVER`, else the tree's build/bin, else PATH."""
    environ = os.environ if environ is None else environ
    tree = source_tree(environ)
    candidates = [environ.get(SERVER_ENV), str(tree / "build" / "bin" / SERVER), shutil.which(SERVER)]
    for candidate in filter(None, candidates):
        path = Path(candidate).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return LlamaCpp(tree, path)
    raise SuiteUnavailable(f"no {SERVER} binary: not in ${SERVER_ENV}, {tree / 'build' / 'bin'} or on PATH; build it in "
                           f"the tree with `cmake --build build --target {SERVER}` ({HOW_TO})")  # fmt: skip


def check_conversion_input(adapter_dir: Path, base_dir: Path) -> dict:
    """What `convert_lora_to_gguf.py` reads, checked before it runs: a PEFT LoRA directory (adapter_config.json with
    peft_type LORA, adapter_model.safetensors) and a base directory with the model's config.json (the converter
    takes the architecture and shapes from it, no weights). Returns the adapter's config; a `BenchmarkError`
    naming what is wrong otherwise (the converter's own failure is a Python traceback deep in its model classes)."""
    config_file, weights = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    if not config_file.is_file() or not weights.is_file():
        raise BenchmarkError(f"{adapter_dir} is not a PEFT adapter directory: {CONVERTER} reads adapter_config.json and "
                             "adapter_model.safetensors from it (`adapterhub registry export-peft` writes both)")  # fmt: skip
    config = json.loads(config_file.read_text())
    if config.get("peft_type") != "LORA" or config.get("use_dora"):
        method = "DoRA" if config.get("use_dora") else config.get("peft_type")
        raise BenchmarkError(f"{adapter_dir} holds a {method} adapter; llama.cpp's server applies plain LoRA only, "
                             "so only LoRA adapters can be converted for it")  # fmt: skip
    base_config = base_dir / "config.json"
    if not base_config.is_file() or not json.loads(base_config.read_text()).get("architectures"):
        raise BenchmarkError(f"{base_dir} has no config.json naming the model's architectures; {CONVERTER} needs the "
                             "base's transformers config (models.transformers_dir gives it for a GGUF)")  # fmt: skip
    return config


def convert_lora(source: Path, adapter_dir: Path, base_dir: Path, out: Path) -> Path:
    """`adapter_dir` (PEFT LoRA) as a float32 GGUF LoRA at `out`, written by llama.cpp's converter: float32 keeps
    the very weights our server runs (no rounding to f16), and llama.cpp applies them as they are."""
    check_conversion_input(adapter_dir, base_dir)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(source / "gguf-py"), os.environ.get("PYTHONPATH")]))}  # fmt: skip
    command = [sys.executable, str(source / CONVERTER), "--base", str(base_dir), "--outtype", "f32",
               "--outfile", str(out), str(adapter_dir)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0 or not out.is_file():
        raise BenchmarkError(f"{CONVERTER} failed on {adapter_dir} (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return out


def server_command(
    llama: LlamaCpp, model: Path, loras: list[Path], port: int, *, threads: int, parallel: int, row_tokens: int
) -> list[str]:
    """llama-server on loopback with every LoRA loaded (`--lora-init-without-apply`: none applied at start; a request
    without `lora` still gets all of them at scale 1, llama-server's default scales, so every timed request names
    its adapter), `parallel` slots of `row_tokens` context each (the rows of our continuous batch, and our longest
    prompt plus answer), `threads` for prefill and decode."""
    command = [str(llama.server), "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
               "--threads", str(threads), "--threads-batch", str(threads), "--parallel", str(parallel),
               "--ctx-size", str(parallel * row_tokens), "--lora-init-without-apply", "--no-webui"]  # fmt: skip
    for lora in loras:
        command += ["--lora", str(lora)]
    return command


def lora_body(adapters: list[str]) -> Callable[[loadgen.PlannedRequest, int], dict]:
    """The load generator's body for llama-server: ours (greedy, `ignore_eos`, streamed with usage) plus `lora`
    selecting the request's adapter by its `--lora` position at scale 1 (llama.cpp multiplies by the alpha / rank
    stored in the GGUF, as peft does). The `model` field stays: llama-server ignores it."""
    ids = {name: i for i, name in enumerate(adapters)}

    def body(planned: loadgen.PlannedRequest, seed: int) -> dict:
        if planned.model not in ids:
            raise BenchmarkError(
                f"request for {planned.model!r}, which is none of llama-server's --lora adapters {adapters}"
            )
        return {**loadgen.request_body(planned, seed), "lora": [{"id": ids[planned.model], "scale": 1.0}]}

    return body
