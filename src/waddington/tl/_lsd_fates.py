"""``wd.tl.lsd_fates``: predict each cell's fate by flowing it down the learned LSD landscape."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from waddington._utils import check_finite, check_obs, check_obsm, check_uns, logger, resolve_seed

__all__ = ["lsd_fates"]


def _model_inputs(adata: AnnData, key: str):
    """The trained module, the encoder's log-expression (CSR/ndarray, model gene order) and the cell states."""
    from waddington.tl._lsd import load_lsd_module

    info = check_uns(adata, key, fix=f"run `wd.tl.lsd(adata, key_added={key!r})` first")
    states = check_obsm(adata, f"X_{key}_cell_state", fix=f"run `wd.tl.lsd(adata, key_added={key!r})` first")
    var_names = [str(v) for v in np.asarray(info.get("var_names", adata.var_names))]
    if list(adata.var_names) != var_names:
        missing = sorted(set(var_names) - set(adata.var_names))
        if missing:
            raise ValueError(
                f"adata lacks {len(missing)} gene(s) the LSD model in adata.uns[{key!r}] was trained on "
                f"(e.g. {missing[:3]}); use the AnnData the model was trained on."
            )
        x = adata[:, var_names].X
    else:
        x = adata.X
    if x is None:
        raise KeyError("adata.X is empty; it must hold the log-normalised expression the LSD model was trained on.")
    x = sp.csr_matrix(x, dtype=np.float32) if sp.issparse(x) else np.ascontiguousarray(x, dtype=np.float32)
    check_finite(x, "adata.X")
    module = load_lsd_module(adata, key=key, device="cpu")
    return module, x, states, var_names


def _clusters(adata: AnnData, cluster_key: str) -> pd.Series:
    col = check_obs(
        adata, cluster_key, fix="pass `cluster_key=` naming a categorical obs column (e.g. leiden clusters)"
    )
    if col.isna().any():
        raise ValueError(f"adata.obs[{cluster_key!r}] has {int(col.isna().sum())} missing label(s); fill them first.")
    return col.astype(str).astype("category")


def _check_terminal(terminal_states: Sequence[str] | None, clusters: pd.Series, cluster_key: str) -> list[str] | None:
    if terminal_states is None:
        return None
    if isinstance(terminal_states, str):
        terminal_states = [terminal_states]
    terminal = [str(t) for t in terminal_states]
    unknown = [t for t in terminal if t not in set(clusters.cat.categories)]
    if unknown or not terminal:
        raise ValueError(
            f"terminal_states {unknown or terminal!r} are not categories of adata.obs[{cluster_key!r}] "
            f"({list(clusters.cat.categories)})."
        )
    return terminal


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, disable=not enabled, unit="cell")
    return bar


