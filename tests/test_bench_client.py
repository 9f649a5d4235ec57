"""A benchmark client no one here wrote, guidellm, runs a short synthetic load against the server on loopback and
finishes without errors: the OpenAI-compatible API is what load generators for vLLM expect (streamed completions
with ``stream_options``, ``ignore_eos``, usage in the last chunk).

guidellm runs as its CLI in a subprocess, as its users run it. It makes its synthetic prompts with a tokenizer of
its own choosing: MiniLM's WordPiece tokenizer from a test dependency's package (the tiny Llama's word-level one
decodes guidellm's corpus to nothing), so nothing is downloaded; the server encodes the text with its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from live_server import LiveServer
from test_openai_server import push_adapter

from adapterhub.base import load_base
from adapterhub.packaged import PACKAGED
from adapterhub.runtime import AdapterPool
from adapterhub.server import ServerSettings, create_app
from adapterhub_registry import Registry

KEY = "sk-bench"
REQUESTS, OUTPUT_TOKENS = 6, 8


def guidellm() -> str:
    found = shutil.which("guidellm") or str(Path(sys.executable).with_name("guidellm"))
    if not Path(found).exists():
        pytest.fail("guidellm is a test dependency: pip install -e '.[test]'")
    return found


@pytest.mark.integration
def test_guidellm_runs_a_short_synthetic_load_without_errors(tiny_llama, tmp_path):
    registry = Registry(tmp_path / "registry")
    base = load_base(tiny_llama)
    push_adapter(base, registry, "a", tmp_path, 1, target_modules="q_proj,v_proj")
    pool = AdapterPool(base, slots=2, max_rank=4, registry=registry)
    server = LiveServer(create_app(pool, ServerSettings(max_new_tokens=32, model_name="tiny", api_key=KEY)))
    result = tmp_path / "guidellm.json"
    command = [
        guidellm(), "run",
        "--backend", f"kind=openai_http,target={server.url},model=a,request_format=/v1/completions,api_key={KEY}",
        "--profile", "kind=concurrent,streams=2",
        "--constraint", f"kind=max_requests,count={REQUESTS}",
        "--data", f"kind=synthetic_text,prompt_tokens=16,output_tokens={OUTPUT_TOKENS}",
        "--tokenizer", f"kind=huggingface_auto,model={PACKAGED['minilm'].path()}",
        "--output", f"kind=json,path={result}",
        "--disable-console-interactive",
    ]  # fmt: skip
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    try:
        run = subprocess.run(command, cwd=tmp_path, env={**os.environ, **offline}, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    finally:
        server.stop()
        pool.close()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    [benchmark] = json.loads(result.read_text())["benchmarks"]
    requests = benchmark["requests"]
    assert not requests["errored"] and not requests["incomplete"]
    assert len(requests["successful"]) == REQUESTS
    assert all(r["output_tokens"] == OUTPUT_TOKENS and r["prompt_tokens"] > 0 for r in requests["successful"])
    assert all(r["output"] for r in requests["successful"])
