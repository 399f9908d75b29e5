"""Evaluate a trained network: fields at any states and times, and the population curves ``N(t)``."""

from __future__ import annotations

import numpy as np
import torch

from .networks import PseudodynamicsNet
from .operators import divergence


def evaluate_fields(
    net: PseudodynamicsNet, states: np.ndarray, times: np.ndarray, *, chunk_size: int = 4096, method: str = "exact"
) -> dict[str, np.ndarray]:
    """Growth, velocity, diffusion, log density and ``∇·v`` at ``(states[i], times[i])``.

    Parameters
    ----------
    net
        Trained network (on CPU).
    states
        (n, d) states.
    times
        (n,) times, in the unit of the time column.
    chunk_size
        Cells per forward pass.
    method
        How ``∇·v`` is computed (``"exact"`` by default, whatever the training used).

    Returns
    -------
    Dict with ``growth`` (n,), ``velocity`` (n, d), ``diffusion`` (n,), ``log_density`` (n,), ``divergence`` (n,).
    """
    net = net.eval()
    states = np.asarray(states, dtype=np.float32)
    times = np.asarray(times, dtype=np.float32).reshape(-1)
    out = {k: [] for k in ("growth", "velocity", "diffusion", "log_density", "divergence")}
    for start in range(0, states.shape[0], chunk_size):
        s = torch.as_tensor(states[start : start + chunk_size]).requires_grad_(True)
        t = torch.as_tensor(times[start : start + chunk_size])
        v = net.velocity(s, t)
        div = divergence(v, s, method=method, create_graph=False)
        with torch.no_grad():
            out["growth"].append(net.growth(s, t).numpy())
            out["diffusion"].append(net.diffusion(s, t).numpy())
            out["log_density"].append(net.log_density(s, t).numpy())
        out["velocity"].append(v.detach().numpy())
        out["divergence"].append(div.detach().numpy())
    return {k: np.concatenate(v).astype(np.float64) for k, v in out.items()}


def population_curves(
    net: PseudodynamicsNet,
    states: np.ndarray,
    log_q: np.ndarray,
    t_grid: np.ndarray,
    n0: float,
    *,
    chunk_size: int = 8192,
) -> tuple[np.ndarray, np.ndarray]:
    """Population size over time from the surrogate (``∫u ds``) and implied by the growth field.

    Integrals over state space are importance-sampling estimates over the given cells: ``∫ f(s) ds ≈
    mean_i f(s_i)/q(s_i)`` with ``q`` the density the cells were drawn from (the pooled observed density).

    Parameters
    ----------
    net
        Trained network.
    states
        (n, d) cells used as integration points.
    log_q
        (n,) log of their sampling density.
    t_grid
        Increasing times; the first is the reference time of ``n0``.
    n0
        Population size at ``t_grid[0]`` in the model unit.

    Returns
    -------
    ``(fitted, implied)``: ``∫ u(s, t) ds`` and ``n0 · exp(∫ E_{u(·,t)}[g] dt)`` (trapezoid), both on ``t_grid``.
    """
    states = torch.as_tensor(np.asarray(states, dtype=np.float32))
    log_q = np.asarray(log_q, dtype=np.float64)
    fitted, mean_g = [], []
    with torch.no_grad():
        for t in np.asarray(t_grid, dtype=np.float64):
            lu, g = [], []
            for start in range(0, states.shape[0], chunk_size):
                s = states[start : start + chunk_size]
                tt = torch.full((s.shape[0],), float(t))
                lu.append(net.log_density(s, tt).double().numpy())
                g.append(net.growth(s, tt).double().numpy())
            log_w = np.concatenate(lu) - log_q
            c = log_w.max()
            w = np.exp(log_w - c)
            fitted.append(np.exp(c) * w.mean())
            mean_g.append(float((w * np.concatenate(g)).sum() / w.sum()))
    mean_g = np.asarray(mean_g)
    t_grid = np.asarray(t_grid, dtype=np.float64)
    increments = 0.5 * (mean_g[1:] + mean_g[:-1]) * np.diff(t_grid)
    implied = n0 * np.exp(np.concatenate([[0.0], np.cumsum(increments)]))
    return np.asarray(fitted), implied
