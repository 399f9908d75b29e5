"""The LSD prior: a pseudotime-biased Boltzmann transition matrix on the kNN graph, from which walks are drawn."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from waddington._utils import check_graph, check_obs, check_obsp, logger
from waddington.models.lsd.transitions import boltzmann_transitions, phylogeny_mask, row_normalize

__all__ = ["lsd_prior"]


def lsd_prior(
    adata: AnnData,
    time_key: str | None = None,
    *,
    beta: float = 50.0,
    graph_key: str = "connectivities",
    phylogeny: dict[str, list[str]] | None = None,
    cluster_key: str | None = None,
    descendants: bool = False,
    transitions: np.ndarray | sp.spmatrix | None = None,
    key_added: str = "lsd_prior",
    copy: bool = False,
) -> AnnData | None:
    """Build the walk prior of LSD: ``P_ij ∝ A_ij · exp(β (t_j − t_i))`` on the binarised kNN graph.

    Walks drawn from this matrix move toward later pseudotime (strongly for large ``beta``) but may step back.
    The matrix is computed edge by edge (memory and time O(edges)); each row subtracts its own maximum before
    exponentiating, so no ``beta`` overflows. Cells left without an outgoing transition (isolated in the graph,
    or cut off by the phylogeny mask) become absorbing states with a self-loop and are counted in a warning:
    no cell is ever dropped (the reference removes them).

    Parameters
    ----------
    adata
        Annotated data matrix with a kNN graph in ``obsp[graph_key]``.
    time_key
        Pseudotime column of :attr:`~anndata.AnnData.obs` (e.g. ``"dpt_pseudotime"``). Not needed when
        ``transitions`` is given.
    beta
        Inverse temperature of the Boltzmann bias (50 in the reference; pseudotime is usually in [0, 1]).
    graph_key
        Key of the kNN graph in :attr:`~anndata.AnnData.obsp`; only its non-zero pattern is used.
    phylogeny
        Optional ``{parent_cluster: [child_clusters]}``: edges are kept only toward the same cluster or a child
        cluster (needs ``cluster_key``).
    cluster_key
        Categorical column of :attr:`~anndata.AnnData.obs` with the clusters named in ``phylogeny``.
    descendants
        With ``phylogeny``, also allow transitions to grandchildren and further descendants.
    transitions
        A user-supplied cell × cell transition matrix (dense or sparse, square, non-negative, finite); it is
        row-normalised and used instead of the pseudotime construction.
    key_added
        Writes ``obsp[f"{key_added}_transitions"]`` and ``uns[key_added]``.
    copy
        Return a modified copy instead of writing in place.

    Returns
    -------
    ``None``, or a copy when ``copy=True``; sets

    - ``adata.obsp['lsd_prior_transitions']`` – CSR, row-stochastic transition matrix.
    - ``adata.uns['lsd_prior']`` – ``params`` and ``n_absorbing`` (cells turned into absorbing states).

    Examples
    --------
    >>> import waddington as wd
    >>> adata = wd.datasets.toggle_switch()  # doctest: +SKIP
    >>> wd.pp.lsd_prior(adata, "dpt_pseudotime")  # doctest: +SKIP
    >>> adata.obsp["lsd_prior_transitions"]  # doctest: +SKIP
    """
    if not np.isfinite(beta) or beta < 0:
        raise ValueError(f"`beta` must be a finite non-negative number, got {beta!r}.")
    params: dict[str, Any] = {"beta": float(beta), "graph_key": graph_key, "descendants": bool(descendants)}
    n = adata.n_obs
    if transitions is not None:
        if time_key is not None or phylogeny is not None:
            raise ValueError("pass either `transitions` or `time_key` (with an optional `phylogeny`), not both.")
        mat = check_graph(transitions, n, where="`transitions`")
        p, absorbing = row_normalize(mat)
        params["source"] = "transitions"
    else:
        if time_key is None:
            raise ValueError(
                "`time_key` is required: name a pseudotime column of adata.obs (e.g. run `sc.tl.dpt(adata)` and pass "
                "'dpt_pseudotime'), or pass `transitions=`."
            )
        t = check_obs(adata, time_key, fix="compute a pseudotime first, e.g. `sc.tl.dpt(adata)`", finite=True)
        graph = check_obsp(adata, graph_key, fix="run `sc.pp.neighbors(adata)` first")
        if phylogeny is not None:
            if cluster_key is None:
                raise ValueError("`phylogeny` needs `cluster_key`, the adata.obs column holding the cluster names.")
            clusters = check_obs(adata, cluster_key, fix="cluster the cells first, e.g. `sc.tl.leiden(adata)`")
            cat = pd.Categorical(clusters.astype(str))
            graph = phylogeny_mask(
                graph,
                np.asarray(cat.codes, dtype=np.int64),
                list(cat.categories),
                {str(k): [str(c) for c in v] for k, v in phylogeny.items()},
                descendants=descendants,
            )
            params["cluster_key"] = cluster_key
            params["phylogeny"] = {str(k): [str(c) for c in v] for k, v in phylogeny.items()}
        p, absorbing = boltzmann_transitions(graph, t.to_numpy(dtype=np.float64), beta)
        params["source"] = "pseudotime"
        params["time_key"] = time_key
    if absorbing.size:
        logger.warning(
            "%d cell(s) have no outgoing transition in the prior (e.g. %r) and were made absorbing (self-loop); "
            "no cell was removed",
            absorbing.size,
            str(adata.obs_names[absorbing[0]]),
        )
    if copy:
        adata = adata.copy()
    elif adata.is_view:
        adata._init_as_actual(adata.copy())
    adata.obsp[f"{key_added}_transitions"] = p
    adata.uns[key_added] = {"params": params, "n_absorbing": int(absorbing.size)}
    logger.info(
        "added %r, LSD prior transitions (adata.obsp) and %r (adata.uns)", f"{key_added}_transitions", key_added
    )
    return adata if copy else None
