"""The plain-peft side of the `methods` benchmark: each method as a peft user writes it, without adapterhub.

`transformers` `from_pretrained`, `peft.get_peft_model(<Method>Config(...))` with the settings adapterhub's
plugin maps its options to (written out here, not taken from the plugins), and the textbook torch loop:
AdamW, linear warm-up (6 % of the steps) and decay, gradient clipping at 1.0, AdaLoRA's
`update_and_allocate` after each step. Full fine-tuning and the linear probe are the same loop on the model
without peft. Classifier metrics come from scikit-learn, perplexity from the model's own loss, so nothing of
adapterhub's training or evaluation is reused; only the rows (adapterhub's split) are shared, so that the two
sides train on the same examples in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

WARMUP_RATIO, GRAD_CLIP = 0.06, 1.0
NO_PEFT = ("full fine-tuning", "linear probe")
PEFT_METHODS = ("lora", "adalora", "ia3", "prompt_tuning", "prefix_tuning")  # peft has no bottleneck adapters


def peft_config(method: str, options: dict, steps: int, tokenizer_path: str | None):
    """The peft config of ``method`` (one of ``PEFT_METHODS``): a sequence classifier, or a causal LM for
    prefix tuning."""
    from peft import AdaLoraConfig, IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType

    cls = TaskType.SEQ_CLS
    if method == "lora":
        return LoraConfig(task_type=cls, r=options["r"], lora_alpha=16, lora_dropout=0.05, target_modules="all-linear")
    if method == "adalora":
        return AdaLoraConfig(task_type=cls, init_r=options["init_r"], target_r=options["target_r"], lora_alpha=16,
                             lora_dropout=0.05, total_step=steps, tinit=int(0.1 * steps), tfinal=int(0.2 * steps),
                             deltaT=1, beta1=0.85, beta2=0.85, orth_reg_weight=0.5)  # fmt: skip
    if method == "ia3":
        return IA3Config(task_type=cls)
    if method == "prompt_tuning":
        return PromptTuningConfig(task_type=cls, num_virtual_tokens=options["num_virtual_tokens"], prompt_tuning_init="TEXT",
                                  prompt_tuning_init_text=options["init_text"], tokenizer_name_or_path=tokenizer_path)  # fmt: skip
    if method == "prefix_tuning":
        return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=options["num_virtual_tokens"])
    raise ValueError(f"peft has no method {method!r}")


def has_peft_side(method: str) -> bool:
    return method in NO_PEFT or method in PEFT_METHODS


def classifier(model_dir: str, labels: list[str], method: str, options: dict, steps: int) -> torch.nn.Module:
    """The model the plain side trains: peft-wrapped, or with all weights / only the head trainable."""
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)}
    )  # fmt: skip
    if method == "full fine-tuning":
        return model
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if method == "linear probe":
        for parameter in model.classifier.parameters():
            parameter.requires_grad_(True)
        return model
    return get_peft_model(model, peft_config(method, options, steps, model_dir))


def causal_lm(model_dir: str, options: dict) -> torch.nn.Module:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    return get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir), peft_config("prefix_tuning", options, 0, None)
    )


def text_batches(tokenizer, texts: list[str], labels: list[int], batch_size: int, max_length: int,
                 order: list[int] | None = None) -> Iterator[dict]:  # fmt: skip
    order = list(range(len(texts))) if order is None else order
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        encoded = tokenizer(
            [texts[i] for i in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        yield {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
               "labels": torch.tensor([labels[i] for i in rows])}  # fmt: skip


def block_batches(
    blocks: list[list[int]], pad_id: int, batch_size: int, order: list[int] | None = None
) -> Iterator[dict]:
    """Token blocks padded to the longest in the batch; padding is masked out of the loss (-100)."""
    order = list(range(len(blocks))) if order is None else order
    for start in range(0, len(order), batch_size):
        rows = [blocks[i] for i in order[start : start + batch_size]]
        width = max(map(len, rows))
        ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in rows])
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
        yield {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


@dataclass
class PlainLoop:
    """The textbook loop: one AdamW over the trainable weights, linear schedule, clipping, an optional hook."""

    model: torch.nn.Module
    learning_rate: float
    steps: int
    after_step: Callable[[int], None] | None = None  # e.g. AdaLoRA's rank reallocation

    def __post_init__(self) -> None:
        from transformers import get_linear_schedule_with_warmup

        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=self.learning_rate, weight_decay=0.0)
        warmup = max(1, int(self.steps * WARMUP_RATIO))
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, warmup, self.steps)
        self.done = 0

    def step(self, batch: dict) -> float:
        self.model.train()
        loss = self.model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, GRAD_CLIP)
        self.optimizer.step()
        self.scheduler.step()
        self.done += 1
        if self.after_step is not None:
            self.after_step(self.done)
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss)


def adalora_hook(model) -> Callable[[int], None] | None:
    """peft's AdaLoRA rank schedule, called after each optimizer step as peft's docs show; None for others."""
    update = getattr(getattr(model, "base_model", None), "update_and_allocate", None)
    return update if callable(update) else None


def epoch_orders(n: int, batch_size: int, epochs: int, seed: int) -> Iterator[list[int]]:
    """The rows of every step: a fresh seeded permutation per epoch."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]


@torch.no_grad()
def classifier_metrics(model: torch.nn.Module, batches: Iterator[dict]) -> dict[str, float]:
    """Accuracy, macro-F1 and one-vs-rest ROC-AUC (scikit-learn) over the held-out batches."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    model.eval()
    logits, references = [], []
    for batch in batches:
        logits.append(model(**batch).logits.float())
        references += batch["labels"].tolist()
    scores = torch.softmax(torch.cat(logits), -1).numpy()
    predictions = scores.argmax(-1)
    return {"accuracy": float(accuracy_score(references, predictions)),
            "f1_macro": float(f1_score(references, predictions, average="macro")),
            "roc_auc": float(roc_auc_score(references, scores, multi_class="ovr"))}  # fmt: skip


@torch.no_grad()
def perplexity(model: torch.nn.Module, batches: Iterator[dict]) -> dict[str, float]:
    """Mean loss per predicted token over the held-out blocks, and its exponential."""
    model.eval()
    loss_sum = tokens = 0.0
    for batch in batches:
        n = int((batch["labels"][:, 1:] != -100).sum())
        loss_sum += float(model(**batch).loss) * n
        tokens += n
    loss = loss_sum / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def saved_size(model: torch.nn.Module, directory) -> int:
    """Bytes of what the user keeps: `save_pretrained`'s safetensors (peft), or the trained weights (no peft)."""
    from pathlib import Path

    from safetensors.torch import save_file

    directory = Path(directory)
    if hasattr(model, "peft_config"):
        model.save_pretrained(directory)
        return (directory / "adapter_model.safetensors").stat().st_size
    trained = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(trained, directory / "weights.safetensors")
    return (directory / "weights.safetensors").stat().st_size
