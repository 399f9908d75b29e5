"""A stochastic Gata1/Spi1 toggle switch with known fates and knockout effects (ground truth for LSD)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from waddington._utils import get_rng, logger
from waddington._utils._random import RandomState

_REGULATORS = ("Gata1", "Spi1")
_FATES = ("Ery", "Mye")
_LAGS = (0.25, 0.75, 1.5)  # time constants of the target-gene programmes (fraction of a time unit)


def _simulate_network(
    *,
    n_trajectories: int,
    n_steps: int,
    t_max: float,
    params: dict,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate wild type, Gata1 knockout and Spi1 knockout with the same initial states and noise.

    The three conditions are stacked along the trajectory axis so that one vectorised Euler–Maruyama loop runs
    them all. Returns the wild-type path of every latent variable, shape ``(n_steps + 1, n_vars, n_trajectories)``
    with variables ``[P, G, S, G_lag..., S_lag...]``, and the final ``(G, S)`` of every condition, shape
    ``(3, 2, n_trajectories)``.
    """
    dt = t_max / n_steps
    n = n_trajectories
    hill_n = params["hill_n"]
    k_n = params["threshold"] ** hill_n
    c, a, b = params["progenitor_level"], params["self_activation"], params["repression"]
    bias = np.array([params["gata1_bias"], 1.0])[:, None]
    sigma, sigma_p, k_p = params["noise"], params["progenitor_noise"], params["progenitor_decay"]

    # initial states: balanced around the progenitor level, with a small per-trajectory priming offset
    g0 = c + params["initial_spread"] * rng.standard_normal((2, n))
    p0 = np.ones(n)
    noise = rng.standard_normal((n_steps, 3, n)) * np.sqrt(dt)

    # conditions: 0 = wild type, 1 = Gata1 knockout, 2 = Spi1 knockout
    x = np.tile(np.clip(g0, 0.0, None), (1, 3))  # (2, 3n) regulator levels G, S
    keep = np.ones((2, 3 * n))
    keep[0, n : 2 * n] = 0.0
    keep[1, 2 * n :] = 0.0
    x *= keep
    p = p0.copy()
    lags = np.asarray(_LAGS)[:, None, None]
    lagged = np.repeat(x[None, :, :n], len(_LAGS), axis=0)  # (n_lags, 2, n), wild type only

    path = np.empty((n_steps + 1, 3 + 2 * len(_LAGS), n))
    path[0, 0], path[0, 1:3], path[0, 3:] = p, x[:, :n], lagged.reshape(-1, n)
    for i in range(n_steps):
        w = np.tile(1.0 - p, 3)
        xn = x**hill_n
        self_act = xn / (k_n + xn)
        repress = k_n / (k_n + xn[::-1])
        drift = np.tile(p, 3) * c + 0.5 * w * (a * bias * self_act + b * repress) - x
        x = np.maximum(x + drift * dt + sigma * np.tile(noise[i, 1:], (1, 3)), 0.0) * keep
        p = np.maximum(p - k_p * p * dt + sigma_p * np.sqrt(p) * noise[i, 0], 0.0)
        lagged += (x[None, :, :n] - lagged) * (dt / lags)
        path[i + 1, 0], path[i + 1, 1:3], path[i + 1, 3:] = p, x[:, :n], lagged.reshape(-1, n)
    final = x.reshape(2, 3, n).transpose(1, 0, 2)
    return path, final


def _counts(rates: np.ndarray, library: np.ndarray, dispersion: np.ndarray, rng: np.random.Generator) -> sp.csr_matrix:
    """Negative-binomial (gamma–Poisson) counts with mean ``library * rates`` and gene-wise dispersion."""
    mean = library[:, None] * rates
    lam = rng.gamma(shape=dispersion[None, :], scale=mean / dispersion[None, :])
    counts = rng.poisson(lam)
    return sp.csr_matrix(counts.astype(np.int32))


