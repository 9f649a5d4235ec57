"""Evaluate a model: accuracy, macro-F1 and one-vs-rest ROC-AUC for classifiers (through `evaluate` metric
modules shipped inside the package, loaded by local path so nothing is fetched from a hub), and mean
token loss / perplexity for causal LMs."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Iterable

import torch

METRICS_DIR = Path(__file__).parent / "metrics"


@functools.lru_cache(maxsize=None)
def load_metric(name: str):
    """An `evaluate` metric from our shipped modules (``accuracy``, ``f1``, ``roc_auc``)."""
    import evaluate

    return evaluate.load(str(METRICS_DIR / name))


def classification_metrics(logits: torch.Tensor, references: list[int]) -> dict[str, float]:
    """Accuracy, macro-F1 and ROC-AUC (one-vs-rest over softmax probabilities) for ``(n, classes)`` logits."""
    predictions = logits.argmax(-1).tolist()
    metrics = {
        "accuracy": load_metric("accuracy").compute(predictions=predictions, references=references)["accuracy"],
        "f1_macro": load_metric("f1").compute(predictions=predictions, references=references, average="macro")["f1"],
    }
    present = sorted(set(references))
    if len(present) == logits.shape[-1] and len(present) > 1:  # AUC is undefined when a class never occurs
        scores = torch.softmax(logits.float(), -1).tolist()
        metrics["roc_auc"] = load_metric("roc_auc").compute(prediction_scores=scores, references=references)["roc_auc"]
    return metrics


@torch.no_grad()
def evaluate_batches(model: torch.nn.Module, batches: Iterable[dict], task: str) -> dict[str, float]:
    """Run ``model`` over ``batches`` in eval mode and compute the task's metrics."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, references, loss_sum, tokens = [], [], 0.0, 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        output = model(**batch)
        if task == "seq-cls":
            logits.append(output.logits.float().cpu())
            references.extend(batch["labels"].tolist())
        else:
            n = int((batch["labels"][:, 1:] != -100).sum())  # tokens predicted (the first has no target)
            loss_sum += float(output.loss) * n
            tokens += n
    model.train(was_training)
    if task == "seq-cls":
        return classification_metrics(torch.cat(logits), references)
    loss = loss_sum / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
