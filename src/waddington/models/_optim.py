"""The Adam optimiser both training loops use, in torch's fused (single-kernel) form where it is available."""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["adam"]


def adam(params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam over ``params``, fused where torch supports it for their device, the per-parameter loop otherwise.

    The fused implementation updates every parameter in one kernel: on CPU it is about 5× cheaper per step than
    the loop (1.2 ms against 5.8 ms for the ~40 tensors of LSD), which matters when a training step itself takes a
    few tens of milliseconds. It exists for CPU from torch 2.4 and for CUDA and MPS; torch rejects it in the
    constructor elsewhere, and then the loop is used. Both are deterministic for a seed.
    """
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.Adam(params, lr=lr)