def toggle_switch(
    n_cells: int = 2000,
    n_genes: int = 500,
    *,
    n_trajectories: int = 400,
    n_target_genes: int = 30,
    n_progenitor_genes: int = 30,
    noise: float = 0.04,
    initial_spread: float = 0.2,
    gata1_bias: float = 1.05,
    progenitor_decay: float = 0.6,
    t_max: float = 10.0,
    n_steps: int = 500,
    progenitor_time: float = 2.0,
    library_size: float = 3000.0,
    library_size_sd: float = 0.3,
    preprocess: bool = True,
    random_state: RandomState = 0,
) -> AnnData:
    r"""Simulate an erythroid/myeloid toggle switch with known time, fates and knockout effects.

    A decaying progenitor factor ``P`` holds two master regulators, Gata1 (``G``) and Spi1 (``S``), at a balanced
    progenitor level. As ``P`` decays, their self-activation (Hill) and mutual repression take over and the switch
    resolves into one of two basins, Gata1-high (``"Ery"``) or Spi1-high (``"Mye"``). Each trajectory follows the
    stochastic differential equations

    .. math::

        dG = \left[P c + \tfrac{1 - P}{2}\left(\beta a \frac{G^n}{K^n + G^n} + b \frac{K^n}{K^n + S^n}\right) -
        G\right] dt + \sigma\, dW_G, \qquad dP = -k_P P\, dt + \sigma_P \sqrt{P}\, dW_P,

    and symmetrically for ``S`` (without the mild Gata1 bias :math:`\beta`), integrated by Euler–Maruyama for all
    trajectories at once. Fate is decided gradually around the middle of the time course; part of it is set early
    by a small per-trajectory priming offset of the initial state, the rest by noise.

    Genes: the two regulators; ``n_target_genes`` targets per fate (``"EryA_1"``..., ``"MyeB_1"``...) that follow
    a low-pass filtered copy of their regulator through a Hill function; ``n_progenitor_genes`` genes that follow
    ``P`` (``"Prog_1"``...); and noise genes with constant expression (``"Noise_1"``...). Counts are negative
    binomial with log-normal cell-specific library sizes. Cells are sampled at uniformly random times along
    ``n_trajectories`` trajectories.

    Knockouts are simulated from the same initial states with the same noise realisations, with the regulator
    clamped at 0 for the whole run. Only the two regulators feed back on the dynamics, so knocking out any other
    gene has no effect on fates.

    Parameters
    ----------
    n_cells
        Number of cells sampled.
    n_genes
        Number of genes (regulators, targets, progenitor genes, and noise genes filling the rest).
    n_trajectories
        Number of simulated trajectories; each contributes about ``n_cells / n_trajectories`` cells.
    n_target_genes
        Target genes per fate.
    n_progenitor_genes
        Genes that follow the progenitor factor ``P``.
    noise
        Standard deviation :math:`\sigma` of the regulators' Brownian noise.
    initial_spread
        Standard deviation of the regulators' initial states (the priming that fixes part of the fate early).
    gata1_bias
        Relative strength of Gata1's self-activation; ``1.0`` is a symmetric switch, above 1 favours ``"Ery"``.
    progenitor_decay
        Decay rate :math:`k_P` of the progenitor factor; the switch resolves once ``P`` has fallen to about a
        third, i.e. around ``t = 1 / k_P`` and later.
    t_max
        Length of the time course (``obs["true_time"]`` lies in ``[0, t_max]``).
    n_steps
        Euler–Maruyama steps.
    progenitor_time
        Cells with ``true_time <= progenitor_time`` count as uncommitted progenitors in ``uns["truth"]``.
    library_size
        Median total counts per cell.
    library_size_sd
        Standard deviation of the log library-size factor.
    preprocess
        Also compute PCA, the kNN graph, Leiden clusters, diffusion map, DPT and UMAP with scanpy.
    random_state
        Seed of the simulation and of every stochastic preprocessing step.

    Returns
    -------
    :class:`~anndata.AnnData` with

    - ``layers["raw"]``: integer counts (CSR, int32); ``obs["librarysize"]``: total counts per cell;
    - ``X``: ``log1p(normalize_total(counts))`` (CSR, float32), also when ``preprocess=False``;
    - ``obs["true_time"]``, ``obs["true_fate"]`` (categorical, the basin the cell's trajectory ends in),
      ``obs["trajectory"]``;
    - ``var["gene_type"]`` (``"regulator"``, ``"target_Ery"``, ``"target_Mye"``, ``"progenitor"``, ``"noise"``);
    - ``uns["truth"]``: ``fate_fractions`` (``"wild_type"``, ``"Gata1_knockout"``, ``"Spi1_knockout"``, each a
      dict fate -> fraction over the uncommitted progenitor cells), ``fate_fractions_trajectories`` (same, over all
      trajectories), ``knockout_fates`` (per-cell fate under each knockout), ``progenitor_time``,
      ``master_regulators``, ``fates``, ``target_genes`` (fate -> gene names), ``progenitor_genes``,
      ``noise_genes``, ``regulator_levels`` (per-cell latent ``P``, ``Gata1``, ``Spi1``) and ``params``;
    - with ``preprocess=True``: ``obsm["X_pca"]``, ``obsp["connectivities"]``, ``obsp["distances"]``,
      ``obs["clusters"]``, ``uns["iroot"]`` (the earliest cell), ``obsm["X_diffmap"]``,
      ``obs["dpt_pseudotime"]`` and ``obsm["X_umap"]``.

    Examples
    --------
    >>> import waddington as wd
    >>> adata = wd.datasets.toggle_switch(n_cells=500, n_genes=200, preprocess=False)
    >>> adata.obs["true_fate"].value_counts().sort_index().index.tolist()
    ['Ery', 'Mye']
    >>> adata.uns["truth"]["fate_fractions"]["Gata1_knockout"]["Mye"] > 0.9
    True
    """
    n_fixed = 2 + 2 * n_target_genes + n_progenitor_genes
    if n_genes < n_fixed:
        raise ValueError(
            f"`n_genes` must be at least 2 + 2 * n_target_genes + n_progenitor_genes = {n_fixed}, got {n_genes}; "
            "increase `n_genes` or lower `n_target_genes` / `n_progenitor_genes`."
        )
    for name, value in (("n_cells", n_cells), ("n_trajectories", n_trajectories), ("n_steps", n_steps)):
        if value < 1:
            raise ValueError(f"`{name}` must be positive, got {value}.")
    if not 0 <= progenitor_time <= t_max:
        raise ValueError(f"`progenitor_time` must lie in [0, t_max={t_max}], got {progenitor_time}.")
    rng = get_rng(random_state)

    params = {
        "hill_n": 4.0,
        "threshold": 0.5,
        "progenitor_level": 0.5,
        "self_activation": 1.0,
        "repression": 1.0,
        "gata1_bias": float(gata1_bias),
        "noise": float(noise),
        "progenitor_noise": 0.02,
        "progenitor_decay": float(progenitor_decay),
        "initial_spread": float(initial_spread),
        "t_max": float(t_max),
        "n_steps": int(n_steps),
        "n_trajectories": int(n_trajectories),
        "library_size": float(library_size),
        "library_size_sd": float(library_size_sd),
        "target_lags": np.asarray(_LAGS),
    }
    path, final = _simulate_network(n_trajectories=n_trajectories, n_steps=n_steps, t_max=t_max, params=params, rng=rng)
    fates = np.asarray(_FATES)
    traj_fate = {  # 0 -> Ery (Gata1 high), 1 -> Mye
        cond: fates[(final[k, 1] > final[k, 0]).astype(int)]
        for k, cond in enumerate(("wild_type", "Gata1_knockout", "Spi1_knockout"))
    }

    # sample cells: trajectories in turn, times uniformly at random on the step grid
    traj = np.arange(n_cells) % n_trajectories
    step = rng.integers(0, n_steps + 1, size=n_cells)
    order = np.lexsort((traj, step))
    traj, step = traj[order], step[order]
    true_time = step * (t_max / n_steps)
    state = path[step, :, traj]  # (n_cells, n_vars)
    p_level, regulators = state[:, 0], state[:, 1:3]
    lagged = state[:, 3:].reshape(n_cells, len(_LAGS), 2)

    # gene programmes
    n_noise = n_genes - n_fixed
    gene_names = list(_REGULATORS)
    gene_names += [f"EryA_{i + 1}" for i in range(n_target_genes)] + [f"MyeB_{i + 1}" for i in range(n_target_genes)]
    gene_names += [f"Prog_{i + 1}" for i in range(n_progenitor_genes)] + [f"Noise_{i + 1}" for i in range(n_noise)]
    gene_type = (
        ["regulator"] * 2
        + ["target_Ery"] * n_target_genes
        + ["target_Mye"] * n_target_genes
        + ["progenitor"] * n_progenitor_genes
        + ["noise"] * n_noise
    )
    scale = library_size / 3000.0  # rates below are tuned for ~3000 counts per cell
    rates = np.empty((n_cells, n_genes))
    rates[:, :2] = 3.0 + 45.0 * regulators
    col = 2
    for fate_idx in range(2):
        lag_idx = rng.integers(0, len(_LAGS), size=n_target_genes)
        theta = rng.uniform(0.3, 0.7, size=n_target_genes)
        amp = rng.lognormal(np.log(15.0), 0.5, size=n_target_genes)
        base = rng.lognormal(np.log(1.5), 0.5, size=n_target_genes)
        level = lagged[:, lag_idx, fate_idx] ** 2
        rates[:, col : col + n_target_genes] = base + amp * level / (theta**2 + level)
        col += n_target_genes
    exponent = rng.uniform(0.25, 1.5, size=n_progenitor_genes)
    amp = rng.lognormal(np.log(12.0), 0.5, size=n_progenitor_genes)
    base = rng.lognormal(np.log(1.0), 0.5, size=n_progenitor_genes)
    rates[:, col : col + n_progenitor_genes] = base + amp * p_level[:, None] ** exponent
    col += n_progenitor_genes
    rates[:, col:] = rng.lognormal(np.log(3.0), 1.0, size=n_noise)
    rates *= scale

    library = rng.lognormal(0.0, library_size_sd, size=n_cells)
    dispersion = rng.uniform(5.0, 20.0, size=n_genes)
    counts = _counts(rates, library, dispersion, rng)
    total = np.asarray(counts.sum(axis=1)).ravel()

    # truth
    is_prog = true_time <= progenitor_time
    if not is_prog.any():
        raise ValueError(
            f"No cell has true_time <= progenitor_time={progenitor_time}; increase `progenitor_time` or `n_cells`."
        )
    cell_fate = {cond: f[traj] for cond, f in traj_fate.items()}
    fate_fractions = {cond: {f: float(np.mean(v[is_prog] == f)) for f in _FATES} for cond, v in cell_fate.items()}
    fate_fractions_traj = {cond: {f: float(np.mean(v == f)) for f in _FATES} for cond, v in traj_fate.items()}
    truth = {
        "fate_fractions": fate_fractions,
        "fate_fractions_trajectories": fate_fractions_traj,
        "knockout_fates": {k: v.astype(str) for k, v in cell_fate.items() if k != "wild_type"},
        "progenitor_time": float(progenitor_time),
        "n_progenitor_cells": int(is_prog.sum()),
        "master_regulators": np.asarray(_REGULATORS),
        "fates": np.asarray(_FATES),
        "regulator_fate": {"Gata1": "Ery", "Spi1": "Mye"},
        "target_genes": {
            "Ery": np.asarray(gene_names[2 : 2 + n_target_genes]),
            "Mye": np.asarray(gene_names[2 + n_target_genes : 2 + 2 * n_target_genes]),
        },
        "progenitor_genes": np.asarray(gene_names[2 + 2 * n_target_genes : n_fixed]),
        "noise_genes": np.asarray(gene_names[n_fixed:], dtype=str),
        "regulator_levels": {"P": p_level, "Gata1": regulators[:, 0], "Spi1": regulators[:, 1]},
        "params": params,
    }

    obs = pd.DataFrame(
        {
            "true_time": true_time.astype(float),
            "true_fate": pd.Categorical(cell_fate["wild_type"], categories=list(_FATES)),
            "trajectory": traj.astype(np.int64),
            "librarysize": total.astype(float),
        },
        index=pd.Index([f"cell_{i}" for i in range(n_cells)]),
    )
    var = pd.DataFrame({"gene_type": pd.Categorical(gene_type)}, index=pd.Index(gene_names))
    adata = AnnData(X=_log_normalise(counts), obs=obs, var=var, layers={"raw": counts})
    adata.uns["truth"] = truth
    if preprocess:
        _preprocess(adata, random_state=rng.integers(0, 2**31 - 1))
    logger.info(
        f"simulated toggle switch: {n_cells} cells x {n_genes} genes, {n_trajectories} trajectories, "
        f"wild-type progenitor fates {fate_fractions['wild_type']}"
    )
    return adata


