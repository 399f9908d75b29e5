"""Project cell-cell transitions onto a low-dimensional embedding and smooth them on a grid (numpy/scipy only).

These functions hold the arithmetic behind :func:`waddington.pl.streamlines` and :func:`waddington.pl.potential`
so that it can be tested without drawing anything. Everything is sparse: memory grows with the number of graph
edges and with ``n_grid**2 * n_neighbors``, never with ``n_cells**2``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp


def _as_csr(mat: Any, n: int, where: str) -> sp.csr_matrix:
    csr = sp.csr_matrix(mat, dtype=np.float64)
    if csr.shape != (n, n):
        raise ValueError(f"{where} has shape {csr.shape}, expected ({n}, {n}) to match the embedding.")
    return csr


def _offdiag_binary(mat: sp.csr_matrix) -> sp.csr_matrix:
    out = mat.copy()
    out.setdiag(0)
    out.eliminate_zeros()
    out.data[:] = 1.0
    return out


def project_transitions(
    transitions: Any,
    embedding: np.ndarray,
    *,
    graph: Any | None = None,
) -> np.ndarray:
    """Project a transition matrix onto an embedding as one displacement vector per cell.

    For each cell ``i`` the arrow is the expected displacement under the transition matrix minus the displacement
    of an unbiased walk on the neighbour graph, scaled by the probability of leaving ``i``::

        v_i = sum_j P_ij (x_j - x_i) - (1 - P_ii) / k_i * sum_{j in N(i)} (x_j - x_i)

    so a uniform (or lazy uniform) random walk on the graph gives zero arrows and only the bias of ``P`` remains,
    as in CellRank's ``plot_projection`` and scVelo's ``velocity_embedding``. Computed with two sparse products.

    Parameters
    ----------
    transitions
        Row-stochastic cells × cells matrix (sparse or dense). Rows summing to zero (cells without outgoing
        transitions) get a zero arrow.
    embedding
        Coordinates, shape ``(n_cells, n_dims)``.
    graph
        Neighbour graph defining ``N(i)`` (e.g. ``adata.obsp["connectivities"]``); only its sparsity pattern is used,
        the diagonal is ignored. Defaults to the support of ``transitions``. Pass the kNN graph when the transitions
        are already one-sided (e.g. a pseudotime-biased prior), otherwise the bias is partly subtracted.

    Returns
    -------
    Array of shape ``(n_cells, n_dims)`` with one displacement vector per cell.
    """
    emb = np.asarray(embedding, dtype=np.float64)
    if emb.ndim != 2:
        raise ValueError(f"`embedding` must be 2-D (cells × dims), found shape {emb.shape}.")
    n = emb.shape[0]
    P = _as_csr(transitions, n, "the transition matrix")
    stay = P.diagonal()
    expected = P @ emb - np.asarray(P.sum(axis=1)).ravel()[:, None] * emb
    A = _offdiag_binary(P if graph is None else _as_csr(graph, n, "the neighbour graph"))
    k = np.asarray(A.sum(axis=1)).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        uniform = np.where(k[:, None] > 0, (A @ emb) / k[:, None] - emb, 0.0)
    leave = np.clip(np.asarray(P.sum(axis=1)).ravel() - stay, 0.0, None)
    return expected - leave[:, None] * uniform


def velocity_transitions(
    states: np.ndarray,
    velocity: np.ndarray,
    graph: Any,
    *,
    softmax_scale: float | None = None,
) -> tuple[sp.csr_matrix, float]:
    """Turn a per-cell velocity field into a transition matrix on a neighbour graph (cosine-softmax kernel).

    ``P_ij ∝ exp(scale * cos(v_i, s_j - s_i))`` over the neighbours ``j`` of ``i`` (diagonal excluded), the
    deterministic model of CellRank's ``VelocityKernel``. Cells with a zero velocity get uniform transitions.

    Parameters
    ----------
    states
        State-space coordinates ``s``, shape ``(n_cells, d)``.
    velocity
        Velocity ``v`` in the same space, shape ``(n_cells, d)``.
    graph
        Neighbour graph (sparsity pattern used).
    softmax_scale
        Inverse temperature. ``None`` uses ``1 / median(|cos|)`` over all edges, CellRank's heuristic.

    Returns
    -------
    The row-stochastic CSR matrix and the softmax scale used.
    """
    S = np.asarray(states, dtype=np.float64)
    V = np.asarray(velocity, dtype=np.float64)
    if S.shape != V.shape:
        raise ValueError(f"states {S.shape} and velocity {V.shape} must have the same shape.")
    A = _offdiag_binary(_as_csr(graph, S.shape[0], "the neighbour graph")).tocoo()
    rows, cols = A.row, A.col
    disp = S[cols] - S[rows]
    vr = V[rows]
    denom = np.linalg.norm(disp, axis=1) * np.linalg.norm(vr, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(denom > 0, np.einsum("ij,ij->i", disp, vr) / denom, 0.0)
    if softmax_scale is None:
        med = float(np.median(np.abs(cos))) if cos.size else 0.0
        softmax_scale = 1.0 / med if med > 0 else 1.0
    logits = softmax_scale * cos
    # subtract the row maximum before exponentiating (numerical stability)
    row_max = np.full(S.shape[0], -np.inf)
    np.maximum.at(row_max, rows, logits)
    w = np.exp(logits - row_max[rows])
    P = sp.csr_matrix((w, (rows, cols)), shape=A.shape)
    rs = np.asarray(P.sum(axis=1)).ravel()
    P = sp.diags(np.where(rs > 0, 1.0 / np.where(rs > 0, rs, 1.0), 0.0)) @ P
    return sp.csr_matrix(P), float(softmax_scale)


def make_grid(embedding: np.ndarray, n_grid: int = 40, pad: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """Regular 2-D grid over the bounding box of ``embedding`` (padded by ``pad`` of the range on each side).

    Returns
    -------
    The grid axes ``(xs, ys)``, each of length ``n_grid``.
    """
    emb = np.asarray(embedding, dtype=np.float64)
    lo, hi = emb.min(axis=0), emb.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    xs = np.linspace(lo[0] - pad * span[0], hi[0] + pad * span[0], n_grid)
    ys = np.linspace(lo[1] - pad * span[1], hi[1] + pad * span[1], n_grid)
    return xs, ys


def smooth_on_grid(
    embedding: np.ndarray,
    values: np.ndarray,
    *,
    n_grid: int = 40,
    smooth: float = 0.5,
    min_mass: float = 0.01,
    n_neighbors: int | None = None,
) -> dict[str, np.ndarray]:
    """Gaussian-kernel average of per-cell values on a regular grid over a 2-D embedding.

    Each grid point averages the values of its ``n_neighbors`` nearest cells (scipy ``cKDTree``) with weights
    ``exp(-d² / (2 σ²))``, ``σ = smooth × grid spacing``; the summed weight is the point's cell *mass*. Points whose
    mass is below ``min_mass`` × the 99th percentile of the mass are masked (NaN), so nothing is drawn far from
    cells. This is scVelo's ``compute_velocity_on_grid`` with the normalisation done as a weighted mean.

    Parameters
    ----------
    embedding
        2-D coordinates, shape ``(n_cells, 2)``.
    values
        Per-cell values, shape ``(n_cells,)`` or ``(n_cells, m)`` (e.g. the two components of an arrow).
    n_grid
        Grid points per axis.
    smooth
        Kernel width in units of the grid spacing.
    min_mass
        Relative cell mass below which a grid point is masked.
    n_neighbors
        Cells considered per grid point; default ``max(10, n_cells // 50)`` (capped at ``n_cells``).

    Returns
    -------
    Dict with ``"x"``, ``"y"`` (grid axes, length ``n_grid``), ``"values"`` (``(n_grid, n_grid)`` or
    ``(m, n_grid, n_grid)``, indexed ``[..., iy, ix]`` as :func:`matplotlib.pyplot.streamplot` expects, NaN where
    masked), ``"mass"`` (``(n_grid, n_grid)``) and ``"mask"`` (True where masked).
    """
    emb = np.asarray(embedding, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[1] != 2:
        raise ValueError(f"`embedding` must have shape (n_cells, 2), found {emb.shape}.")
    vals = np.asarray(values, dtype=np.float64)
    scalar = vals.ndim == 1
    vals = vals[:, None] if scalar else vals
    if vals.shape[0] != emb.shape[0]:
        raise ValueError(f"`values` has {vals.shape[0]} rows but the embedding has {emb.shape[0]} cells.")
    if n_grid < 2:
        raise ValueError(f"`n_grid` must be at least 2, got {n_grid}.")
    if smooth <= 0:
        raise ValueError(f"`smooth` must be positive, got {smooth}.")
    from scipy.spatial import cKDTree  # lazily: `import waddington` stays free of scipy.spatial (~15 MiB)

    ok = np.isfinite(emb).all(axis=1) & np.isfinite(vals).all(axis=1)
    emb, vals = emb[ok], vals[ok]
    n = emb.shape[0]
    if n == 0:
        raise ValueError("no cell has finite coordinates and values.")
    xs, ys = make_grid(emb, n_grid)
    gx, gy = np.meshgrid(xs, ys)  # (n_grid, n_grid), [iy, ix]
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    k = min(n, n_neighbors if n_neighbors is not None else max(10, n // 50))
    sigma = smooth * 0.5 * ((xs[1] - xs[0]) + (ys[1] - ys[0]))
    dist, idx = cKDTree(emb).query(grid, k=k, distance_upper_bound=4.0 * sigma)
    dist, idx = np.atleast_2d(dist.T).T, np.atleast_2d(idx.T).T  # keep (n_points, k) also for k == 1
    found = idx < n
    w = np.where(found, np.exp(-0.5 * (np.where(found, dist, 0.0) / sigma) ** 2), 0.0)
    mass = w.sum(axis=1)
    idx_safe = np.where(found, idx, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        avg = np.einsum("pk,pkm->pm", w, vals[idx_safe]) / mass[:, None]
    ref = np.percentile(mass, 99)
    mask = mass <= min_mass * ref if ref > 0 else np.ones_like(mass, dtype=bool)
    avg[mask] = np.nan
    out = avg.T.reshape(vals.shape[1], n_grid, n_grid)
    return {
        "x": xs,
        "y": ys,
        "values": out[0] if scalar else out,
        "mass": mass.reshape(n_grid, n_grid),
        "mask": mask.reshape(n_grid, n_grid),
    }
