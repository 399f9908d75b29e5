"""Optimal-transport pairing of cells of consecutive time points for conditional flow matching (POT).

Balanced pairing is the exact minibatch OT plan (``ot.emd``, as torchcfm's ``ExactOptimalTransportConditional
FlowMatcher``; ``ot.emd_1d`` for one-dimensional states, the same plan by sorting); unbalanced pairing is POT's entropic ``sinkhorn_unbalanced`` with a relaxed marginal ``reg_m``,
which the reference found to avoid pairing cells into high-growth regions (cosine 0.72 → 0.90 on its synthetic
data). Pairs are drawn from the plan with a numpy generator, so a seed fixes them.
"""

from __future__ import annotations

import numpy as np


def ot_plan(x0: np.ndarray, x1: np.ndarray, *, unbalanced_reg_m: float | None = None, reg: float = 0.05) -> np.ndarray:
    """Transport plan between two point clouds with uniform marginals.

    Parameters
    ----------
    x0, x1
        Source (n0×d) and target (n1×d) states.
    unbalanced_reg_m
        ``None`` for balanced exact OT; a positive float for unbalanced entropic OT with this marginal relaxation.
    reg
        Entropic regularisation of the unbalanced solver (the cost is divided by its mean first, as the reference).

    Returns
    -------
    The (n0, n1) plan (non-negative, sums to about one).
    """
    import ot

    x0 = np.asarray(x0, dtype=np.float64)
    x1 = np.asarray(x1, dtype=np.float64)
    a = np.full(x0.shape[0], 1.0 / x0.shape[0])
    b = np.full(x1.shape[0], 1.0 / x1.shape[0])
    if unbalanced_reg_m is None and x0.shape[1] == 1:
        # on a line the squared-distance plan is the monotone (sorted) matching: POT's O(n log n) solver gives the
        # plan of the network simplex (the same one wherever the optimum is unique) about 8x faster at 100 cells
        return np.asarray(ot.emd_1d(x0[:, 0], x1[:, 0], a, b, metric="sqeuclidean"), dtype=np.float64)
    cost = ot.dist(x0, x1)
    mean = cost.mean()
    if mean > 0:
        cost = cost / mean
    if unbalanced_reg_m is None:
        plan = ot.emd(a, b, cost)
    else:
        plan = ot.unbalanced.sinkhorn_unbalanced(a, b, cost, reg, float(unbalanced_reg_m), numItermax=100)
    plan = np.nan_to_num(np.asarray(plan, dtype=np.float64), nan=0.0, posinf=0.0)
    if plan.sum() <= 0:  # degenerate plan: fall back to independent pairing
        plan = np.outer(a, b)
    return plan


def sample_pairs(
    x0: np.ndarray,
    x1: np.ndarray,
    rng: np.random.Generator,
    *,
    unbalanced_reg_m: float | None = None,
    n_pairs: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n_pairs`` index pairs ``(i, j)`` from the OT plan between ``x0`` and ``x1``.

    Returns
    -------
    Index arrays into ``x0`` and ``x1``.
    """
    plan = ot_plan(x0, x1, unbalanced_reg_m=unbalanced_reg_m)
    n = x0.shape[0] if n_pairs is None else int(n_pairs)
    p = plan.ravel() / plan.sum()
    flat = rng.choice(p.size, size=n, replace=True, p=p)
    return flat // plan.shape[1], flat % plan.shape[1]
