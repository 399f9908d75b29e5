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

With ``method="exact"`` and the MLPs of :class:`~waddington.models.pseudodynamics.networks.PseudodynamicsNet`
(activations with closed-form first and second derivatives), :func:`pde_terms` does not differentiate with
autograd at all: :func:`mlp_jet` carries each layer's value, its derivatives along every input direction and the
sum of its second derivatives along the state directions forward through the network (forward-mode "jets").
Nested ``autograd.grad(create_graph=True)`` would build a backward graph, ``d`` more backward graphs on top of it
for the Laplacian and divergence, and the training step would then differentiate through all of them (third
derivatives of the surrogate); the jets are plain forward operations on ``(B, d + 1, width)`` tensors, so the
training step needs first derivatives only. The terms are identical (tested against the autograd path), and a
training step is several times cheaper. Other cases (Hutchinson probes, activations without closed forms, any
other network) use the autograd operators below.

Exact traces by autograd cost ``d`` backward passes; for ``d`` above about 5 the Hutchinson estimator (Rademacher
probes) is cheaper and is what ``method="auto"`` picks.
"""

from __future__ import annotations

import torch
from torch import nn


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
        Keep the graph for a backward pass through the terms.

    Returns
    -------
    A dict with ``log_u`` (ℓ), ``dlogu_dt`` (∂ℓ/∂t), ``g``, ``v`` (B×d), ``D``, ``div_v`` (∇·v), ``drift``
    (∇·(u v)/u), ``diffusion`` (∇·(D∇u)/u), ``rhs`` (g − drift + diffusion, the PDE right-hand side over u) and
    ``residual`` (∂ℓ/∂t − rhs). Multiply by ``exp(log_u)`` for the terms of the PDE in ``u`` itself.
    """
    if _resolve(method, s.shape[1]) == "exact" and _jets_supported(net):
        return _pde_terms_jet(net, s.detach(), t.detach().reshape(-1))
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


# ---------------------------------------------------------------------------------------------------------------
# forward-mode jets through the MLPs


