"""Class-weighted training (``--class-weights balanced``) for skewed classifiers: scikit-learn's "balanced"
weights, a loss equal to a plain weighted cross-entropy loop, and the CLI recording what it used."""

from __future__ import annotations

import csv
import math
import random

import numpy
import pytest
import torch
from conftest import FILLER, NEGATIVE, POSITIVE
from sklearn.utils.class_weight import compute_class_weight

from adapterhub import adapters
from adapterhub.base import load_base
from adapterhub.data import balanced_class_weights
from adapterhub.train import TrainSettings, train

SETTINGS = TrainSettings(epochs=2, batch_size=4, learning_rate=1e-2, warmup_ratio=0.1, grad_clip=1.0, seed=3,
                         class_weights="balanced")  # fmt: skip


def test_balanced_weights_are_scikit_learns():
    labels = [0] * 90 + [1] * 7 + [2] * 3
    expected = compute_class_weight("balanced", classes=numpy.array([0, 1, 2]), y=labels)
    assert balanced_class_weights(labels, 3) == pytest.approx(list(expected), rel=1e-12)
    assert balanced_class_weights([0, 0, 2], 3)[1] == 0.0  # a class missing from training adds no loss


def skewed_batches(n: int = 24):
    """Equal-length random token rows, 5 of 6 labelled 0: batches shared by both training loops."""
    rng = random.Random(0)
    rows = [[2] + [rng.randrange(7, 40) for _ in range(8)] + [3] for _ in range(n)]
    labels = [1 if i % 6 == 0 else 0 for i in range(n)]

    def make(order: list[int]):
        ids = torch.tensor([rows[i] for i in order])
        yield {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "labels": torch.tensor([labels[i] for i in order]),
        }

    return make, labels


def train_plain_weighted(model, make, n: int, weights: list[float], settings: TrainSettings) -> None:
    """A plain torch loop over the same batches with ``F.cross_entropy(weight=...)``: the reference."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    total = math.ceil(n / settings.batch_size) * settings.epochs
    warmup = max(1, int(total * settings.warmup_ratio))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    )
    generator = torch.Generator().manual_seed(settings.seed)
    model.train()
    for _ in range(settings.epochs):
        order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n, settings.batch_size):
            batch = next(make(order[start : start + settings.batch_size]))
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            torch.nn.functional.cross_entropy(logits, batch["labels"], weight=torch.tensor(weights)).backward()
            torch.nn.utils.clip_grad_norm_(parameters, settings.grad_clip)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()


def lora_classifier(tiny_bert):
    torch.manual_seed(5)
    options = adapters.make_options("lora", {"r": 4, "dropout": 0, "target_modules": "query,value"})
    return adapters.attach(load_base(tiny_bert, model_task="seq-cls", labels=["neg", "pos"]), "lora", options)


def test_weighted_training_equals_a_plain_weighted_cross_entropy_loop(tiny_bert):
    make, labels = skewed_batches()
    weights = balanced_class_weights(labels, 2)  # [0.6, 3.0]
    ours, reference, unweighted = (lora_classifier(tiny_bert) for _ in range(3))
    torch.manual_seed(9)  # the same dropout masks in the base's layers on every side
    train(ours, make, len(labels), None, "seq-cls", SETTINGS, progress=False, class_weights=weights)
    torch.manual_seed(9)
    train_plain_weighted(reference, make, len(labels), weights, SETTINGS)
    torch.manual_seed(9)
    train(unweighted, make, len(labels), None, "seq-cls", SETTINGS, progress=False)

    ours_sd, ref_sd = adapters.get_peft_model_state_dict(ours), adapters.get_peft_model_state_dict(reference)
    assert ours_sd.keys() == ref_sd.keys() and ours_sd
    worst = max(float((ours_sd[k] - ref_sd[k]).abs().max()) for k in ours_sd)
    assert worst <= 1e-5, f"max |ours - plain weighted loop| = {worst:.3g}"
    plain_sd = adapters.get_peft_model_state_dict(unweighted)
    assert max(float((ours_sd[k] - plain_sd[k]).abs().max()) for k in ours_sd) > 1e-3  # the weights changed training


@pytest.fixture
def skewed_csv(tmp_path):
    """150 texts, 9 in 10 positive: a majority class a plain run can settle on."""
    rng = random.Random(1)
    path = tmp_path / "skewed.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "sentiment"])
        for i in range(150):
            label = "neg" if i % 10 == 0 else "pos"
            words = rng.sample(FILLER, 4) + [rng.choice(NEGATIVE if label == "neg" else POSITIVE)]
            writer.writerow([" ".join(words) + f" {i}", label])
    return path


def test_cli_trains_with_balanced_weights_and_records_them(cli_json, tiny_bert, skewed_csv):
    from adapterhub_registry import Registry

    trained = cli_json("train", "--base", str(tiny_bert), "--method", "lora", "-o", "target_modules=query,value",
                       "--data", str(skewed_csv), "--label-column", "sentiment", "--epochs", "1",
                       "--class-weights", "balanced", "--push", "skewed", "--json", "--no-progress")  # fmt: skip
    counts = trained["data"]["train_label_counts"]  # labels sorted: neg, pos
    assert trained["data"]["class_weights"] == pytest.approx([sum(counts) / (2 * c) for c in counts])
    record = Registry().resolve("skewed")
    assert record.manifest["training"]["class_weights"] == "balanced"


def test_class_weights_on_a_causal_lm_is_a_one_line_error(tiny_llama, text_file, capsys):
    from adapterhub.cli import main

    status = main(["train", "--base", str(tiny_llama), "--task", "causal-lm", "--method", "lora", "--data", str(text_file),
                   "--class-weights", "balanced", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert status != 0 and "--class-weights" in err and len(err.splitlines()) == 1 and "Traceback" not in err
