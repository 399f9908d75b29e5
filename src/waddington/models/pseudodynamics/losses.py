"""Loss terms of pseudodynamics+ (reference §3.4), each a pure function of tensors.

Conventions shared by every term:

* densities enter as logarithms ``ℓ = log u``; when a term needs ``u`` itself it is computed relative to a shift
  ``c`` (``exp(ℓ - c)``) so that nothing overflows in float32 whatever the dimension of the state space;
* ``iw`` are importance weights of the batch cells, ``u_obs,k(s_i) / q(s_i)`` with ``q`` the density the batch was
  drawn from, so that ``mean_i(iw_i f_i)`` estimates ``∫ f u_k ds`` — the population size and population means
  are integrals over state space, never plain sums over whatever cells happen to be in the batch;
* rates are per unit of the user's time column in every term (the reference mixes ``T_b`` and ``T_b/tsf``).
"""

from __future__ import annotations

import torch


def weighted_log_mse(target: torch.Tensor, pred: torch.Tensor, floor: torch.Tensor, alpha: float) -> torch.Tensor:
    """Reference's weighted log-MSE: clamp both at ``floor``, weights ``(target - floor + 1)^α`` normalised to one.

    The sum runs over the last axis. Leading axes are independent fits (one per time point, say), each with its
    own normalised weights and ``floor`` broadcast against them, and the result keeps those axes, so a ``(T, n)``
    call costs the operations of one ``(n,)`` call.

    The floor is relative (per time point, ``max log u_obs - 23``, i.e. ``1e-10`` of the peak) instead of the
    reference's absolute ``-24``, which only made sense for its pooled-cell normalisation. The ``+ 1`` gives cells
    whose observed density is at the floor a small weight: with the reference's ``(target - floor)^α`` they have
    none, so the surrogate may put any mass there and ``∫u ds`` drifts away from ``N(t)``.
    """
    x = torch.maximum(target, floor)
    xh = torch.maximum(pred, floor)
    w = (x - floor + 1.0).clamp_min(0) ** float(alpha) if alpha != 0 else torch.ones_like(x)
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
    return (w * (x - xh) ** 2).sum(-1)


