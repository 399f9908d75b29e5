"""The neural networks of LSD: encoders, decoders, the potential V(z) and the RNN prior of the differentiation state.

Three builders, as in the reference: Linear→BatchNorm→Softplus blocks (``batch_norm=True``, BatchNorm kept after the
last Linear, last activation dropped), Linear→Softplus blocks (last activation dropped) and Linear→activation
after *every* layer (the potential). Unlike the reference, every network uses its own configured hidden sizes
(``z_encoder`` for q(B|z) and ``xl_encoder`` for q(ℓ|x) are honoured).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LogCosh",
    "GaussianMLP",
    "ZDecoder",
    "PotentialNet",
    "PriorRNN",
    "make_activation",
    "mlp",
]

_EPS = 1e-5


class LogCosh(nn.Module):
    """``log(cosh(u))``, computed stably as ``|u| + softplus(−2|u|) − log 2``."""

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # noqa: D102
        a = u.abs()
        return a + F.softplus(-2.0 * a) - 0.6931471805599453


def make_activation(name: str) -> nn.Module:
    """Activation by name: ``"logcosh"``, ``"relu"``, ``"softplus"``, ``"tanh"`` or ``"identity"``."""
    table = {
        "logcosh": LogCosh,
        "relu": nn.ReLU,
        "softplus": nn.Softplus,
        "sp": nn.Softplus,
        "tanh": nn.Tanh,
        "identity": nn.Identity,
        "id": nn.Identity,
    }
    key = str(name).lower()
    if key not in table:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(table)}.")
    return table[key]()


def mlp(
    dims: list[int], *, batch_norm: bool, activation: str = "softplus", last_activation: bool = False
) -> nn.Sequential:
    """Stack ``Linear`` (→ ``BatchNorm1d``) → activation over consecutive ``dims``."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(d_in, d_out))
        if batch_norm:
            layers.append(nn.BatchNorm1d(d_out))
        if i < len(dims) - 2 or last_activation:
            layers.append(make_activation(activation))
    return nn.Sequential(*layers)


class GaussianMLP(nn.Module):
    """MLP whose output is split in half into a location and a softplus scale of a diagonal Gaussian."""

    def __init__(self, d_in: int, hidden: list[int], d_out: int, *, batch_norm: bool):
        super().__init__()
        self.d_out = d_out
        self.net = mlp([d_in, *hidden, 2 * d_out], batch_norm=batch_norm)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loc, scale)``."""
        h = self.net(x)
        loc, raw = h[..., : self.d_out], h[..., self.d_out :]
        return loc, F.softplus(raw) + _EPS


class ZDecoder(nn.Module):
    """p(x|z): zero-inflation gate logits and softmax expression proportions over genes."""

    def __init__(self, z_dim: int, hidden: list[int], n_genes: int):
        super().__init__()
        self.n_genes = n_genes
        self.net = mlp([z_dim, *hidden, 2 * n_genes], batch_norm=True)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(gate_logits, rho)``."""
        h = self.net(z)
        gate_logits, mu = h[..., : self.n_genes], h[..., self.n_genes :]
        return gate_logits, torch.softmax(mu, dim=-1)


class PotentialNet(nn.Module):
    """Scalar potential ``V(z) = sigmoid(g) · f(z)``.

    ``f`` applies the activation after every layer (so V ≥ 0 with log-cosh, as in the reference) and ``g`` is a
    learnable scalar starting at 0.
    """

    def __init__(self, z_dim: int, hidden: list[int], activation: str = "logcosh"):
        super().__init__()
        self.net = mlp([z_dim, *hidden, 1], batch_norm=False, activation=activation, last_activation=True)
        self.g = nn.Parameter(torch.zeros(1))
        self._act_name = str(activation).lower()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """V(z), shape (n,)."""
        return (torch.sigmoid(self.g) * self.net(z)).squeeze(-1)

    def grad(self, z: torch.Tensor) -> torch.Tensor:
        """∇V(z), by explicit back-propagation through the MLP.

        Written out (rather than ``torch.autograd.grad(..., create_graph=True)``) because the flow evaluates it
        4 × (L − 1) times per training step: the explicit chain rule is a handful of matrix products that autograd
        differentiates once more for the loss, about half the cost of a double-backward graph.
        """
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        h = z
        derivs = []
        for lin in linears:
            a = lin(h)
            h, d = _act_and_derivative(self._act_name, a)
            derivs.append(d)
        delta = torch.sigmoid(self.g) * derivs[-1]  # (n, 1)
        for lin, d in zip(reversed(linears[1:]), reversed(derivs[:-1]), strict=True):
            delta = (delta @ lin.weight) * d
        return delta @ linears[0].weight


def _act_and_derivative(name: str, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "logcosh":
        absa = a.abs()
        return absa + F.softplus(-2.0 * absa) - 0.6931471805599453, torch.tanh(a)
    if name in ("softplus", "sp"):
        return F.softplus(a), torch.sigmoid(a)
    if name == "tanh":
        t = torch.tanh(a)
        return t, 1.0 - t * t
    if name == "relu":
        return torch.relu(a), (a > 0).to(a.dtype)
    if name in ("identity", "id"):
        return a, torch.ones_like(a)
    raise ValueError(f"unknown activation {name!r}")


class PriorRNN(nn.Module):
    """p(B | walk): a 2-layer ReLU RNN over the log-expression of the cells of each walk, from a learned h0."""

    def __init__(self, n_genes: int, B_dim: int, num_layers: int = 2):
        super().__init__()
        self.rnn = nn.RNN(n_genes, B_dim, num_layers=num_layers, nonlinearity="relu", batch_first=True)
        self.h0 = nn.Parameter(torch.zeros(num_layers, 1, B_dim))

    def forward(self, x_walks: torch.Tensor) -> torch.Tensor:
        """``x_walks`` (W, L, G) → B prior mean (W·L, B_dim)."""
        h0 = self.h0.expand(-1, x_walks.shape[0], -1).contiguous()
        out, _ = self.rnn(x_walks, h0)
        return out.reshape(-1, out.shape[-1])