def lsd_fates(
    adata: AnnData,
    *,
    cluster_key: str,
    time_range: float = 10.0,
    n_steps: int = 100,
    n_samples: int = 50,
    terminal_states: Sequence[str] | None = None,
    min_fraction: float = 0.01,
    return_paths: bool = False,
    batch_size: int = 512,
    progress_bar: bool = True,
    random_state: int | None = 0,
    key: str = "lsd",
    key_added: str = "lsd",
    copy: bool = False,
) -> AnnData | None:
    """Predict fates by flowing every cell down the learned potential and snapping the end point to a cell.

    Each cell is encoded (posterior mean of q(z|x)), integrated along ``dz/dt = −∇V(z)`` for ``time_range`` with
    ``n_steps`` RK4 steps, and the end point is snapped to the nearest observed cell in
    ``obsm[f"X_{key}_cell_state"]`` (a KD-tree; no cell × cell matrix). The cluster of that cell is the fate
    (reference §5.1). Fate probabilities come from ``n_samples`` stochastic starts per cell drawn from the
    encoder's posterior ``z ~ q(z|x)``, each flowed and snapped the same way: the fraction ending in each fate.

    Which clusters are fates: the ``terminal_states`` given, or else the clusters that are sinks of the flow: at
    least ``min_fraction`` of the deterministic flows end there, and more than the cluster has cells (if no cluster
    gains cells, every cluster receiving ``min_fraction`` of the flows; pass ``terminal_states`` then). End points are snapped to cells of the fate clusters only, so every flow is
    assigned to its nearest fate; the fraction of deterministic flows whose nearest cell lay elsewhere is stored
    as ``uns[f"{key_added}_fates"]["unresolved_fraction"]`` (large values mean ``time_range`` is too short).

    Parameters
    ----------
    adata
        Annotated data with the results of :func:`waddington.tl.lsd`.
    cluster_key
        ``obs`` column with the clusters that name the fates.
    time_range
        Integration time (the flow learned on walks covers one time unit per walk).
    n_steps
        RK4 steps over ``time_range``.
    n_samples
        Stochastic starts per cell for the fate probabilities (0: probabilities are the one-hot deterministic fate).
    terminal_states
        Clusters to treat as fates (default: inferred from where the flows end).
    min_fraction
        Minimal fraction of deterministic flows a cluster must receive to count as a fate (inferred fates only).
        Transient clusters that flows leave faster than they fill are never fates.
    return_paths
        Store the snapped deterministic paths, ``uns[f"{key_added}_fates"]["paths"]`` (``(n_steps + 1, n_cells)``
        cell indices, one row per time point).
    batch_size
        Cells per batch.
    progress_bar
        Show a progress bar.
    random_state
        Seed of the posterior draws (same seed, same result); ``None`` draws one and records it in ``uns``.
    key
        ``key_added`` of :func:`waddington.tl.lsd`.
    key_added
        Prefix of the outputs.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    None, or a copy with ``copy=True``. Writes

    - ``obs[f"{key_added}_fate"]``: fate of the deterministic flow (categorical);
    - ``obsm[f"{key_added}_fate_probabilities"]``: DataFrame, one column per fate, rows sum to 1;
    - ``uns[f"{key_added}_fates"]``: ``params``, ``fates``, ``end_cells`` (index of each flow's end cell),
      ``unresolved_fraction`` and optionally ``paths``.

    Examples
    --------
    >>> import waddington as wd
    >>> adata = wd.datasets.toggle_switch()  # doctest: +SKIP
    >>> wd.pp.lsd_prior(adata, "dpt_pseudotime")  # doctest: +SKIP
    >>> wd.tl.lsd(adata)  # doctest: +SKIP
    >>> wd.tl.lsd_fates(adata, cluster_key="clusters")  # doctest: +SKIP
    >>> wd.pl.fates(adata, cluster_key="clusters")  # doctest: +SKIP
    """
    import torch

    from waddington.models.lsd.propagation import Snapper, propagate_fates

    if time_range <= 0 or n_steps < 1:
        raise ValueError(f"`time_range` must be positive and `n_steps` >= 1, got {time_range} and {n_steps}.")
    if n_samples < 0 or batch_size < 1:
        raise ValueError(f"`n_samples` must be >= 0 and `batch_size` >= 1, got {n_samples} and {batch_size}.")
    if not 0 <= min_fraction < 1:
        raise ValueError(f"`min_fraction` must lie in [0, 1), got {min_fraction}.")
    random_state = resolve_seed(random_state)
    clusters = _clusters(adata, cluster_key)
    terminal = _check_terminal(terminal_states, clusters, cluster_key)
    module, x, states, _ = _model_inputs(adata, key)
    labels = clusters.to_numpy().astype(str)
    n = adata.n_obs

    with torch.no_grad():
        # 1. deterministic flows, snapped to any cell, decide (or check) the fate clusters
        bar = _progress(n * (2 if n_samples else 1), progress_bar, "LSD fates")
        free = propagate_fates(
            module, x, Snapper(states), t_end=time_range, n_steps=n_steps, n_samples=0,
            batch_size=batch_size, return_paths=False, progress=bar.update,
        )  # fmt: skip
        end_labels = labels[free["end"]]
        if terminal is None:
            counts = pd.Series(end_labels).value_counts()
            sizes = pd.Series(labels).value_counts().reindex(counts.index)
            enough = counts >= max(1, min_fraction * n)
            # sinks gain cells; if the flow moves too little for any cluster to gain, keep every common end point
            fates = sorted(counts.index[enough & (counts > sizes)].tolist()) or sorted(counts.index[enough].tolist())
        else:
            fates = list(terminal)
        fate_cells = np.flatnonzero(np.isin(labels, fates))
        unresolved = float(np.mean(~np.isin(end_labels, fates)))
        snap_fate = Snapper(states, fate_cells)
        end = snap_fate(free["end_state"]) if unresolved > 0 else free["end"]
        paths = None
        if return_paths:
            paths = propagate_fates(
                module, x, snap_fate, t_end=time_range, n_steps=n_steps, n_samples=0,
                batch_size=batch_size, return_paths=True,
            )["paths"]  # fmt: skip
        # 2. stochastic starts from the posterior give the probabilities
        if n_samples > 0:
            samples = propagate_fates(
                module, x, snap_fate, t_end=time_range, n_steps=n_steps, n_samples=n_samples,
                batch_size=max(1, batch_size // max(1, n_samples // 8)), seed=int(random_state),
                progress=bar.update,
            )["samples"]  # fmt: skip
        bar.close()

    fate_index = {f: k for k, f in enumerate(fates)}
    det = labels[end]
    if n_samples > 0:
        codes = np.vectorize(fate_index.__getitem__, otypes=[np.int64])(labels[samples])
        probs = np.stack([(codes == k).mean(axis=1) for k in range(len(fates))], axis=1)
    else:
        probs = np.stack([(det == f).astype(float) for f in fates], axis=1)
    prob_df = pd.DataFrame(probs, index=adata.obs_names.copy(), columns=pd.Index(fates, dtype=object))
    fate_cat = pd.Categorical(det, categories=fates)

    params = {
        "cluster_key": cluster_key,
        "time_range": float(time_range),
        "n_steps": int(n_steps),
        "n_samples": int(n_samples),
        "terminal_states": list(terminal) if terminal is not None else "None",
        "min_fraction": float(min_fraction),
        "random_state": int(random_state),
        "key": key,
    }
    uns = {
        "params": params,
        "fates": np.asarray(fates, dtype=object).astype(str),
        "end_cells": end.astype(np.int64),
        "unresolved_fraction": unresolved,
    }
    if paths is not None:
        uns["paths"] = paths.astype(np.int64)
    if unresolved > 0.05:
        logger.warning(
            "%.0f%% of the flows ended outside the fate clusters %s and were assigned to the nearest fate cell; "
            "consider a longer `time_range`",
            100 * unresolved,
            fates,
        )

    adata = adata.copy() if copy else adata
    adata.obs[f"{key_added}_fate"] = fate_cat
    adata.obsm[f"{key_added}_fate_probabilities"] = prob_df
    adata.uns[f"{key_added}_fates"] = uns
    logger.info(
        "added '%s_fate' (adata.obs), '%s_fate_probabilities' (adata.obsm), '%s_fates' (adata.uns); fates: %s",
        key_added,
        key_added,
        key_added,
        ", ".join(fates),
    )
    return adata if copy else None
