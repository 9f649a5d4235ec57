"""Data preparation: from a ``DataSpec`` to the batches of a run, the data file read once.

``prepare`` reads (or takes) the data file, caps and splits it as the spec says, and returns a ``Prepared``:
factories of training and held-out batches for the base's model task, the number of training examples, the
summary recorded in the manifest, and for classifiers the two splits. ``adapterhub train`` and ``eval``
(``workflow``), continual training and evaluation, and the benchmarks all go through it, so a held-out split
is the same wherever it is made. ``classification_split`` and ``labels_of`` are the same steps without a base.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from adapterhub.base import Base
from adapterhub.batches import block_batches, classification_batches
from adapterhub.data import (
    ClassificationData,
    DataFile,
    balanced_class_weights,
    cap,
    parse_classification,
    read_data_file,
    split_blocks,
    split_classification,
    text_blocks,
)
from adapterhub.errors import OptionError
from adapterhub.settings import DataSpec, TrainSettings

Batches = Iterator[dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Prepared:
    """The data of one run, ready to train on and evaluate."""

    make_train: Callable[[list[int]], Batches]  # batches of the given training rows, in that order
    n_train: int  # training examples (classifier) or blocks (causal LM)
    make_eval: Callable[[], Batches] | None  # the held-out batches; None when the split left none
    summary: dict[str, Any]  # examples per split, majority baseline, label counts (and class weights)
    source: DataFile  # the file as read: its sha256 is recorded with the adapter
    train_set: ClassificationData | None = None  # classifiers only
    test_set: ClassificationData | None = None


def read_source(spec: DataSpec) -> DataFile:
    """The spec's data file, read once for a whole run."""
    return read_data_file(spec.path, spec.encoding)


def labels_of(spec: DataSpec, source: DataFile | None = None) -> list[str]:
    """The label names of a classification file, sorted (the head order of an adapter trained on it)."""
    return _classification(spec, source or read_source(spec), None).label_names


def classification_split(
    spec: DataSpec, label_names: list[str] | None = None, source: DataFile | None = None
) -> tuple[ClassificationData, ClassificationData]:
    """``(train, test)`` of a classification file: capped to ``max_samples`` and split by text hash."""
    data = _classification(spec, source or read_source(spec), label_names)
    return split_classification(cap(data, spec.max_samples, spec.seed), spec.test_split, spec.seed)


def prepare(
    base: Base, spec: DataSpec, settings: TrainSettings, label_names: list[str] | None, source: DataFile | None = None
) -> Prepared:
    """The batches of ``spec`` for ``base``'s model task; ``source`` is the file when the caller has read it."""
    source = source or read_source(spec)
    if base.model_task == "seq-cls":
        return _prepare_classification(base, spec, settings, label_names, source)
    return _prepare_blocks(base, spec, settings, source)


def _classification(spec: DataSpec, source: DataFile, label_names: list[str] | None) -> ClassificationData:
    return parse_classification(
        source,
        text_column=spec.text_column,
        label_column=spec.label_column,
        dedupe=spec.dedupe,
        label_names=label_names,
    )


def _prepare_classification(base: Base, spec: DataSpec, settings: TrainSettings, label_names: list[str] | None,
                            source: DataFile) -> Prepared:  # fmt: skip
    train_set, test_set = classification_split(spec, label_names, source)
    if not train_set.texts or not test_set.texts:
        raise OptionError(f"the split of {spec.path} left an empty train or test set; change --test-split")
    summary = {"train_examples": len(train_set.texts), "test_examples": len(test_set.texts),
               "majority_baseline": test_set.majority_fraction(),
               "train_label_counts": [train_set.labels.count(c) for c in range(len(train_set.label_names))]}  # fmt: skip
    if settings.class_weights == "balanced":
        summary["class_weights"] = balanced_class_weights(train_set.labels, len(train_set.label_names))
    tokenizer = base.tokenizer
    return Prepared(
        make_train=lambda order: classification_batches(
            train_set, tokenizer, settings.batch_size, settings.max_length, order
        ),
        n_train=len(train_set.texts),
        make_eval=lambda: classification_batches(test_set, tokenizer, settings.eval_batch_size, settings.max_length),
        summary=summary,
        source=source,
        train_set=train_set,
        test_set=test_set,
    )


def _prepare_blocks(base: Base, spec: DataSpec, settings: TrainSettings, source: DataFile) -> Prepared:
    blocks = text_blocks(source, base.tokenizer, settings.block_size)
    train_blocks, test_blocks = split_blocks(blocks, spec.test_split, spec.seed)
    pad = base.tokenizer.pad_token_id
    return Prepared(
        make_train=lambda order: block_batches(train_blocks, pad, settings.batch_size, order),
        n_train=len(train_blocks),
        make_eval=(lambda: block_batches(test_blocks, pad, settings.eval_batch_size)) if test_blocks else None,
        summary={"train_blocks": len(train_blocks), "test_blocks": len(test_blocks)},
        source=source,
    )