def ode_consistency(
    log_u_k: torch.Tensor,
    log_u_kp1: torch.Tensor,
    log_u_nodes: torch.Tensor,
    rhs_nodes: torch.Tensor,
    quad_weights: torch.Tensor,
    dt: float | torch.Tensor,
    floor: torch.Tensor,
    alpha: float,
    form: str = "log",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neural-ODE consistency loss with a fixed quadrature instead of an adaptive adjoint solver.

    The reference integrates ``du/dt = RHS(s, t)`` from the observed density at ``t_k`` with dopri5, but the
    right-hand side comes from the surrogate at fixed states and does not depend on the ODE state (reference
    §3.4-2), so the "ODE" is a quadrature. Gauss–Legendre with a few nodes is exact for polynomials of degree
    ``2n-1`` in time and needs no adjoint.

    Parameters
    ----------
    log_u_k, log_u_kp1
        Observed log densities at ``t_k`` and ``t_{k+1}`` at the batch states (B,).
    log_u_nodes, rhs_nodes
        Surrogate ``ℓ`` and ``RHS/u`` at the quadrature nodes (n_q, B).
    quad_weights
        Quadrature weights on ``[0, 1]`` (n_q,).
    dt
        ``t_{k+1} - t_k``.
    floor
        Floor of the log densities at ``t_{k+1}``.
    alpha
        ``weight_intensity``.
    form
        ``"linear"`` integrates ``du/dt = RHS`` from ``u_obs,k`` and takes ``log(relu(u_int))`` (the reference; a
        negative ``u_int`` lands on the floor, a 23-nat error); ``"log"`` integrates ``d log u/dt = RHS/u`` from
        ``log u_obs,k``, which is the same equation along a fixed state and has no such cliff.

    Returns
    -------
    ``(loss, log_u_int)``: the loss and the integrated log density at ``t_{k+1}``.
    """
    if form == "log":
        log_u_int = log_u_k + (quad_weights[:, None] * rhs_nodes).sum(0) * dt
        return weighted_log_mse(log_u_kp1, log_u_int, floor, alpha), log_u_int
    if form != "linear":
        raise ValueError(f"`ode_form` must be 'log' or 'linear', got {form!r}.")
    c = torch.maximum(log_u_k.max(), log_u_nodes.max()).detach()
    increment = (quad_weights[:, None] * torch.exp(log_u_nodes - c) * rhs_nodes).sum(0) * dt
    u_int = torch.relu(torch.exp(log_u_k - c) + increment)
    log_u_int = torch.log(u_int + torch.exp(floor - c)) + c
    return weighted_log_mse(log_u_kp1, log_u_int, floor, alpha), log_u_int


def growth_loss(
    mode: str,
    *,
    g_k: torch.Tensor,
    g_kp1: torch.Tensor,
    iw_k: torch.Tensor,
    iw_kp1: torch.Tensor,
    iw_int: torch.Tensor,
    growth_integral: torch.Tensor,
    dt: float | torch.Tensor,
    relmass: float | torch.Tensor,
    pop_ref: str,
) -> torch.Tensor:
    """Population (growth) loss: ``legacy``, ``logratio`` or ``massbalance`` (reference §3.4-4).

    Parameters
    ----------
    mode
        ``"legacy"`` — ``2 (Δm - ∫Σ g u)² / Δm`` with the signed mass gain ``Δm`` (kept for parity only: the
        gradient flips sign when the population shrinks, reference §9-6); ``"logratio"`` —
        ``(½(E_k[g] + E_{k+1}[g]) Δt - log N_{k+1}/N_k)²`` (trapezoid of ``d log N/dt = E_p[g]``);
        ``"massbalance"`` — ``(log N̂_{k+1} - log N_{k+1})²`` with ``N̂_{k+1} = N_k + ½(∫g_k u_k + ∫g_{k+1} u_int) Δt``.
    g_k, g_kp1
        Growth at the batch states at ``t_k`` and ``t_{k+1}`` (B,).
    iw_k, iw_kp1, iw_int
        Importance weights of the batch for ``u_obs,k``, ``u_obs,k+1`` and the integrated density (B,), in a
        common unit (so ``mean(iw_k)`` estimates ``N_k``).
    growth_integral
        ``∫_{t_k}^{t_{k+1}} g u dτ / q`` per batch cell (B,), same unit (legacy mode).
    dt
        ``t_{k+1} - t_k``.
    relmass
        ``N_{k+1}/N_k`` from the population table.
    pop_ref
        ``"popmean"`` (the population table) or ``"cellsum"`` (the batch's own estimate of the integrals).
    """
    n_k = iw_k.mean()
    n_kp1 = iw_kp1.mean()
    if pop_ref == "popmean":
        log_ratio_true = torch.log(torch.as_tensor(relmass, dtype=g_k.dtype, device=g_k.device))
    elif pop_ref == "cellsum":
        log_ratio_true = torch.log(n_kp1.clamp_min(1e-30)) - torch.log(n_k.clamp_min(1e-30))
    else:
        raise ValueError(f"`growth_pop_ref` must be 'cellsum' or 'popmean', got {pop_ref!r}.")
    if mode == "logratio":
        e_k = (iw_k * g_k).sum() / iw_k.sum().clamp_min(1e-30)
        e_kp1 = (iw_kp1 * g_kp1).sum() / iw_kp1.sum().clamp_min(1e-30)
        return (0.5 * (e_k + e_kp1) * dt - log_ratio_true) ** 2
    if mode == "massbalance":
        pred = n_k + 0.5 * ((iw_k * g_k).mean() + (iw_int * g_kp1).mean()) * dt
        log_true = torch.log(n_k.clamp_min(1e-30)) + log_ratio_true
        return (torch.log(pred.clamp_min(1e-30)) - log_true) ** 2
    if mode == "legacy":
        mass_gain = (iw_kp1.mean() - n_k) if pop_ref == "cellsum" else n_k * (relmass - 1.0)
        pred = growth_integral.mean()
        return 2.0 * (mass_gain - pred) ** 2 / mass_gain
    raise ValueError(f"`growth_loss_mode` must be 'legacy', 'logratio' or 'massbalance', got {mode!r}.")


def diffusion_penalty(D: torch.Tensor, mode: str) -> torch.Tensor:
    """``legacy``: the L2 norm ``‖D‖₂`` over the batch (batch-size dependent, as the reference); ``mean``: ``mean(D²)``."""
    if mode == "legacy":
        return torch.linalg.vector_norm(D)
    if mode == "mean":
        return (D**2).mean()
    raise ValueError(f"`d_penalty_mode` must be 'legacy' or 'mean', got {mode!r}.")


def _neg_pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean()
    b = b - b.mean()
    return -(a * b).mean() / (a.std(unbiased=False) * b.std(unbiased=False)).clamp_min(1e-12)


def diffusion_variance_entropy(
    D: torch.Tensor, s: torch.Tensor, log_u_k: torch.Tensor, log_u_kp1: torch.Tensor, n_neighbors: int = 15
) -> torch.Tensor:
    """Reference's D-variance + D-entropy losses: ``-corr(|D|/max|D|, local variance) - corr(·, -log p)``.

    The local variance is that of each cell's ``n_neighbors`` nearest batch neighbours (mean over dimensions);
    ``p`` is the normalised density ratio ``u_{k+1}/u_k`` over the batch.
    """
    Dn = D.abs() / D.abs().max().detach().clamp_min(1e-12)
    with torch.no_grad():
        k = min(int(n_neighbors), s.shape[0])
        nn_idx = torch.cdist(s, s).topk(k, largest=False).indices
        local_var = s[nn_idx].var(dim=1, unbiased=False).mean(-1)
        local_var = local_var / local_var.max().clamp_min(1e-12)
        log_ratio = log_u_kp1 - log_u_k
        log_p = log_ratio - torch.logsumexp(log_ratio, 0)
        ent = -log_p
        ent = ent / ent.max().clamp_min(1e-12)
    return _neg_pearson(Dn, local_var) + _neg_pearson(Dn, ent)


def velocity_cosine(deltax: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``-mean cos(Δx_i, v_i)`` over the cells with a non-zero displacement (reference's ``deltax`` loss)."""
    # a mask multiplied in rather than indexed, so the shapes never depend on the data (torch.compile)
    keep = (deltax.norm(dim=-1) > 0).to(v.dtype)
    cos = torch.nn.functional.cosine_similarity(deltax, v, dim=-1, eps=1e-12)
    return -(cos * keep).sum() / keep.sum().clamp_min(1.0)


def flow_matching(v_pred: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, dt: float | torch.Tensor) -> torch.Tensor:
    """Conditional flow matching: ``mean ‖v(x_τ, t_τ) - (x1 - x0)/Δt‖²`` over elements."""
    return ((v_pred - (x1 - x0) / torch.as_tensor(dt, dtype=v_pred.dtype).clamp_min(1e-6)) ** 2).mean()
