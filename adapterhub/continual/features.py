"""What the router sees of an input: features of the frozen base with every adapter off, and per-task
prototypes (a few k-means centroids of those features) stored compactly in each task adapter's manifest.

Features are the last hidden state, mean-pooled over the real tokens and L2-normalised, so that routing is a
cosine similarity. They come from the base *without* any adapter: an adapter trained later must never
change how earlier inputs are routed, and one base forward serves whatever task the input turns out to be.
Used by ``sequence`` (prototypes at training time), ``router`` (routing) and ``evaluate``.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable, Iterable, Sequence

import numpy
import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from adapterhub.base import Base
from adapterhub.errors import AdapterHubError

FEATURES = "last hidden state, mean-pooled over tokens, L2-normalised; base without adapters"


class BaseFeatures:
    """Routing features of one loaded base; ``adapters_off()`` is the context in which the base runs bare."""

    def __init__(self, base: Base, *, max_length: int, batch_size: int = 64,
                 adapters_off: Callable[[], contextlib.AbstractContextManager] | None = None) -> None:  # fmt: skip
        self.base, self.max_length, self.batch_size = base, max_length, batch_size
        self.adapters_off = adapters_off or self._bare

    @classmethod
    def of_pool(cls, pool, *, max_length: int, batch_size: int = 64) -> BaseFeatures:
        """Features on a serving pool's base: the pool runs it with no slot and no peft adapter active."""
        return cls(pool.base, max_length=max_length, batch_size=batch_size, adapters_off=lambda: pool.activate([None]))

    @contextlib.contextmanager
    def _bare(self):
        # A plain Base has no switch for adapters that peft injected into it; refuse rather than route on them.
        if any(isinstance(module, BaseTunerLayer) for module in self.base.model.modules()):
            raise AdapterHubError(
                "this base has an adapter attached, so its features are not those of the frozen base; "
                "compute routing features on a freshly loaded base (or through an AdapterPool)"
            )
        yield

    @torch.inference_mode()
    def of_batches(self, batches: Iterable[dict]) -> torch.Tensor:
        """``(examples, hidden)`` features of tokenised batches (``labels`` in them are ignored)."""
        device = self.base.model.get_input_embeddings().weight.device
        parts = []
        with self.adapters_off():
            for batch in batches:
                mask = batch["attention_mask"].to(device)
                output = self.base.model(
                    input_ids=batch["input_ids"].to(device), attention_mask=mask, output_hidden_states=True
                )
                hidden = output.hidden_states[-1].float()  # (batch, seq, hidden)
                pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
                parts.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        if not parts:
            raise AdapterHubError("no examples to compute routing features of")
        return torch.cat(parts)

    def of_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """``(len(texts), hidden)`` features, each text truncated to ``max_length`` tokens as in training."""
        tokenizer = self.base.tokenizer

        def batches():
            for start in range(0, len(texts), self.batch_size):
                yield tokenizer(list(texts[start : start + self.batch_size]), padding=True, truncation=True,
                                max_length=self.max_length, return_tensors="pt")  # fmt: skip

        return self.of_batches(batches())


def prototypes(features: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """``(k', hidden)`` unit-length k-means centroids of a task's features (k' ≤ k when there are few examples).

    A few centroids rather than one mean: a task such as "airline tweets" has sub-topics, and a single mean
    of them can sit closer to another task's inputs than any of its own clusters does.
    """
    from sklearn.cluster import KMeans

    points = features.double().numpy()
    k = min(k, len(numpy.unique(points.round(6), axis=0)))
    centroids = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(points).cluster_centers_
    return torch.nn.functional.normalize(torch.from_numpy(centroids).float(), dim=-1)


def encode_tensor(tensor: torch.Tensor) -> dict:
    """A float32 tensor as JSON: shape and base64 of its little-endian bytes (exact, a third of a number list)."""
    array = tensor.detach().cpu().float().contiguous().numpy().astype("<f4")
    return {"shape": list(array.shape), "dtype": "float32", "base64": base64.b64encode(array.tobytes()).decode("ascii")}


def decode_tensor(encoded: dict, what: str) -> torch.Tensor:
    """The tensor ``encode_tensor`` wrote; ``what`` names it in the error for a damaged entry."""
    try:
        data = base64.b64decode(encoded["base64"], validate=True)
        array = numpy.frombuffer(data, dtype="<f4").reshape(encoded["shape"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterHubError(
            f"{what}: the stored router prototypes are unreadable ({exc}); train that task again"
        ) from None
    return torch.from_numpy(array.copy())
