"""Activation functions with their first and second derivatives, by name.

Both models differentiate small MLPs by hand, where autograd would build a second graph: LSD's potential gradient
(:class:`~waddington.models.lsd.networks.PotentialGradient`, whose backward needs φ'') and the forward-mode jets
of pseudodynamics (:mod:`~waddington.models.pseudodynamics.jets`). Each rule matches torch's own function,
including ``softplus``, which torch makes the identity above a threshold of 20.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["NAMES", "activation_and_slope", "curvature"]

#: activation names with derivative rules (aliases ``sp`` = softplus, ``id`` = identity)
NAMES = ("elu", "id", "identity", "logcosh", "mish", "relu", "silu", "softplus", "sp", "tanh")
_SOFTPLUS_THRESHOLD = 20.0
_LOG2 = 0.6931471805599453


def _check(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(NAMES)}")


def activation_and_slope(name: str, a: torch.Tensor, *, value: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``φ(a)`` (``None`` unless ``value``) and ``φ'(a)`` at the pre-activations ``a``."""
    _check(name)
    if name == "tanh":
        t = torch.tanh(a)
        return (t if value else None), 1.0 - t * t
    if name == "logcosh":
        # log cosh a = |a| + log(1 + e^{-2|a|}) - log 2, without overflow
        if not value:
            return None, torch.tanh(a)
        absa = a.abs()
        return absa + F.softplus(-2.0 * absa) - _LOG2, torch.tanh(a)
    if name in ("softplus", "sp"):
        slope = torch.where(a > _SOFTPLUS_THRESHOLD, torch.ones_like(a), torch.sigmoid(a))
        return (F.softplus(a) if value else None), slope
    if name == "silu":
        sig = torch.sigmoid(a)
        return (a * sig if value else None), sig * (1.0 + a * (1.0 - sig))
    if name == "elu":  # alpha = 1: e^a - 1 below zero
        out = F.elu(a)
        return (out if value else None), torch.where(a > 0, torch.ones_like(a), out + 1.0)
    if name == "mish":
        th = torch.tanh(F.softplus(a))
        slope = th + a * (1.0 - th * th) * torch.sigmoid(a)
        return (a * th if value else None), slope
    if name == "relu":
        return (torch.relu(a) if value else None), (a > 0).to(a.dtype)
    return (a if value else None), torch.ones_like(a)  # identity


def curvature(name: str, a: torch.Tensor, slope: torch.Tensor, value: torch.Tensor | None = None) -> torch.Tensor:
    """``φ''(a)``, given ``slope = φ'(a)`` and, where it saves work, ``value = φ(a)``."""
    _check(name)
    if name == "tanh":
        return -2.0 * (torch.tanh(a) if value is None else value) * slope
    if name == "logcosh":
        return 1.0 - slope * slope
    if name in ("softplus", "sp"):
        return slope * (1.0 - slope)  # σ(1 - σ); zero where the slope is exactly 1 (above the threshold)
    if name == "silu":
        sig = torch.sigmoid(a)
        return sig * (1.0 - sig) * (2.0 + a * (1.0 - 2.0 * sig))
    if name == "elu":
        return torch.where(a > 0, torch.zeros_like(a), slope)
    if name == "mish":
        sig = torch.sigmoid(a)
        th = torch.tanh(F.softplus(a))
        return (1.0 - th * th) * sig * (2.0 + a * (1.0 - sig - 2.0 * th * sig))
    return torch.zeros_like(a)  # relu, identity
