"""Metrics through the shipped `evaluate` modules agree with scikit-learn computed directly."""

from __future__ import annotations

import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from adapterhub.evaluation import classification_metrics


def test_classification_metrics_match_sklearn():
    torch.manual_seed(0)
    logits = torch.randn(60, 3)
    references = torch.randint(0, 3, (60,)).tolist()
    metrics = classification_metrics(logits, references)
    predictions = logits.argmax(-1).tolist()
    assert metrics["accuracy"] == accuracy_score(references, predictions)
    assert abs(metrics["f1_macro"] - f1_score(references, predictions, average="macro")) < 1e-12
    probabilities = torch.softmax(logits, -1).numpy()
    assert abs(metrics["roc_auc"] - roc_auc_score(references, probabilities, multi_class="ovr")) < 1e-6


def test_binary_roc_auc_uses_the_positive_class_score():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.5], [0.2, 0.1]])
    metrics = classification_metrics(logits, [0, 1, 1, 0])
    assert metrics["roc_auc"] == roc_auc_score([0, 1, 1, 0], torch.softmax(logits, -1)[:, 1].numpy())


def test_roc_auc_is_omitted_when_a_class_is_absent():
    assert "roc_auc" not in classification_metrics(torch.randn(4, 3), [0, 0, 1, 1])
