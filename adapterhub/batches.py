"""Turn examples into model batches: tokenised classification texts, or causal-LM token blocks."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from adapterhub.data import ClassificationData


def classification_batches(
    data: ClassificationData, tokenizer, batch_size: int, max_length: int, order: list[int] | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    order = order if order is not None else list(range(len(data.texts)))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        encoded = tokenizer(
            [data.texts[i] for i in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        # single-text inputs: token_type_ids would be all zeros, the default, and decoder models reject them
        yield {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "labels": torch.tensor([data.labels[i] for i in rows]),
        }


def block_batches(
    blocks: list[list[int]], pad_id: int, batch_size: int, order: list[int] | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    order = order if order is not None else list(range(len(blocks)))
    for start in range(0, len(order), batch_size):
        rows = [blocks[i] for i in order[start : start + batch_size]]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        labels = input_ids.masked_fill(mask == 0, -100)  # padding never counts in the loss
        yield {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
