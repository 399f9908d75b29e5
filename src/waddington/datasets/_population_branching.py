"""A 2-D branching particle model with known drift, diffusion, birth and death (ground truth for pseudodynamics)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from waddington._utils import get_rng, logger
from waddington._utils._random import RandomState


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def branching_fields(xy: np.ndarray, params: dict) -> dict[str, np.ndarray]:
    r"""Drift, birth and death rates of the branching model at positions ``xy`` (n × 2).

    The drift moves cells along x at speed ``speed`` and, once x passes ``x_split``, pushes y into one of the two
    wells of :math:`y - y^3 / w^2` (branches at :math:`y = \pm w`):

    .. math::

        v(x, y) = \left(a,\; b\, \sigma\!\left(\tfrac{x - x_0}{\ell}\right) (y - y^3 / w^2)\right).

    Birth is high in the progenitor region and stays moderate in the upper branch; death rises in the lower
    branch:

    .. math::

        \beta(x, y) = \beta_\infty + (\beta_0 - \beta_\infty)(1 - \sigma_x) + \beta_{up} \sigma_x \sigma(4 y),
        \qquad \delta(x, y) = \delta_0 + \delta_{low}\, \sigma\!\left(\tfrac{x - x_0 - 0.5}{\ell}\right)
        \sigma(-4 y),

    with :math:`\sigma_x = \sigma((x - x_0)/\ell)`.

    Parameters
    ----------
    xy
        Positions, shape (n, 2).
    params
        The model's parameters, as stored in ``adata.uns["truth"]["params"]`` by :func:`population_branching`.

    Returns
    -------
    ``{"v": (n, 2), "birth": (n,), "death": (n,), "g": (n,)}`` with ``g = birth − death``.
    """
    x, y = xy[:, 0], xy[:, 1]
    s_x = _sigmoid((x - params["x_split"]) / params["split_width"])
    v = np.column_stack(
        [
            np.full_like(x, params["speed"]),
            params["branch_rate"] * s_x * (y - y**3 / params["branch_distance"] ** 2),
        ]
    )
    birth = (
        params["birth_late"]
        + (params["birth_progenitor"] - params["birth_late"]) * (1.0 - s_x)
        + params["birth_upper"] * s_x * _sigmoid(4.0 * y)
    )
    s_death = _sigmoid((x - params["x_split"] - 0.5) / params["split_width"])
    death = params["death_base"] + params["death_lower"] * s_death * _sigmoid(-4.0 * y)
    return {"v": v, "birth": birth, "death": death, "g": birth - death}


def population_branching(
    *,
    n_cells_per_time: int = 500,
    times: Sequence[float] = (0, 1, 2, 3, 4, 5),
    n_initial: int = 500,
    diffusion: float = 0.01,
    dt: float = 0.01,
    pop_rel_std: float = 0.01,
    random_state: RandomState = 0,
) -> AnnData:
    r"""Simulate a 2-D branching population of individual cells with known drift, diffusion, birth and death.

    Each cell moves by Euler–Maruyama, :math:`dX = v(X)\, dt + \sqrt{2 D}\, dW` with constant isotropic ``D``, so
    the density follows :math:`u_t = D \Delta u - \nabla \cdot (v u) + g u` with :math:`g = \beta - \delta`.
    In every step a cell divides (a copy at the same position) with probability :math:`\beta\, dt` or dies with
    probability :math:`\delta\, dt`. Cells start around the origin, travel along x, and split into an upper
    (growing) and a lower (dying) branch after ``x ≈ 2`` (see :func:`branching_fields` for the fields). All cells
    are simulated together, vectorised.

    At each time ``n_cells_per_time`` cells are sequenced (a subsample without replacement; all cells when fewer
    exist). ``uns["pop"]["mean"]`` holds the exact number of simulated cells N(t) and ``std`` a nominal
    measurement error of ``pop_rel_std * N(t)``.

    Parameters
    ----------
    n_cells_per_time
        Sequenced cells per time point.
    times
        Sampling times; rounded to multiples of ``dt``.
    n_initial
        Cells at time 0.
    diffusion
        Diffusion coefficient D (constant, isotropic).
    dt
        Euler–Maruyama step.
    pop_rel_std
        Relative standard deviation reported with the population sizes.
    random_state
        Seed of the simulation and of the subsampling.

    Returns
    -------
    :class:`~anndata.AnnData` (cells × 0 genes) with

    - ``obs["day"]`` (time), ``obsm["X_state"]`` (n × 2, the position, which is also the embedding to plot);
    - ``uns["pop"]`` = ``{"t", "mean", "std", "n_lib", "n_cells"}`` (``mean`` = exact N(t), ``std`` =
      ``pop_rel_std * N``, ``n_lib`` = 1 count per time, ``n_cells`` = sequenced cells);
    - truth per cell: ``obs["true_g"]``, ``obs["true_birth"]``, ``obs["true_death"]``, ``obsm["true_v"]`` (n × 2,
      the drift), ``obs["true_D"]``;
    - ``uns["truth"]``: ``t``, ``N`` (exact counts at the sampling times), ``t_grid``, ``N_grid`` and
      ``mean_g_grid`` (N and the population-mean growth rate at every step), and ``params`` (the field
      parameters, evaluate them with :func:`branching_fields`).

    Examples
    --------
    >>> import waddington as wd
    >>> adata = wd.datasets.population_branching(n_cells_per_time=200, n_initial=200)
    >>> adata.obsm["X_state"].shape[1]
    2
    >>> sorted(adata.uns["pop"])
    ['mean', 'n_cells', 'n_lib', 'std', 't']
    """
    times = np.asarray(times, dtype=float)
    if times.ndim != 1 or len(times) < 1 or np.any(np.diff(times) <= 0) or times[0] < 0:
        raise ValueError(f"`times` must be non-negative and strictly increasing, got {times.tolist()}.")
    if n_cells_per_time < 1 or n_initial < 1:
        raise ValueError("`n_cells_per_time` and `n_initial` must be positive.")
    if dt <= 0 or diffusion < 0:
        raise ValueError("`dt` must be positive and `diffusion` non-negative.")
    rng = get_rng(random_state)
    params = {
        "speed": 1.0,
        "x_split": 2.0,
        "split_width": 0.3,
        "branch_rate": 1.5,
        "branch_distance": 1.0,
        "birth_progenitor": 0.8,
        "birth_late": 0.3,
        "birth_upper": 0.3,
        "death_base": 0.1,
        "death_lower": 0.5,
        "diffusion": float(diffusion),
        "dt": float(dt),
        "n_initial": int(n_initial),
        "initial_sd": np.array([0.25, 0.15]),
    }
    sample_steps = np.round(times / dt).astype(int)
    n_steps = int(sample_steps[-1])
    sample_set = set(sample_steps.tolist())
    xy = rng.normal(0.0, 1.0, size=(n_initial, 2)) * params["initial_sd"]
    noise_scale = np.sqrt(2.0 * diffusion * dt)

    n_grid = np.empty(n_steps + 1, dtype=np.int64)
    mean_g = np.empty(n_steps + 1)
    snapshots: dict[int, np.ndarray] = {}
    for step in range(n_steps + 1):
        fields = branching_fields(xy, params)
        n_grid[step] = len(xy)
        mean_g[step] = fields["g"].mean() if len(xy) else 0.0
        if step in sample_set:
            snapshots[step] = xy.copy()
        if step == n_steps:
            break
        u = rng.random(len(xy))
        p_death = fields["death"] * dt
        dies = u < p_death
        divides = (u >= p_death) & (u < p_death + fields["birth"] * dt)
        xy = xy + fields["v"] * dt + noise_scale * rng.standard_normal(xy.shape)
        xy = np.concatenate([xy[~dies], xy[divides]])

    states, days = [], []
    for t, step in zip(times, sample_steps, strict=True):
        cells = snapshots[step]
        if len(cells) == 0:
            raise ValueError(f"The population died out before t={t}; lower the death rates or raise `n_initial`.")
        take = rng.choice(len(cells), size=min(n_cells_per_time, len(cells)), replace=False)
        states.append(cells[np.sort(take)])
        days.append(np.full(len(take), t))
    state = np.concatenate(states)
    day = np.concatenate(days)
    truth_cells = branching_fields(state, params)
    n_exact = n_grid[sample_steps].astype(float)
    n_seq = np.array([len(s) for s in states], dtype=np.int64)

    n = len(state)
    obs = pd.DataFrame(
        {
            "day": day,
            "true_g": truth_cells["g"],
            "true_birth": truth_cells["birth"],
            "true_death": truth_cells["death"],
            "true_D": np.full(n, float(diffusion)),
        },
        index=pd.Index([f"cell_{i}" for i in range(n)]),
    )
    adata = AnnData(obs=obs, obsm={"X_state": state, "true_v": truth_cells["v"]})
    adata.uns["pop"] = {
        "t": times,
        "mean": n_exact,
        "std": pop_rel_std * n_exact,
        "n_lib": np.ones(len(times), dtype=np.int64),
        "n_cells": n_seq,
    }
    adata.uns["truth"] = {
        "t": times,
        "N": n_exact,
        "t_grid": np.arange(n_steps + 1) * dt,
        "N_grid": n_grid,
        "mean_g_grid": mean_g,
        "params": params,
    }
    logger.info(f"simulated branching population: {n} sequenced cells, N(t) = {n_exact.astype(int).tolist()}")
    return adata
