"""The ZINB likelihood of LSD as one Pyro distribution over a cell's whole count vector (torch + pyro only).

It is the same density as ``pyro.distributions.ZeroInflatedNegativeBinomial(total_count=θ, logits=l,
gate_logits=g).to_event(1)`` with the reference's parameterisation ``l = log(ℓρ + ε) − log(θ + ε)``, written out
by hand because it is the largest element-wise cost of a training step (cells × genes entries, several
transcendental functions each):

* with ``a = ℓρ + ε`` and ``b = θ + ε`` the two log-sigmoids of the negative binomial become ``log b − log(a + b)``
  and ``log a − log(a + b)``: two logarithms instead of two log-sigmoids of a difference of logarithms;
* the zero inflation is one correction term added at the zero entries instead of a ``where`` over both
  branches; forward and backward together take about 30 % less time than Pyro's version on 2,560 × 500 counts,
  with 10 % or 55 % zeros;
* the count-only normaliser ``Σ_g log x_g!`` can be supplied per cell, precomputed once for the data set;
* ``Σ_g [log Γ(x_g + θ_g) − log Γ(θ_g)]`` (and its ``digamma`` in the backward pass) depends on the counts and θ
  only, so it can be computed once per distinct cell of a batch and passed in (``gamma_term``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints

__all__ = ["ZINBCounts", "gamma_terms", "log_factorial_sums"]


def log_factorial_sums(x: torch.Tensor) -> torch.Tensor:
    """``Σ_g log(x_g!)`` per row of a count matrix (n, genes) → (n,)."""
    return torch.lgamma(x + 1.0).sum(-1)


def gamma_terms(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``Σ_g [log Γ(x_g + θ_g) − log Γ(θ_g)]`` per row of a count matrix (n, genes) → (n,)."""
    return (torch.lgamma(x + theta) - torch.lgamma(theta)).sum(-1)


class ZINBCounts(TorchDistribution):
    """Zero-inflated negative binomial over vectors of gene counts (event shape ``(genes,)``).

    Parameters
    ----------
    total_count
        Inverse dispersion θ per gene, shape (genes,) or broadcastable to (n, genes).
    mu
        ``ℓ ρ``: library size times expression proportion, shape (n, genes).
    gate_logits
        Logits of the zero-inflation probability, shape (n, genes).
    eps
        The reference's ε inside both logarithms of the logits (1e-3).
    log_factorial
        ``Σ_g log(x_g!)`` of the observed rows (n,), if already known; computed from the value otherwise. It
        does not depend on any parameter, so supplying it only saves time.
    gamma_term
        ``Σ_g [log Γ(x_g + θ_g) − log Γ(θ_g)]`` of the observed rows (n,), if already computed (see
        :func:`gamma_terms`); computed from the value otherwise. It depends on the counts and θ only, so a batch
        that holds the same cell several times computes it once per distinct cell.
    """

    arg_constraints = {
        "total_count": constraints.positive,
        "mu": constraints.nonnegative,
        "gate_logits": constraints.real,
    }
    support = constraints.independent(constraints.nonnegative_integer, 1)
    has_rsample = False

    def __init__(
        self,
        total_count: torch.Tensor,
        mu: torch.Tensor,
        gate_logits: torch.Tensor,
        *,
        eps: float = 1e-3,
        log_factorial: torch.Tensor | None = None,
        gamma_term: torch.Tensor | None = None,
        validate_args: bool | None = False,
    ):
        self.total_count = total_count
        self.mu = mu
        self.gate_logits = gate_logits
        self.eps = float(eps)
        self.log_factorial = log_factorial
        self.gamma_term = gamma_term
        shape = torch.broadcast_shapes(total_count.shape, mu.shape, gate_logits.shape)
        super().__init__(batch_shape=shape[:-1], event_shape=shape[-1:], validate_args=validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Log-likelihood of each count vector (summed over genes), shape ``batch_shape``."""
        theta = self.total_count
        a = self.mu + self.eps
        b = theta + self.eps
        log_apb = torch.log(a + b)
        theta_term = torch.addcmul(theta * torch.log(b), theta, log_apb, value=-1.0)  # log NB(0) = θ log(b/(a+b))
        nb = torch.addcmul(theta_term, value, torch.log(a) - log_apb)  # log NB(x) without the Γ terms
        g = self.gate_logits
        # x > 0: log(1 − π) + log NB(x);  x = 0: log(π + (1 − π) NB(0)) = log NB(0) − softplus(g) + softplus(g − log NB(0))
        zero = (value == 0).to(g.dtype)
        ll = torch.addcmul(nb - F.softplus(g), zero, F.softplus(g - theta_term))
        # log Γ(x + θ) − log Γ(θ) vanishes at x = 0, so it can be added outside the zero/non-zero split
        gt = gamma_terms(value, theta) if self.gamma_term is None else self.gamma_term
        lf = log_factorial_sums(value) if self.log_factorial is None else self.log_factorial
        return ll.sum(-1) + gt - lf

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """Counts drawn from the zero-inflated negative binomial (no gradient)."""
        with torch.no_grad():
            theta = self.total_count.expand(self.batch_shape + self.event_shape)
            logits = torch.log(self.mu + self.eps) - torch.log(theta + self.eps)
            nb = torch.distributions.NegativeBinomial(total_count=theta, logits=logits).sample(sample_shape)
            zero = torch.bernoulli(torch.sigmoid(self.gate_logits).expand_as(nb))
            return torch.where(zero.bool(), torch.zeros_like(nb), nb)