def _log_normalise(counts: sp.csr_matrix) -> sp.csr_matrix:
    """``log1p`` of counts scaled to the median total count (what ``sc.pp.normalize_total`` does by default)."""
    total = np.asarray(counts.sum(axis=1)).ravel().astype(np.float64)
    target = np.median(total[total > 0]) if (total > 0).any() else 1.0
    factor = np.divide(target, total, out=np.zeros_like(total), where=total > 0)
    x = sp.diags(factor) @ counts.astype(np.float64)
    x = sp.csr_matrix(x, dtype=np.float32)
    x.data = np.log1p(x.data)
    return x


def _preprocess(adata: AnnData, *, random_state: int) -> None:
    """PCA, kNN graph, Leiden clusters, diffusion map, DPT rooted at the earliest cell, and UMAP (scanpy)."""
    import scanpy as sc

    seed = int(random_state)
    n_comps = min(30, adata.n_vars - 1, adata.n_obs - 1)
    sc.pp.pca(adata, n_comps=n_comps, random_state=seed)
    # From 4,096 cells scanpy switches to pynndescent, whose sparse output scanpy 1.11 cannot read with scipy's
    # csr_array (AttributeError 'getnnz'); exact neighbours from scikit-learn work at every size.
    transformer = "sklearn" if adata.n_obs >= 4096 else None
    sc.pp.neighbors(adata, n_neighbors=15, use_rep="X_pca", random_state=seed, transformer=transformer)
    sc.tl.leiden(adata, flavor="igraph", n_iterations=2, directed=False, key_added="clusters", random_state=seed)
    adata.uns["iroot"] = int(np.argmin(adata.obs["true_time"].to_numpy()))
    sc.tl.diffmap(adata, random_state=seed)
    sc.tl.dpt(adata)
    sc.tl.umap(adata, random_state=seed)
