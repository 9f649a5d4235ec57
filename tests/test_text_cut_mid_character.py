"""An answer cut by ``max_tokens`` inside a multi-byte character ends at the last whole character, whole and
streamed, on the continuous batch and on the static batcher, with ``finish_reason: "length"``.

The base is a tiny Llama made into a lookup table of next tokens (its attention and MLP write nothing, each
embedding is one-hot, the LM head maps a token to the next), with a byte-level BPE tokenizer without merges: one
token per byte, so "é" is two tokens and "😀" four. Greedy decoding after "go" writes "k é😀!" then ends."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
import torch
from live_server import LiveServer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from adapterhub.base import load_base
from adapterhub.runtime import AdapterPool
from adapterhub.server import ServerSettings, create_app
from adapterhub_registry import Registry

pytestmark = pytest.mark.integration
ANSWER = "k é😀!"
SPECIALS = ["<s>", "</s>", "<pad>"]


def make_byte_table_llama(directory: Path, prompt_end: str, answer: str) -> Path:
    """A Llama whose greedy continuation of anything ending in ``prompt_end`` is ``answer``, then end of text."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 characters byte-level BPE writes bytes as
    byte_chars = sorted(alphabet)
    vocab = {c: i for i, c in enumerate(SPECIALS + byte_chars)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    chain = tokenizer(prompt_end[-1] + answer, add_special_tokens=False)["input_ids"]
    assert len(chain) == len(set(chain)), "each token must lead to one next token"
    size = 264  # >= the vocabulary, a multiple of 4 heads of even size (rotary embeddings)
    config = LlamaConfig(hidden_size=size, intermediate_size=8, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=size, max_position_embeddings=64, tie_word_embeddings=False,
                         bos_token_id=0, eos_token_id=1, pad_token_id=2)  # fmt: skip
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                parameter.zero_()  # the residual stream stays the token's own embedding
        model.model.embed_tokens.weight.copy_(torch.eye(size))
        table = torch.zeros(size, size)
        table[1, :] = 1  # every token not on the chain leads to end of text
        for token, following in zip(chain, chain[1:] + [1]):
            table[:, token] = 0
            table[following, token] = 1
        model.lm_head.weight.copy_(table)  # (next token, current token)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module", params=["continuous", "static"])
def client(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("bytes")
    base = load_base(make_byte_table_llama(root / "model", "go", ANSWER))
    base.tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    pool = AdapterPool(base, slots=1, max_rank=4, registry=Registry(root / "registry"))
    server = LiveServer(create_app(pool, ServerSettings(model_name="tiny", batching=request.param)))
    yield openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    server.stop()
    pool.close()


def _answers(client: openai.OpenAI, max_tokens: int) -> dict[str, tuple[str, str]]:
    """(text, finish_reason) of a completion and a chat completion, each whole and streamed."""
    asked = {"max_tokens": max_tokens, "temperature": 0}
    whole = client.completions.create(model="tiny", prompt="go", **asked).choices[0]
    messages = [{"role": "user", "content": "go"}]
    chat = client.chat.completions.create(model="tiny", messages=messages, **asked).choices[0]
    streamed = list(client.completions.create(model="tiny", prompt="go", stream=True, **asked))
    streamed_chat = list(client.chat.completions.create(model="tiny", messages=messages, stream=True, **asked))
    return {
        "completion": (whole.text, whole.finish_reason),
        "chat": (chat.message.content, chat.finish_reason),
        "streamed completion": ("".join(c.choices[0].text for c in streamed), streamed[-1].choices[0].finish_reason),
        "streamed chat": ("".join(c.choices[0].delta.content or "" for c in streamed_chat),
                          streamed_chat[-1].choices[0].finish_reason),
    }  # fmt: skip


def test_the_model_writes_the_answer_whole_when_not_cut(client):
    answers = _answers(client, max_tokens=20)
    assert set(answers.values()) == {(ANSWER, "stop")}


@pytest.mark.parametrize(("max_tokens", "text"), [(3, "k "), (4, "k é"), (5, "k é"), (7, "k é"), (8, "k é😀")])
def test_an_answer_cut_inside_a_character_ends_at_the_last_whole_one(client, max_tokens, text):
    answers = _answers(client, max_tokens)
    assert set(answers.values()) == {(text, "length")}, answers


def test_generate_cut_inside_a_character_ends_at_the_last_whole_one(client):
    url = str(client.base_url).removesuffix("/v1/")
    answer = httpx.post(url + "/generate", json={"prompt": "go", "max_new_tokens": 7}).json()
    assert (answer["text"], answer["tokens"]) == ("k é", 7)
