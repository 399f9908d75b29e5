"""The 1-D finite-volume pseudodynamics model of Fischer et al. (2019) as a ground-truth simulator."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from waddington._utils import get_rng, logger
from waddington._utils._random import RandomState

# the "dataToy" parameter set of the reference's forward simulation (natural-log units)
THETA_D_TOY = (-7.0, -8.0, -9.0, -8.0, -7.0, -7.0, -7.0, -6.0, -6.0)
THETA_V_TOY = (-2.0, -1.0, -1.0, -1.0, -2.0, -3.0, -4.0, -4.0, -5.0)
GROWTH_TOY = (1.0, 1.0, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)
_KNOTS = np.linspace(0.0, 1.0, 9)
_TAPER_FACES = 29  # v falls to 0 by a cubic Hermite over the last faces, as the reference does


def _fields(
    theta_d: Sequence[float], theta_v: Sequence[float], growth: Sequence[float], n_grid: int
) -> dict[str, np.ndarray]:
    """Evaluate D, v (at interior faces) and g (at volume centres) from the natural cubic splines."""
    for name, theta in (("theta_D", theta_d), ("theta_v", theta_v), ("growth", growth)):
        if len(theta) != len(_KNOTS):
            raise ValueError(f"`{name}` needs {len(_KNOTS)} spline nodes (knots at s = 0:0.125:1), got {len(theta)}.")
    from scipy.interpolate import CubicSpline  # lazily, like every simulator-only import (see _initial_density)

    grid = np.linspace(0.0, 1.0, n_grid)
    centres = 0.5 * (grid[:-1] + grid[1:])
    faces = grid[1:-1]
    spline_d = CubicSpline(_KNOTS, np.asarray(theta_d, float), bc_type="natural")
    spline_v = CubicSpline(_KNOTS, np.asarray(theta_v, float), bc_type="natural")
    spline_g = CubicSpline(_KNOTS, np.asarray(growth, float), bc_type="natural")
    d_faces = np.exp(spline_d(faces))
    v_faces = np.exp(spline_v(faces))
    dv_faces = v_faces * spline_v(faces, 1)
    # cubic Hermite taper to value 0 and slope 0 at the last face, starting from the spline's value and slope
    k0 = len(faces) - 1 - _TAPER_FACES
    length = faces[-1] - faces[k0]
    tp = (faces[k0:] - faces[k0]) / length
    v0, vp = v_faces[k0], dv_faces[k0]
    v_faces[k0:] = (2 * tp**3 - 3 * tp**2 + 1) * v0 + (tp**3 - 2 * tp**2 + tp) * vp * length
    v_faces[-1] = 0.0
    return {
        "grid": grid,
        "centres": centres,
        "faces": faces,
        "D_faces": d_faces,
        "v_faces": v_faces,
        "g_centres": spline_g(centres),
        # the same fields at the centres (for evaluating them at a cell's state)
        "D_centres": np.exp(spline_d(centres)),
        "v_centres": np.interp(centres, faces, v_faces),
    }


def fv_operator(d_faces: np.ndarray, v_faces: np.ndarray, g_centres: np.ndarray, h: float) -> sp.csr_matrix:
    """Finite-volume matrix ``A`` of ``u_t = (D u_s)_s - (v u)_s + g u`` with zero flux at both ends.

    ``d_faces`` and ``v_faces`` hold D and v at the ``n - 1`` interior faces, ``g_centres`` the growth rate at the
    ``n`` volume centres, ``h`` the volume width. The advective flux uses the face average of the two neighbouring
    volumes (central scheme) as in the reference implementation ``pd_fv_syms.m``. Every column of ``A - diag(g)``
    sums to zero, so without growth the total mass ``sum(u) * h`` is conserved exactly.
    """
    n = len(g_centres)
    if len(d_faces) != n - 1 or len(v_faces) != n - 1:
        raise ValueError("`d_faces` and `v_faces` need one value per interior face (n_volumes - 1).")
    diff = d_faces / h**2
    adv = 0.5 * v_faces / h
    # flux through face j (from volume j to j + 1) per unit u: F = diff*(u_j - u_{j+1}) + adv*(u_j + u_{j+1})
    out_j = diff + adv  # coefficient of u_j in F
    out_jp1 = -diff + adv  # coefficient of u_{j+1} in F
    main = np.asarray(g_centres, float).copy()
    main[:-1] -= out_j
    main[1:] += out_jp1
    upper = -out_jp1  # d u_j / d u_{j+1}
    lower = out_j  # d u_{j+1} / d u_j
    return sp.diags([lower, main, upper], [-1, 0, 1], format="csr")


def _initial_density(grid: np.ndarray, total: float, mu: float, sigma: float) -> np.ndarray:
    """``total * LogNormalPDF(s; mu, sigma)`` averaged exactly over each volume."""
    from scipy.stats import lognorm  # lazily: `import waddington` should not pay ~50 MiB for the simulators

    cdf = lognorm.cdf(grid, s=sigma, scale=np.exp(mu))
    return total * np.diff(cdf) / np.diff(grid)


def _sample_states(density: np.ndarray, grid: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Inverse-CDF sampling from the piecewise-constant density on the volumes."""
    mass = np.clip(density, 0.0, None) * np.diff(grid)
    cdf = np.concatenate([[0.0], np.cumsum(mass)])
    cdf /= cdf[-1]
    r = rng.random(n)
    idx = np.clip(np.searchsorted(cdf, r, side="right") - 1, 0, len(mass) - 1)
    frac = (r - cdf[idx]) / np.where(mass[idx] > 0, mass[idx] / mass.sum(), 1.0)
    return grid[idx] + np.clip(frac, 0.0, 1.0) * (grid[idx + 1] - grid[idx])


