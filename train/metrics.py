"""Which predictions are right: one rule for the training loop, train.evaluate, the ReaL
labels and the comparison's per-image tests, so that every figure printed and every
per-image result agree. An image's top-k classes are its k largest logits, ties going to the
lower class index (a stable sort): top-1 is then the argmax (the first maximum) of torch and
NumPy alike. Ties are common: bf16-rounded logits tied on 1.6% of val images, where topk's
order and argmax's differed."""

from __future__ import annotations

import numpy as np
import torch


def top_classes(logits: torch.Tensor, k: int) -> torch.Tensor:
    """(B, C) logits -> (B, min(k, C)) class indices, best first, ties to the lower index."""
    order = torch.sort(logits, dim=1, descending=True, stable=True).indices
    return order[:, : min(k, logits.shape[1])]


def hits(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) bool: hits[i, j] when image i's label is its (j + 1)-th class; its top-1 is
    hits[:, 0], its top-k hits.any(1)."""
    return top_classes(logits, k) == labels[:, None]


def correct(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> torch.Tensor:
    """(B,) bool: whether each image's label is among its top-k classes."""
    return hits(logits, labels, k).any(1)


def correct_np(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> np.ndarray:
    """`correct` of NumPy arrays (the logits files train.evaluate writes)."""
    return correct(torch.from_numpy(logits), torch.from_numpy(labels), k).numpy()
