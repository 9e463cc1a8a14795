"""Pure aggregation functions: the plaintext oracle of every aggregator.

Top layer (``fl``), no I/O and no randomness. Secure aggregators must return
what these return (exactly on quantized values, or within fixed-point error).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fl.errors import ConfigError
from fl.types import ClientUpdate

__all__ = ["fedavg_weights", "weighted_mean", "weighted_sum"]


def _check(vectors: Sequence[torch.Tensor], weights: Sequence[float]) -> None:
    if len(vectors) == 0:
        raise ConfigError("need at least one update to aggregate; got 0")
    if len(vectors) != len(weights):
        raise ConfigError(
            f"`weights` must have one entry per update; got {len(weights)} for {len(vectors)}"
        )
    shape = vectors[0].shape
    for i, v in enumerate(vectors):
        if v.shape != shape:
            raise ConfigError(f"update {i} has shape {tuple(v.shape)}; expected {tuple(shape)}")
    if any(w < 0 for w in weights):
        raise ConfigError(f"weights must be >= 0; got {list(weights)}")


def weighted_sum(vectors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Return ``sum_i weights[i] * vectors[i]`` in float64, cast back to float32."""
    _check(vectors, weights)
    out = torch.zeros(vectors[0].shape, dtype=torch.float64)
    for v, w in zip(vectors, weights, strict=True):
        out.add_(v.to(torch.float64), alpha=float(w))
    return out.to(torch.float32)


def weighted_mean(vectors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Return ``sum_i w_i v_i / sum_i w_i`` (FedAvg when ``w_i`` are sample counts).

    Raises:
        ConfigError: No vectors, mismatched lengths or shapes, negative or all-zero weights.
    """
    _check(vectors, weights)
    total = float(sum(weights))
    if total <= 0:
        raise ConfigError("the weights sum to 0; cannot take a weighted mean")
    return weighted_sum(vectors, [float(w) / total for w in weights])


def fedavg_weights(updates: Sequence[ClientUpdate]) -> list[float]:
    """Normalised FedAvg weights ``n_i / sum_j n_j`` of a list of updates."""
    total = sum(u.num_examples for u in updates)
    if total <= 0:
        raise ConfigError("the updates hold 0 examples in total; cannot weight them")
    return [u.num_examples / total for u in updates]
