"""Fate probabilities per cluster (heatmap) and predicted fates on an embedding."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from waddington._utils import check_obs

from ._utils import category_colors, finish, get_basis, scatter_cells

_FIX = "run `wd.tl.lsd_fates(adata, cluster_key=...)` first"


def fate_table(
    adata: AnnData,
    cluster_key: str,
    *,
    key: str = "lsd_fate",
    probabilities_key: str = "lsd_fate_probabilities",
) -> pd.DataFrame:
    """Mean fate probability per cluster (clusters × fates).

    Read from ``obsm[probabilities_key]`` or, without it, the fraction of each cluster's cells whose predicted fate
    ``obs[key]`` is each fate.
    """
    clusters = check_obs(adata, cluster_key, fix="pass `cluster_key=` naming a categorical obs column").astype(
        "category"
    )
    if probabilities_key in adata.obsm:
        probs = adata.obsm[probabilities_key]
        if not isinstance(probs, pd.DataFrame):
            probs = pd.DataFrame(np.asarray(probs), index=adata.obs_names)
            probs.columns = [str(c) for c in probs.columns]
        table = probs.groupby(clusters.to_numpy(), observed=False).mean()
    else:
        fate = check_obs(adata, key, fix=_FIX)
        table = pd.crosstab(clusters, fate.astype("category"), normalize="index", dropna=False)
    table = table.reindex(clusters.cat.categories)
    table.index.name, table.columns.name = cluster_key, "fate"
    return table


def fates(
    adata: AnnData,
    *,
    cluster_key: str,
    basis: str | None = "umap",
    key: str = "lsd_fate",
    probabilities_key: str = "lsd_fate_probabilities",
    annotate: bool = True,
    cmap: str = "Reds",
    size: float | None = None,
    title: str | None = None,
    ax=None,
    show: bool | None = None,
    save: bool | str | None = None,
    return_fig: bool = False,
):
    """Fate probabilities per cluster as a heatmap, next to the cells coloured by their predicted fate.

    Parameters
    ----------
    adata
        Annotated data matrix with the results of :func:`waddington.tl.lsd_fates`.
    cluster_key
        ``obs`` column with the clusters (heatmap rows).
    basis
        Embedding of the second panel (cells coloured by ``obs[key]``); None draws the heatmap only.
    key
        ``obs`` column with the predicted fate.
    probabilities_key
        ``obsm`` entry with the fate probabilities (DataFrame, one column per fate). Without it, the heatmap shows
        the fraction of each cluster's cells predicted to reach each fate.
    annotate
        Write the values into the heatmap cells.
    cmap
        Colour map of the heatmap.
    size
        Marker size of the cells.
    title
        Title of the heatmap.
    ax
        One Axes (heatmap only) or two Axes (heatmap, embedding).
    show
        Show the figure (default: unless ``ax`` is given).
    save
        ``True`` or a file-name suffix/path to save the figure.
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The heatmap Axes, or the two Axes when the embedding is drawn (``show=False``); the Figure
    (``return_fig=True``); or None.

    Examples
    --------
    >>> import waddington as wd
    >>> wd.tl.lsd_fates(adata, cluster_key="clusters")  # doctest: +SKIP
    >>> wd.pl.fates(adata, cluster_key="clusters")  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    table = fate_table(adata, cluster_key, key=key, probabilities_key=probabilities_key)
    draw_embedding = basis is not None and key in adata.obs
    ax_given = ax is not None
    if ax is None:
        ncols = 2 if draw_embedding else 1
        fig, axes = plt.subplots(1, ncols, figsize=(5.0 * ncols + 1.5, 4.5), squeeze=False)
        axes = list(axes[0])
    else:
        axes = list(ax) if isinstance(ax, list | tuple | np.ndarray) else [ax]
        fig = axes[0].figure
        draw_embedding = draw_embedding and len(axes) > 1
    hm = axes[0]
    values = table.to_numpy(dtype=float)
    im = hm.imshow(values, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    hm.set_xticks(range(table.shape[1]), [str(c) for c in table.columns], rotation=45, ha="right")
    hm.set_yticks(range(table.shape[0]), [str(c) for c in table.index])
    hm.set_xlabel("fate")
    hm.set_ylabel(cluster_key)
    if annotate:
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                if np.isfinite(values[i, j]):
                    hm.text(
                        j,
                        i,
                        f"{values[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if values[i, j] > 0.6 else "black",
                    )
    fig.colorbar(im, ax=hm, label="fate probability", fraction=0.046, pad=0.02)
    hm.set_title(title if title is not None else "fate probabilities")
    if draw_embedding:
        emb_ax = axes[1]
        coords, _ = get_basis(adata, basis)
        fate = adata.obs[key].astype("category")
        cats = list(fate.cat.categories)
        palette = None
        if f"{key}_colors" not in adata.uns and f"{cluster_key}_colors" in adata.uns:
            cluster_colors = category_colors(adata, cluster_key, list(table.index))
            if set(cats) <= set(cluster_colors):
                palette = {c: cluster_colors[c] for c in cats}  # a fate named after a cluster keeps its colour
        scatter_cells(emb_ax, adata, coords, key, size=size, palette=palette)
        emb_ax.set_xticks([])
        emb_ax.set_yticks([])
        emb_ax.set_title("predicted fate")
    out_ax = axes[:2] if draw_embedding else hm
    return finish(fig, out_ax, name="fates", show=show, save=save, return_fig=return_fig, ax_given=ax_given)
