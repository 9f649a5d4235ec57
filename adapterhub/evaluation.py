"""Evaluate a model: accuracy, macro-F1 and one-vs-rest ROC-AUC for classifiers (through `evaluate` metric
modules shipped inside the package, loaded by local path so nothing is fetched from a hub), and mean
token loss / perplexity for causal LMs."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from pathlib import Path

import torch

METRICS_DIR = Path(__file__).parent / "evaluate_metrics"  # the `evaluate` metric scripts we ship (no hub download)


@functools.cache
def load_metric(name: str):
    """An `evaluate` metric from our shipped modules (``accuracy``, ``f1``, ``roc_auc``), kept in memory: the
    predictions of one evaluation are small, and writing them to an Arrow cache file first doubled each compute."""
    import evaluate

    return evaluate.load(str(METRICS_DIR / name), keep_in_memory=True)


def classification_metrics(logits: torch.Tensor, references: list[int]) -> dict[str, float]:
    """Accuracy, macro-F1 and ROC-AUC (one-vs-rest over softmax probabilities) for ``(n, classes)`` logits.

    Rows with NaN/inf logits (a model that diverged on some inputs) count as wrong predictions with
    uniform scores, and their number is reported as ``non_finite_outputs``, instead of failing the run.
    """
    broken = ~torch.isfinite(logits).all(-1)
    logits = logits.float().masked_fill(broken[:, None], 0.0)
    predictions = logits.argmax(-1)
    wrong = (torch.tensor(references) + 1) % logits.shape[-1]
    predictions = torch.where(broken, wrong, predictions).tolist()
    metrics = {
        "accuracy": load_metric("accuracy").compute(predictions=predictions, references=references)["accuracy"],
        "f1_macro": load_metric("f1").compute(predictions=predictions, references=references, average="macro")["f1"],
    }
    present = sorted(set(references))
    if len(present) == logits.shape[-1] and len(present) > 1:  # AUC is undefined when a class never occurs
        scores = torch.softmax(logits, -1).tolist()
        metrics["roc_auc"] = load_metric("roc_auc").compute(prediction_scores=scores, references=references)["roc_auc"]
    if broken.any():
        metrics["non_finite_outputs"] = int(broken.sum())
    return metrics


@torch.no_grad()
def _collect(model: torch.nn.Module, batches: Iterable[dict], model_task: str) -> tuple:
    """What the metrics need from this process's batches: (logits, references) or (loss sum, tokens)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, references, loss_sum, tokens = [], [], 0.0, 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        output = model(**batch)
        if model_task == "seq-cls":
            logits.append(output.logits.float().cpu())
            references.extend(batch["labels"].tolist())
        else:
            n = int((batch["labels"][:, 1:] != -100).sum())  # tokens predicted (the first has no target)
            loss_sum += float(output.loss) * n
            tokens += n
    model.train(was_training)
    return (logits, references) if model_task == "seq-cls" else (loss_sum, tokens)


def evaluate_batches(
    model: torch.nn.Module, batches: Iterable[dict], model_task: str, distributed=None
) -> dict[str, float]:
    """Run ``model`` over ``batches`` in eval mode and compute the model task's metrics.

    In a data-parallel run (``distributed``: an ``adapterhub.distributed.Distributed``) each rank evaluates
    every N-th batch and the pieces are gathered, so every rank gets the metrics of the whole held-out set.
    """
    if distributed is not None and distributed.active:
        mine = (b for i, b in enumerate(batches) if i % distributed.world_size == distributed.rank)
        parts = distributed.gather(_collect(model, mine, model_task))
    else:
        parts = [_collect(model, batches, model_task)]
    if model_task == "seq-cls":
        logits = [chunk for part in parts for chunk in part[0]]
        return classification_metrics(torch.cat(logits), [r for part in parts for r in part[1]])
    loss = sum(part[0] for part in parts) / max(sum(part[1] for part in parts), 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
