"""Differential operators of the pseudodynamics PDE in ``d`` dimensions (autograd).

The reference implementation sums the drift and the gradient over dimensions before differentiating, which gives
``(1·∇)(u 1·v)`` and ``∇·(D 11ᵀ ∇u)`` instead of ``∇·(u v)`` and ``∇·(D ∇u)`` for ``d > 1``
(reference §1.2). Here the operators are the true ones:

* :func:`divergence` — ``∇·f = Σ_i ∂f_i/∂x_i``, exactly (one backward pass per dimension) or with Hutchinson's
  estimator ``E_ε[εᵀ (∂f/∂x) ε]`` (one backward pass per probe, unbiased, variance ∝ off-diagonal Jacobian);
* :func:`laplacian` — ``Δf = ∇·∇f``;
* :func:`pde_terms` — the growth, drift and diffusion terms of
  ``∂u/∂t = g u − ∇·(u v) + ∇·(D ∇u)`` divided by ``u``, computed from ``ℓ = log u`` so that nothing overflows:
  ``∇·(u v)/u = ∇·v + v·∇ℓ`` and ``∇·(D ∇u)/u = D (Δℓ + |∇ℓ|²) + ∇D·∇ℓ``.

Exact traces cost ``d`` backward passes; for ``d`` above about 5 the Hutchinson estimator (Rademacher probes)
is cheaper and is what ``method="auto"`` picks. :func:`pde_terms` computes the exact terms with forward-mode
jets (:mod:`.jets`) instead of nested backward passes: the same values, one plain forward graph, and a training
step that ``torch.compile`` can trace.
"""

from __future__ import annotations

import torch

from . import jets
from .networks import PseudodynamicsNet


def gradient(f: torch.Tensor, x: torch.Tensor, *, create_graph: bool = True) -> torch.Tensor:
    """``∇_x Σ_b f_b``, i.e. the per-sample gradient of a ``(B,)`` output with independent samples."""
    (grad,) = torch.autograd.grad(f.sum(), x, create_graph=create_graph, allow_unused=False)
    return grad


def _resolve(method: str, d: int) -> str:
    if method == "auto":
        return "exact" if d <= 5 else "hutchinson"
    if method not in ("exact", "hutchinson"):
        raise ValueError(f"`method` must be 'auto', 'exact' or 'hutchinson', got {method!r}.")
    return method


def divergence(
    f: torch.Tensor,
    x: torch.Tensor,
    *,
    method: str = "exact",
    n_probes: int = 1,
    generator: torch.Generator | None = None,
    create_graph: bool = True,
) -> torch.Tensor:
    """Divergence ``Σ_i ∂f_i/∂x_i`` of a vector field ``f`` (B×d) evaluated at ``x`` (B×d), shape ``(B,)``.

    Parameters
    ----------
    f
        Field values computed from ``x`` (samples independent of each other).
    x
        Inputs with ``requires_grad=True``.
    method
        ``"exact"`` (one backward pass per dimension), ``"hutchinson"`` (``n_probes`` Rademacher probes) or
        ``"auto"`` (exact for ``d ≤ 5``).
    n_probes
        Probes of the Hutchinson estimator.
    generator
        Torch generator for the probes (determinism).
    create_graph
        Keep the graph so that the result can be differentiated again (training).
    """
    d = x.shape[1]
    method = _resolve(method, d)
    if method == "exact":
        out = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for i in range(d):
            (gi,) = torch.autograd.grad(f[:, i].sum(), x, create_graph=create_graph, retain_graph=True)
            out = out + gi[:, i]
        return out
    out = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for _ in range(int(n_probes)):
        eps = torch.randint(0, 2, x.shape, generator=generator, dtype=x.dtype).to(x.device) * 2 - 1
        (jvp,) = torch.autograd.grad((f * eps).sum(), x, create_graph=create_graph, retain_graph=True)
        out = out + (jvp * eps).sum(-1)
    return out / int(n_probes)


def laplacian(
    f: torch.Tensor,
    x: torch.Tensor,
    *,
    method: str = "exact",
    n_probes: int = 1,
    generator: torch.Generator | None = None,
    create_graph: bool = True,
) -> torch.Tensor:
    """Laplacian ``Σ_i ∂²f/∂x_i²`` of a scalar field ``f`` (B,) at ``x`` (B×d), shape ``(B,)``."""
    grad = gradient(f, x, create_graph=True)
    return divergence(grad, x, method=method, n_probes=n_probes, generator=generator, create_graph=create_graph)


