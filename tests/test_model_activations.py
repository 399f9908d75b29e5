"""The shared activation derivative rules (LSD's potential gradient, pseudodynamics' jets) against autograd."""

import pytest
import torch

from waddington.models._activations import NAMES, activation_and_slope, curvature

_TORCH = {
    "tanh": torch.tanh,
    "logcosh": lambda a: torch.log(torch.cosh(a)),
    "softplus": torch.nn.functional.softplus,
    "sp": torch.nn.functional.softplus,
    "silu": torch.nn.functional.silu,
    "elu": torch.nn.functional.elu,
    "mish": torch.nn.functional.mish,
    "relu": torch.relu,
    "identity": lambda a: a,
    "id": lambda a: a,
}


@pytest.mark.parametrize("name", NAMES)
def test_value_slope_and_curvature_equal_autograd(name):
    # away from relu's and elu's kink at 0; includes values above softplus' threshold of 20
    a = torch.cat([torch.linspace(-6, -0.1, 40), torch.linspace(0.1, 6, 40), torch.tensor([21.0, 35.0])])
    a = a.double().requires_grad_(True)
    ref = _TORCH[name](a)
    (d1,) = torch.autograd.grad(ref.sum(), a, create_graph=True)
    d2 = torch.autograd.grad(d1.sum(), a, allow_unused=True)[0] if d1.requires_grad else None
    d2 = torch.zeros_like(a) if d2 is None else d2
    value, slope = activation_and_slope(name, a.detach())
    assert torch.allclose(value, ref.detach(), rtol=1e-12, atol=1e-12)
    assert torch.allclose(slope, d1.detach(), rtol=1e-12, atol=1e-12)
    assert torch.allclose(curvature(name, a.detach(), slope), d2, rtol=1e-10, atol=1e-12)
    assert torch.allclose(curvature(name, a.detach(), slope, value), d2, rtol=1e-10, atol=1e-12)
    assert activation_and_slope(name, a.detach(), value=False)[0] is None


def test_unknown_activation_names_the_known_ones():
    with pytest.raises(ValueError, match="logcosh"):
        activation_and_slope("gelu", torch.zeros(2))
