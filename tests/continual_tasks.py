"""Small synthetic task sequences for the continual-learning tests: each task has its own words (so the
frozen base's features tell the tasks apart) and its own two label names, written as CSV files with a plan."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

# task -> (filler words, {label: words that decide it}); all words are in tests/tiny_models.WORDS
TASKS = {
    "films": ("the movie film is was it this".split(), {"pos": "great good love awesome happy fun".split(),
                                                      "neg": "bad awful hate terrible sad boring".split()}),
    "roads": ("car cars drive road we they".split(), {"fast": ["fast"], "slow": ["slow"]}),
    "talk": ("a that and i you".split(), {"yes": ["very", "so"], "no": ["not", "but"]}),
}  # fmt: skip
SETTINGS = {
    "epochs": 8,
    "batch_size": 16,
    "learning_rate": 0.05,
    "max_length": 16,
    "eval_batch_size": 32,
}  # learns every task


def write_task(directory: Path, name: str, examples: int = 90, seed: int = 0) -> Path:
    """``examples`` texts of task ``name``: filler words around one word that decides the label."""
    filler, words = TASKS[name]
    rng = random.Random(f"{name}-{seed}")
    path = directory / f"{name}.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(examples):
            label = rng.choice(sorted(words))
            writer.writerow(
                [" ".join(rng.sample(filler, 3) + [rng.choice(words[label])] + rng.sample(filler, 2)) + f" {i}", label]
            )
    return path


def write_plan(directory: Path, base: Path, tasks=tuple(TASKS), name: str = "plan.json", **overrides) -> Path:
    """A plan training LoRA on ``tasks`` (their CSVs written next to it) in order, as sequence ``toy``."""
    directory.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        if not (directory / f"{task}.csv").is_file():
            write_task(directory, task)
    plan = {
        "sequence": "toy", "base": str(base), "method": "lora", "options": {"r": 4, "target_modules": "query,value"},
        "settings": SETTINGS, "router": {"prototypes": 2}, "tasks": [{"name": t, "path": f"{t}.csv"} for t in tasks],
        **overrides,
    }  # fmt: skip
    path = directory / name
    path.write_text(json.dumps(plan, indent=1))
    return path


def write_corpus(directory: Path, name: str, lines: int = 80, seed: int = 0) -> Path:
    """A plain-text corpus of task ``name``'s words (for a causal-LM sequence): one short line each."""
    filler, words = TASKS[name]
    vocabulary = filler + [w for group in words.values() for w in group]
    rng = random.Random(f"{name}-{seed}")
    path = directory / f"{name}.txt"
    path.write_text("\n".join(" ".join(rng.choices(vocabulary, k=6)) for _ in range(lines)) + "\n")
    return path
