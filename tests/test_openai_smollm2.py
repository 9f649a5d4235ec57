"""Slow: ``adapterhub serve`` on SmolLM2-135M-Instruct (GGUF) with two LoRAs, driven by the official openai client:
greedy chat and completion streams for two adapters at once equal each request served alone, with the model's
own chat template."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from live_server import LiveServer
from shipped_assets import smollm2_gguf
from test_openai_server import push_adapter

from adapterhub.base import load_base
from adapterhub.runtime import AdapterPool, GenerationSettings, generate
from adapterhub.server import ServerSettings, create_app
from adapterhub_registry import Registry

pytestmark = [pytest.mark.slow, pytest.mark.integration]  # SmolLM2 behind uvicorn
TOKENS = 12


def test_two_adapters_stream_at_once_and_each_equals_its_request_alone(tmp_path):
    registry = Registry(tmp_path / "registry")
    base = load_base(smollm2_gguf())
    push_adapter(base, registry, "smol-a", tmp_path, 1, target_modules="q_proj,v_proj")
    push_adapter(base, registry, "smol-b", tmp_path, 2)
    pool = AdapterPool(base, slots=2, max_rank=4, registry=registry)
    messages = [{"role": "user", "content": "Name a colour."}]
    chat_prompt = base.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    chat_ids = base.tokenizer(chat_prompt, add_special_tokens=False)["input_ids"]
    settings = GenerationSettings(max_new_tokens=TOKENS, min_new_tokens=TOKENS)
    expected = {
        "smol-a": generate(pool, [chat_ids], ["smol-a@1"], settings)[0].text,
        "smol-b": generate(pool, ["The capital of France is"], ["smol-b@1"], settings)[0].text,
    }
    server = LiveServer(create_app(pool, ServerSettings(model_name="smollm2", max_new_tokens=64)))
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)

        def chat() -> str:
            stream = client.chat.completions.create(model="smol-a", messages=messages, max_tokens=TOKENS, temperature=0,
                                                    stream=True, extra_body={"min_tokens": TOKENS})  # fmt: skip
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

        def complete() -> str:
            stream = client.completions.create(model="smol-b", prompt="The capital of France is", max_tokens=TOKENS,
                                               temperature=0, stream=True, extra_body={"min_tokens": TOKENS})  # fmt: skip
            return "".join(c.choices[0].text for c in stream if c.choices)

        with ThreadPoolExecutor(2) as threads:
            answers = [threads.submit(chat), threads.submit(complete)]
            assert answers[0].result() == expected["smol-a"]
            assert answers[1].result() == expected["smol-b"]
        assert {"smollm2", "smol-a", "smol-b"} <= {m.id for m in client.models.list().data}
    finally:
        server.stop()
        pool.close()