def pde_terms(
    net,
    s: torch.Tensor,
    t: torch.Tensor,
    *,
    method: str = "exact",
    n_probes: int = 1,
    generator: torch.Generator | None = None,
    create_graph: bool = True,
    engine: str = "auto",
) -> dict[str, torch.Tensor]:
    """Evaluate the surrogate, the fields and every PDE term (divided by ``u``) at states ``s`` and times ``t``.

    Parameters
    ----------
    net
        A :class:`~waddington.models.pseudodynamics.networks.PseudodynamicsNet`.
    s
        States (B×d); gradients are taken with respect to a copy.
    t
        Times (B,), in the user's time unit.
    method, n_probes, generator
        How divergences and Laplacians are computed (see :func:`divergence`).
    create_graph
        Keep the graph for a backward pass through the terms (nested autograd only; the jets' graph is an
        ordinary forward graph, kept whenever gradients are enabled).
    engine
        ``"jet"`` (forward-mode jets, exact traces only), ``"autograd"`` (nested backward passes) or ``"auto"``
        (jets whenever the traces are exact and every activation has a jet rule).

    Returns
    -------
    A dict with ``log_u`` (ℓ), ``dlogu_dt`` (∂ℓ/∂t), ``g``, ``v`` (B×d), ``D``, ``div_v`` (∇·v), ``drift``
    (∇·(u v)/u), ``diffusion`` (∇·(D∇u)/u), ``rhs`` (g − drift + diffusion, the PDE right-hand side over u) and
    ``residual`` (∂ℓ/∂t − rhs). Multiply by ``exp(log_u)`` for the terms of the PDE in ``u`` itself.
    """
    t = t.reshape(-1)
    if t.numel() == 1:  # one time for every state
        t = t.expand(s.shape[0]).clone()
    exact = _resolve(method, s.shape[1]) == "exact"
    can_jet = exact and _jet_ready(net)
    if engine not in ("auto", "jet", "autograd"):
        raise ValueError(f"`engine` must be 'auto', 'jet' or 'autograd', got {engine!r}.")
    if engine == "jet" and not can_jet:
        raise ValueError("engine='jet' needs exact traces (method='exact') and activations with a jet rule.")
    if engine != "autograd" and can_jet:
        return _finish(*_jet_fields(net, s.detach(), t.detach()))
    s = s.detach().requires_grad_(True)
    t = t.detach().reshape(-1).requires_grad_(True)
    log_u = net.log_density(s, t)
    dl_ds, dl_dt = torch.autograd.grad(log_u.sum(), (s, t), create_graph=True)
    lap_l = divergence(dl_ds, s, method=method, n_probes=n_probes, generator=generator, create_graph=create_graph)
    g = net.growth(s, t)
    v = net.velocity(s, t)
    D = net.diffusion(s, t)
    div_v = divergence(v, s, method=method, n_probes=n_probes, generator=generator, create_graph=create_graph)
    dD = gradient(D, s, create_graph=create_graph)
    return _finish(log_u, dl_dt, dl_ds, lap_l, g, v, div_v, D, dD)


def _finish(log_u, dl_dt, dl_ds, lap_l, g, v, div_v, D, dD) -> dict[str, torch.Tensor]:
    """Assemble the PDE terms over ``u`` from ``ℓ``, its derivatives and the fields (see :func:`pde_terms`)."""
    drift = div_v + (v * dl_ds).sum(-1)
    diffusion = D * (lap_l + (dl_ds * dl_ds).sum(-1)) + (dD * dl_ds).sum(-1)
    rhs = g - drift + diffusion
    return {
        "log_u": log_u,
        "dlogu_dt": dl_dt,
        "grad_log_u": dl_ds,
        "g": g,
        "v": v,
        "D": D,
        "div_v": div_v,
        "drift": drift,
        "diffusion": diffusion,
        "rhs": rhs,
        "residual": dl_dt - rhs,
    }


def _jet_ready(net) -> bool:
    """Whether ``net`` is a :class:`PseudodynamicsNet` whose fields are its four MLPs, each with jet rules.

    A subclass that overrides how a field is computed is not: the jets would bypass its override.
    """
    if not isinstance(net, PseudodynamicsNet):
        return False
    methods = ("_inputs", "log_density", "growth", "velocity", "diffusion")
    if any(getattr(type(net), m) is not getattr(PseudodynamicsNet, m) for m in methods):
        return False
    return all(jets.supported(getattr(net, name)) for name in ("u", "g", "v", "D"))


def _jet_fields(net, s: torch.Tensor, t: torch.Tensor):
    """``ℓ, ∂ℓ/∂t, ∇ℓ, Δℓ, g, v, ∇·v, D, ∇D`` by forward-mode jets through the four MLPs.

    The networks see ``z = (s - c)/σ`` and ``τ = (t - t_c)/σ_t``, so the derivative of the input along the raw
    state direction ``e_i`` is ``e_i/σ_i`` and along time ``e_t/σ_t``; the inputs are affine, so their second
    derivatives vanish and the surrogate's Laplacian is the sum of its second derivatives along the ``d`` state
    directions.
    """
    d = s.shape[1]
    x = net._inputs(s, t, True)
    inv = torch.cat([1.0 / net.state_scale, (1.0 / net.time_scale).reshape(1)]).to(x.dtype)
    tangents = (torch.eye(d + 1, dtype=x.dtype, device=x.device) * inv[:, None])[:, None, :]  # (d+1)×1×(d+1)
    lu, dlu, d2lu = jets.mlp_jet(net.u, x, tangents, n_second=d)
    log_u = lu[:, 0]
    dl_ds = dlu[:d, :, 0].t()
    dl_dt = dlu[d, :, 0]
    lap_l = d2lu[:, :, 0].sum(0)

    xf = x if net.time_dependent else x[:, :d]
    state_tangents = tangents[:d, :, : xf.shape[1]]
    g = net.growth(s, t)  # no derivative needed
    vr, dv, _ = jets.mlp_jet(net.v, xf, state_tangents)
    v = vr * net.velocity_scale
    div_v = (torch.diagonal(dv, dim1=0, dim2=2) * net.velocity_scale).sum(-1)
    hD, dhD, _ = jets.mlp_jet(net.D, xf, state_tangents)
    D, slope = net.diffusion_head(hD[:, 0], slope=True)
    dD = (slope[None] * dhD[:, :, 0]).t()
    return log_u, dl_dt, dl_ds, lap_l, g, v, div_v, D, dD
