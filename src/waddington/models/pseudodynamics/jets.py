"""Forward-mode derivative jets of the pseudodynamics MLPs: values, directional first and second derivatives.

The PDE residual needs ``∂ℓ/∂t``, ``∇ℓ`` and ``Δℓ`` of the surrogate and ``∇·v`` and ``∇D`` of the fields at
every collocation point. Nested ``torch.autograd.grad(create_graph=True)`` calls give them, but they cannot be
traced by ``torch.compile`` (AOTAutograd has no double backward), and each one builds a second graph that the
parameter backward then walks again. Here the derivatives are propagated forward through the layers together
with the values (Taylor mode, as in the "forward Laplacian" of Li et al. 2023):

* a linear layer ``h = x Wᵀ + b`` maps a tangent ``ẋ`` to ``ẋ Wᵀ`` and a second derivative ``ẍ`` to ``ẍ Wᵀ``;
* an activation ``a = f(h)`` maps them to ``f'(h) ḣ`` and ``f''(h) ḣ² + f'(h) ḧ`` (the derivative rules of
  :mod:`waddington.models._activations`, shared with LSD's potential gradient).

The result is an ordinary forward graph (three batched products per layer), so one backward pass gives the
parameter gradients and ``torch.compile`` can fuse the whole training step. It is exact: the values equal those
of nested autograd to rounding (``tests/test_pd_operators.py`` checks values to 1e-10 and parameter gradients to
1e-9, relative, in float64, for every activation).

Written by hand because torch's own forward-mode tools (``torch.func.jvp``/``jacfwd`` under ``vmap``) are slower
per call at these sizes and do not compose with ``torch.compile`` on this torch version for modules with buffers.
"""

from __future__ import annotations

import torch
from torch import nn

from waddington.models._activations import activation_and_slope, curvature

_NAMES = {nn.Tanh: "tanh", nn.Softplus: "softplus", nn.SiLU: "silu", nn.ELU: "elu", nn.Mish: "mish"}


def supported(seq: nn.Sequential) -> bool:
    """Whether every layer of ``seq`` has a jet rule (linear layers and the activations of :func:`mlp`)."""
    for layer in seq:
        if isinstance(layer, nn.Linear):
            continue
        if type(layer) not in _NAMES:
            return False
        if isinstance(layer, nn.Softplus) and (layer.beta != 1 or layer.threshold != 20):
            return False
        if isinstance(layer, nn.ELU) and layer.alpha != 1.0:
            return False
    return True


def mlp_jet(
    seq: nn.Sequential, x: torch.Tensor, first: torch.Tensor, n_second: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Propagate values and derivatives through ``Linear``/activation layers.

    Parameters
    ----------
    seq
        The network (:func:`~waddington.models.pseudodynamics.networks.mlp`).
    x
        Inputs (B×n).
    first
        First derivatives of the inputs along ``k`` directions (k×B×n, broadcastable in B).
    n_second
        Also propagate second derivatives along the first ``m = n_second`` of those directions. The inputs must
        be affine in the variables (their own second derivatives are zero), as the standardised states are.

    Returns
    -------
    ``(y, dy, d2y)``: the outputs (B×o), their first derivatives (k×B×o) and second derivatives along the first
    ``m`` directions (m×B×o; ``None`` when ``n_second`` is 0).
    """
    m = int(n_second)
    y, dy, d2y = x, first, None
    for layer in seq:
        if isinstance(layer, nn.Linear):
            w = layer.weight.t()
            y = torch.addmm(layer.bias, y, w) if layer.bias is not None else y @ w
            dy = dy @ w
            if d2y is not None:
                d2y = d2y @ w
            continue
        name = _NAMES[type(layer)]
        h = y
        y, d1 = activation_and_slope(name, h)
        if m:
            bend = curvature(name, h, d1, y) * dy[:m] ** 2
            d2y = bend if d2y is None else d1 * d2y + bend
        dy = d1 * dy
    if dy.shape[1] != y.shape[0]:  # no activation: the tangents never met the batch dimension
        dy = dy.expand(dy.shape[0], y.shape[0], dy.shape[-1])
    if m and d2y is None:  # no activation at all: an affine network has no curvature
        d2y = torch.zeros_like(dy[:m])
    return y, dy, d2y
