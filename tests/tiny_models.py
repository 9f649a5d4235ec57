"""Tiny random models and a word-level tokenizer, saved to a directory like a real local model.

Tests load them through the same ``load_base`` path as real models; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

WORDS = (
    "the a movie film great good love awesome happy fun bad awful hate terrible sad boring "
    "is was it this that and but not very so i you we they car cars drive road fast slow"
).split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>"]


def _tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", bos_token="<s>", eos_token="</s>",
    )  # fmt: skip


VOCAB_SIZE = len(SPECIALS) + len(WORDS)


def make_tiny_llama(directory: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=VOCAB_SIZE, max_position_embeddings=128, pad_token_id=0, bos_token_id=5, eos_token_id=6,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(directory)
    _tokenizer().save_pretrained(directory)
    return directory


def make_tiny_bert(directory: Path, seed: int = 0, dropout: float = 0.1) -> Path:
    """``dropout=0`` gives a deterministic model (e.g. to compare one process with several)."""
    torch.manual_seed(seed)
    config = BertConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=VOCAB_SIZE, max_position_embeddings=128, pad_token_id=0,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )  # fmt: skip
    BertModel(config).save_pretrained(directory)
    _tokenizer().save_pretrained(directory)
    return directory


def poison_embeddings(directory: Path, words: list[str] | None) -> Path:
    """Make the embedding rows of ``words`` (all rows when None) NaN in a saved tiny model: a real model file
    whose loss turns NaN exactly for batches holding those words."""
    from safetensors.torch import load_file, save_file

    weights = load_file(directory / "model.safetensors")
    name = next(k for k in weights if "word_embeddings" in k or "embed_tokens" in k)
    rows = [len(SPECIALS) + WORDS.index(w) for w in words] if words else slice(None)
    weights[name][rows] = float("nan")
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    return directory
