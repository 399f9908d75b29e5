"""Boltzmann transition matrices on a kNN graph, sparse end to end (numpy/scipy only).

Both the LSD prior (``P_ij ∝ A_ij exp(β (t_j − t_i))`` from a pseudotime ``t``) and the learned transitions
(``P_ij ∝ A_ij exp(−β (V_j − V_i))`` from the potential ``V``) are the same row-softmax of a score over the
neighbour *pattern* of a graph. It is computed edge by edge in O(edges) memory and time; every row subtracts its
own maximum before exponentiating, so no β or score range can overflow.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = [
    "binarize",
    "boltzmann_transitions",
    "edge_softmax",
    "fate_entropy",
    "phylogeny_mask",
    "row_normalize",
    "smooth_on_graph",
]


def binarize(graph: sp.spmatrix) -> sp.csr_matrix:
    """Return the neighbour pattern of ``graph`` as CSR with unit weights (explicit zeros dropped, indices sorted)."""
    g = sp.csr_matrix(graph, copy=True)
    g.eliminate_zeros()
    g.sum_duplicates()
    g.sort_indices()
    g.data = np.ones_like(g.data, dtype=np.float64)
    return g


def edge_softmax(indptr: np.ndarray, values: np.ndarray, beta: float = 1.0) -> np.ndarray:
    """Per CSR row, softmax of ``β · values`` over the row's stored entries, with the row maximum subtracted first.

    ``values`` holds one number per stored entry (aligned with the CSR ``data``); empty rows stay empty. Returns the
    new ``data`` array.
    """
    values = np.asarray(values, dtype=np.float64)
    data = np.zeros(values.size, dtype=np.float64)
    counts = np.diff(indptr)
    nonempty = counts > 0
    if not nonempty.any():
        return data
    starts = indptr[:-1][nonempty]
    row_max = np.full(counts.size, -np.inf)
    row_max[nonempty] = np.maximum.reduceat(values, starts)
    data = np.exp(beta * (values - np.repeat(row_max, counts)))
    row_sum = np.zeros(counts.size)
    row_sum[nonempty] = np.add.reduceat(data, starts)
    data /= np.repeat(row_sum, counts)
    return data


def _absorb_empty_rows(mat: sp.csr_matrix) -> tuple[sp.csr_matrix, np.ndarray]:
    """Give every row without an outgoing transition a self-loop of weight 1; return the matrix and those rows."""
    empty = np.flatnonzero(np.diff(mat.indptr) == 0)
    if empty.size:
        n = mat.shape[0]
        loops = sp.csr_matrix((np.ones(empty.size), (empty, empty)), shape=(n, n))
        mat = sp.csr_matrix(mat + loops)
        mat.sort_indices()
    return mat, empty


def boltzmann_transitions(
    graph: sp.spmatrix, score: np.ndarray, beta: float, *, absorb_empty: bool = True
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Row-stochastic ``P_ij ∝ 1[A_ij > 0] · exp(β (s_j − s_i))`` on the pattern of ``graph``.

    Parameters
    ----------
    graph
        Cell × cell graph; only its non-zero pattern is used (the reference binarises the connectivities).
    score
        Per-cell score ``s`` (pseudotime for the prior, ``−V`` for the learned transitions). The factor
        ``exp(−β s_i)`` cancels in the normalisation, so only neighbour differences matter.
    beta
        Inverse temperature (≥ 0).
    absorb_empty
        Rows without any neighbour get a self-loop (absorbing state) instead of staying empty.

    Returns
    -------
    ``(P, absorbing)``: the CSR float64 transition matrix and the indices of rows that were made absorbing.
    """
    a = binarize(graph)
    s = np.ascontiguousarray(score, dtype=np.float64)
    if s.shape != (a.shape[0],):
        raise ValueError(f"score has shape {s.shape}, expected ({a.shape[0]},).")
    if not np.isfinite(s).all():
        raise ValueError("score has non-finite values.")
    data = edge_softmax(a.indptr, s[a.indices], float(beta))
    p = sp.csr_matrix((data, a.indices, a.indptr), shape=a.shape)
    p.eliminate_zeros()  # exp underflow to exactly 0 for extreme β: keep the pattern honest
    empty = np.zeros(0, dtype=np.int64)
    if absorb_empty:
        p, empty = _absorb_empty_rows(p)
    return p, empty