def population_1d(
    *,
    n_cells_per_time: int = 800,
    times: Sequence[float] = (0, 1, 2, 3, 4, 5),
    n_replicates: int = 20,
    theta_D: Sequence[float] = THETA_D_TOY,
    theta_v: Sequence[float] = THETA_V_TOY,
    growth: Sequence[float] = GROWTH_TOY,
    n_grid: int = 300,
    initial_size: float = 15000.0,
    initial_mu: float = -2.7,
    initial_sigma: float = 0.8,
    var_pop: Sequence[float] | None = None,
    random_state: RandomState = 0,
) -> AnnData:
    r"""Simulate the 1-D finite-volume pseudodynamics model of Fischer et al. (2019) ("dataToy" parameters).

    The density :math:`u(s, t)` on the state :math:`s \in [0, 1]` follows

    .. math::

        u_t = \partial_s (D\, \partial_s u) - \partial_s (v\, u) + g\, u

    with zero flux at both ends. As in the reference, the 300-point grid gives 299 volumes of width
    :math:`h = 1/299`; D and v live at the interior faces, g at the volume centres; D = exp(spline(θ_D)),
    v = exp(spline(θ_v)) tapered to 0 over the last 30 grid points by a cubic Hermite, g = spline(growth), all
    natural cubic splines with knots at s = 0:0.125:1; the advective flux is the central face average. The
    initial density is ``initial_size`` times a log-normal pdf averaged over each volume. The linear system
    :math:`\dot u = A u` is solved exactly with the matrix exponential.

    At each time ``n_cells_per_time`` cells are drawn by inverse CDF of the normalised density. Population sizes
    are ``n_replicates`` noisy counts ~ Normal(N(t), var_pop[t]) with :math:`N = \sum_i u_i h`.

    Parameters
    ----------
    n_cells_per_time
        Sequenced cells per time point. The default of 800 (4,800 cells) keeps a pseudodynamics fit on 2 CPU
        cores within a few minutes.
    times
        Sampling times (days).
    n_replicates
        Replicate population-size measurements per time point.
    theta_D, theta_v
        Spline nodes of log D and log v (9 knots).
    growth
        Spline nodes of the growth rate g (9 knots).
    n_grid
        Number of grid points (``n_grid - 1`` volumes).
    initial_size, initial_mu, initial_sigma
        Initial density ``initial_size * LogNormalPDF(s; initial_mu, initial_sigma)``.
    var_pop
        Variance of the population-size measurements per time point; default ``linspace(1e6, 6e6, len(times))``
        (the reference's 1e6 … 6e6).
    random_state
        Seed for the cell sampling and the population-size noise.

    Returns
    -------
    :class:`~anndata.AnnData` (cells × 0 genes) with

    - ``obs["day"]`` (time), ``obs["state"]`` and ``obsm["X_state"]`` (n × 1, the state s);
    - ``uns["pop"]`` = ``{"t", "mean", "std", "n_lib", "n_cells"}``: mean and std over the replicate counts,
      ``n_lib`` the number of replicates (the reference's meaning), ``n_cells`` the sequenced cells per time;
    - truth per cell: ``obs["true_g"]``, ``obsm["true_v"]`` (n × 1), ``obs["true_D"]``, ``obs["true_density"]``
      (u at the cell's volume and time);
    - ``uns["truth"]``: ``grid`` (volume edges), ``centres``, ``faces``, ``g``/``v``/``D`` at the centres,
      ``v_faces``/``D_faces``, ``density`` (T × volumes, u(t) at each sampling time), ``t``, ``N`` (exact
      Σ u h) and ``params``.

    Examples
    --------
    >>> import waddington as wd
    >>> adata = wd.datasets.population_1d(n_cells_per_time=200)
    >>> adata.obsm["X_state"].shape
    (1200, 1)
    >>> N = adata.uns["truth"]["N"]
    >>> bool(N[-1] / N[0] > 10)
    True
    """
    times = np.asarray(times, dtype=float)
    if times.ndim != 1 or len(times) < 1 or np.any(np.diff(times) <= 0) or times[0] < 0:
        raise ValueError(f"`times` must be non-negative and strictly increasing, got {times.tolist()}.")
    if n_cells_per_time < 1 or n_replicates < 2:
        raise ValueError("`n_cells_per_time` must be >= 1 and `n_replicates` >= 2.")
    if n_grid < 40:
        raise ValueError(f"`n_grid` must be at least 40 (the velocity taper spans 30 points), got {n_grid}.")
    var_pop = np.linspace(1e6, 6e6, len(times)) if var_pop is None else np.asarray(var_pop, float)
    if var_pop.shape != times.shape:
        raise ValueError(f"`var_pop` needs one value per time point ({len(times)}), got {var_pop.shape}.")
    rng = get_rng(random_state)

    f = _fields(theta_D, theta_v, growth, n_grid)
    grid = f["grid"]
    h = grid[1] - grid[0]
    a = fv_operator(f["D_faces"], f["v_faces"], f["g_centres"], h)
    u0 = _initial_density(grid, initial_size, initial_mu, initial_sigma)
    density = _solve(a, u0, times)
    total = density.sum(axis=1) * h

    # cells
    state = np.concatenate([_sample_states(density[k], grid, n_cells_per_time, rng) for k in range(len(times))])
    day = np.repeat(times, n_cells_per_time)
    t_idx = np.repeat(np.arange(len(times)), n_cells_per_time)
    vol = np.clip(np.searchsorted(grid, state, side="right") - 1, 0, n_grid - 2)
    g_cell = np.interp(state, f["centres"], f["g_centres"])
    v_cell = np.interp(state, f["faces"], f["v_faces"])
    d_cell = np.interp(state, f["faces"], f["D_faces"])

    sizes = rng.normal(total[:, None], np.sqrt(var_pop)[:, None], size=(len(times), n_replicates))
    pop = {
        "t": times,
        "mean": sizes.mean(axis=1),
        "std": sizes.std(axis=1, ddof=1),
        "n_lib": np.full(len(times), n_replicates, dtype=np.int64),
        "n_cells": np.full(len(times), n_cells_per_time, dtype=np.int64),
    }
    truth = {
        "grid": grid,
        "centres": f["centres"],
        "faces": f["faces"],
        "g": f["g_centres"],
        "v": f["v_centres"],
        "D": f["D_centres"],
        "v_faces": f["v_faces"],
        "D_faces": f["D_faces"],
        "t": times,
        "density": density,
        "N": total,
        "params": {
            "theta_D": np.asarray(theta_D, float),
            "theta_v": np.asarray(theta_v, float),
            "growth": np.asarray(growth, float),
            "knots": _KNOTS,
            "n_grid": int(n_grid),
            "initial_size": float(initial_size),
            "initial_mu": float(initial_mu),
            "initial_sigma": float(initial_sigma),
            "var_pop": var_pop,
            "n_replicates": int(n_replicates),
        },
    }
    n = len(state)
    obs = pd.DataFrame(
        {
            "day": day,
            "state": state,
            "true_g": g_cell,
            "true_D": d_cell,
            "true_density": density[t_idx, vol],
        },
        index=pd.Index([f"cell_{i}" for i in range(n)]),
    )
    adata = AnnData(obs=obs, obsm={"X_state": state[:, None], "true_v": v_cell[:, None]})
    adata.uns["pop"] = pop
    adata.uns["truth"] = truth
    logger.info(f"simulated 1-D population: {n} cells at times {times.tolist()}, N(t)/N(0) = {total / total[0]}")
    return adata


def _solve(a: sp.csr_matrix, u0: np.ndarray, times: np.ndarray) -> np.ndarray:
    """``exp(A t) u0`` at every time (rows), stepping between consecutive times.

    A dense matrix exponential (a few hundred volumes) rather than :func:`scipy.sparse.linalg.expm_multiply`,
    whose randomised norm estimate makes results differ in the last bits between calls.
    """
    from scipy.linalg import expm

    dense = a.toarray()
    propagators: dict[float, np.ndarray] = {}  # equal steps share one exponential
    out = np.empty((len(times), len(u0)))
    u, t_prev = u0, 0.0
    for k, t in enumerate(times):
        if t > t_prev:
            step = round(float(t - t_prev), 12)
            if step not in propagators:
                propagators[step] = expm(dense * step)
            u = propagators[step] @ u
        out[k] = u
        t_prev = t
    return out