def _activation_jet(act: nn.Module, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """σ(a), σ'(a), σ''(a) for the activations of :func:`~waddington.models.pseudodynamics.networks.mlp`."""
    if isinstance(act, nn.Tanh):
        # tanh(a) = 2σ(2a) − 1: torch's CPU tanh is about twice as slow as its sigmoid (absolute error ~1e-7)
        v = torch.sigmoid(2.0 * a) * 2.0 - 1.0
        d1 = 1.0 - v * v
        return v, d1, -2.0 * v * d1
    if isinstance(act, nn.Softplus) and act.beta == 1.0:
        sig = torch.sigmoid(a)
        return nn.functional.softplus(a, threshold=act.threshold), sig, sig * (1.0 - sig)
    if isinstance(act, nn.SiLU):
        sig = torch.sigmoid(a)
        d1 = sig * (1.0 + a * (1.0 - sig))
        return a * sig, d1, sig * (1.0 - sig) * (2.0 + a * (1.0 - 2.0 * sig))
    if isinstance(act, nn.ELU) and act.alpha == 1.0:
        pos = a > 0
        e = torch.exp(torch.clamp(a, max=0.0))
        return torch.where(pos, a, e - 1.0), torch.where(pos, torch.ones_like(a), e), torch.where(pos, 0.0, e)
    raise TypeError(f"no closed-form derivatives for {type(act).__name__}")


def _mlp_supported(seq: nn.Module) -> bool:
    if not isinstance(seq, nn.Sequential):
        return False
    for m in seq:
        if isinstance(m, nn.Linear) or isinstance(m, nn.Tanh | nn.SiLU):
            continue
        if isinstance(m, nn.Softplus) and m.beta == 1.0:
            continue
        if isinstance(m, nn.ELU) and m.alpha == 1.0:
            continue
        return False
    return isinstance(seq[-1], nn.Linear)


def _jets_supported(net) -> bool:
    needed = ("u", "g", "v", "D", "state_center", "state_scale", "time_center", "time_scale")
    return all(hasattr(net, k) for k in needed) and all(_mlp_supported(getattr(net, k)) for k in "ugvD")


def mlp_jet(
    seq: nn.Sequential, x: torch.Tensor, in_scale: torch.Tensor, n_second: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Value, directional derivatives and summed second derivatives of an MLP, carried forward layer by layer.

    Parameters
    ----------
    seq
        ``Linear → activation → … → Linear``.
    x
        Network inputs (B×k), already standardised.
    in_scale
        ``∂x_j/∂y_j`` for the first ``k`` inputs (k ≤ number of inputs): the inputs are ``x = (y − c) / scale``, and
        derivatives are taken along the raw ``y_1 … y_k`` only (later inputs are held fixed).
    n_second
        Sum second derivatives along the first ``n_second`` raw directions (0: none).

    Returns
    -------
    ``value`` (B×out), ``jac`` (B×k×out) with ``jac[b, j] = ∂ value_b / ∂y_j``, and ``lap`` (B×out) =
    ``Σ_{j < n_second} ∂² value_b / ∂y_j²`` (``None`` when ``n_second`` is 0).
    """
    layers = list(seq)
    first = layers[0]
    a = first(x)
    # the first layer is affine in y: constant Jacobian, no second derivative
    w_in = first.weight[:, : in_scale.shape[0]] * in_scale  # (out, k): ∂a/∂y
    jac = w_in.t().unsqueeze(0)  # (1, k, width), broadcast over the batch
    lap = None
    lap_const = (w_in[:, :n_second] ** 2).sum(1) if n_second else None  # Σ_j (∂a/∂y_j)², the same for every cell
    for layer in layers[1:]:
        if isinstance(layer, nn.Linear):
            a = layer(a)
            jac = jac @ layer.weight.t()
            if lap is not None:
                lap = lap @ layer.weight.t()
            continue
        v, d1, d2 = _activation_jet(layer, a)
        if n_second:
            sq = lap_const if lap is None else (jac[:, :n_second] ** 2).sum(1)
            lap = d2 * sq if lap is None else d2 * sq + d1 * lap
        jac = d1.unsqueeze(1) * jac
        a = v
    if jac.shape[0] != a.shape[0]:
        jac = jac.expand(a.shape[0], -1, -1)
    return a, jac, lap


def _pde_terms_jet(net, s: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """:func:`pde_terms` by forward-mode jets (exact, first derivatives only for the training step)."""
    d = s.shape[1]
    z = (s - net.state_center) / net.state_scale
    tt = ((t - net.time_center) / net.time_scale).unsqueeze(-1)
    x_full = torch.cat([z, tt], dim=1)
    scale_full = torch.cat([1.0 / net.state_scale, (1.0 / net.time_scale).reshape(1)])
    # surrogate: value, derivatives along state and time, Laplacian over the state
    lu, jac_u, lap_u = mlp_jet(net.u, x_full, scale_full, d)
    # fields: derivatives along the d state directions only (their time input, if any, is held fixed)
    x_f = x_full if net.time_dependent else z
    g_raw = net.g(x_f).squeeze(-1)
    v_raw, jac_v, _ = mlp_jet(net.v, x_f, scale_full[:d], 0)
    d_raw, jac_d, _ = mlp_jet(net.D, x_f, scale_full[:d], 0)
    log_u = lu.squeeze(-1)
    dl_ds = jac_u[:, :d, 0]
    dl_dt = jac_u[:, d, 0]
    lap_l = lap_u.squeeze(-1)
    g = s.sum(-1) * 0.0 if net.zero_growth else g_raw * net.growth_scale
    v = v_raw * net.velocity_scale
    # ∂v_i/∂s_i = velocity_scale_i · ∂v_raw_i/∂s_i
    div_v = (torch.diagonal(jac_v[:, :d, :d], dim1=1, dim2=2) * net.velocity_scale).sum(-1)
    d_raw = d_raw.squeeze(-1)
    jac_d = jac_d[:, :d, 0]
    if net.diffusion_positive:
        D = nn.functional.softplus(d_raw)
        jac_d = torch.sigmoid(d_raw).unsqueeze(-1) * jac_d
    else:
        D = d_raw
    D = D * net.diffusion_scale
    dD = jac_d * net.diffusion_scale
    if net.diffusion_clip is not None:
        lo, hi = net.diffusion_clip
        inside = ((D >= lo) & (D <= hi)).to(D.dtype)
        D = D.clamp(lo, hi)
        dD = dD * inside.unsqueeze(-1)
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