def row_normalize(mat: sp.spmatrix, *, absorb_empty: bool = True) -> tuple[sp.csr_matrix, np.ndarray]:
    """Row-normalise a non-negative matrix; empty rows become absorbing self-loops (see :func:`boltzmann_transitions`)."""
    m = sp.csr_matrix(mat, dtype=np.float64, copy=True)
    m.eliminate_zeros()
    m.sum_duplicates()
    m.sort_indices()
    sums = np.asarray(m.sum(axis=1)).ravel()
    nz = sums > 0
    inv = np.zeros_like(sums)
    inv[nz] = 1.0 / sums[nz]
    m = sp.csr_matrix(sp.diags(inv) @ m)
    empty = np.zeros(0, dtype=np.int64)
    if absorb_empty:
        m, empty = _absorb_empty_rows(m)
    return m, empty


def phylogeny_mask(
    graph: sp.csr_matrix,
    codes: np.ndarray,
    categories: list[str],
    phylogeny: dict[str, list[str]],
    *,
    descendants: bool = False,
) -> sp.csr_matrix:
    """Keep the edges ``i → j`` of ``graph`` whose target cluster is the source's own cluster or a child of it.

    Parameters
    ----------
    graph
        CSR cell × cell graph.
    codes
        Integer cluster code of every cell (index into ``categories``).
    categories
        Cluster names.
    phylogeny
        ``{parent: [children, ...]}``.
    descendants
        Allow every descendant (children, grandchildren, ...), not only direct children as the reference does.

    Returns
    -------
    The masked CSR graph (same pattern subset, same weights).
    """
    k = len(categories)
    pos = {c: i for i, c in enumerate(categories)}
    allowed = np.eye(k, dtype=bool)
    children: dict[int, list[int]] = {i: [] for i in range(k)}
    for parent, kids in phylogeny.items():
        if parent not in pos:
            raise ValueError(f"phylogeny names cluster {parent!r}, which is not a cluster of the data ({categories}).")
        for kid in kids:
            if kid not in pos:
                raise ValueError(f"phylogeny names cluster {kid!r}, which is not a cluster of the data ({categories}).")
            children[pos[parent]].append(pos[kid])
    for i in range(k):
        stack, seen = list(children[i]), set()
        while stack:
            j = stack.pop()
            if j in seen:
                continue
            seen.add(j)
            allowed[i, j] = True
            if descendants:
                stack.extend(children[j])
    g = sp.csr_matrix(graph, copy=True)
    rows = np.repeat(np.arange(g.shape[0]), np.diff(g.indptr))
    keep = allowed[codes[rows], codes[g.indices]]
    g.data = np.where(keep, g.data, 0.0)
    g.eliminate_zeros()
    return g


def smooth_on_graph(graph: sp.spmatrix, values: np.ndarray, n_steps: int) -> np.ndarray:
    """Average ``values`` over each cell's neighbours (binarised graph) ``n_steps`` times; isolated cells keep theirs."""
    a = binarize(graph)
    deg = np.diff(a.indptr)
    inv = np.zeros(deg.size)
    inv[deg > 0] = 1.0 / deg[deg > 0]
    w = sp.csr_matrix(sp.diags(inv) @ a)
    out = np.asarray(values, dtype=np.float64).copy()
    for _ in range(int(n_steps)):
        out = np.where(deg > 0, w @ out, out)
    return out


def fate_entropy(
    transitions: sp.csr_matrix,
    states: np.ndarray,
    *,
    n_steps: int,
) -> np.ndarray:
    """Entropy of where the Markov chain started at each cell is after ``n_steps`` steps, over coarse states.

    ``H_i = −Σ_c M_ic log M_ic`` with ``M = P^n C`` and ``C`` the one-hot membership of cells in coarse states;
    computed by ``n`` sparse × (n_cells × n_states) products, never forming ``P^n``. Normalised by ``log(n_states)``
    so that it lies in [0, 1].
    """
    states = np.asarray(states)
    k = int(states.max()) + 1
    m = np.zeros((states.size, k))
    m[np.arange(states.size), states] = 1.0
    for _ in range(int(n_steps)):
        m = transitions @ m
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(m > 0, m * np.log(m), 0.0).sum(axis=1)
    return h / np.log(k) if k > 1 else np.zeros_like(h)
