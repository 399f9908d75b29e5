"""Effects of in-silico perturbations on fates (results of :func:`waddington.tl.lsd_perturb`)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from ._utils import default_palette, finish, new_axes

_FIX = "run `wd.tl.lsd_perturb(adata, genes, cluster_key=...)` first"


def perturbation_table(data: AnnData | pd.DataFrame | dict, key: str = "lsd_perturb") -> pd.DataFrame:
    """The tidy perturbation results (one row per gene and fate) from an AnnData, a dict of columns or a DataFrame."""
    if isinstance(data, AnnData):
        if key not in data.uns:
            raise KeyError(f"Unable to find {key!r} in adata.uns; {_FIX}.")
        data = data.uns[key]
    if isinstance(data, dict) and "results" in data:
        data = data["results"]
    df = data.copy() if isinstance(data, pd.DataFrame) else pd.DataFrame(dict(data))
    missing = {"gene", "fate", "log2fc"} - set(df.columns)
    if missing:
        raise KeyError(f"the perturbation results lack the column(s) {sorted(missing)}; {_FIX}.")
    return df


def perturbation(
    data: AnnData | pd.DataFrame,
    *,
    key: str = "lsd_perturb",
    value: str = "log2fc",
    kind: Literal["bar", "heatmap"] = "bar",
    n_genes: int = 30,
    alpha: float = 0.05,
    pval_key: str = "pval_adj",
    fates: list[str] | None = None,
    cmap: str = "RdBu_r",
    title: str | None = None,
    ax=None,
    show: bool | None = None,
    save: bool | str | None = None,
    return_fig: bool = False,
):
    """Effect of each perturbed gene on each fate, with significant effects marked by ``*``.

    Parameters
    ----------
    data
        AnnData with ``uns[key]`` from :func:`waddington.tl.lsd_perturb`, or its results DataFrame.
    key
        ``uns`` key of the results.
    value
        Column to draw: ``"log2fc"`` (log2 fold change of the fate count) or ``"delta_fraction"``.
    kind
        ``"bar"`` (grouped horizontal bars, one per fate) or ``"heatmap"`` (genes × fates).
    n_genes
        Show the genes with the largest absolute effect (all when there are fewer).
    alpha
        Threshold on ``pval_key`` below which an effect is marked significant.
    pval_key
        Column with the (adjusted) p-values.
    fates
        Fates to show (default: all).
    cmap
        Diverging colour map of the heatmap.
    title
        Axes title.
    ax
        Axes to draw into.
    show
        Show the figure (default: unless ``ax`` is given).
    save
        ``True`` or a file-name suffix/path to save the figure.
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Axes (``show=False``), the Figure (``return_fig=True``) or None.

    Examples
    --------
    >>> import waddington as wd
    >>> wd.tl.lsd_perturb(adata, ["Gata1", "Spi1"], cluster_key="clusters")  # doctest: +SKIP
    >>> wd.pl.perturbation(adata)  # doctest: +SKIP
    """
    if kind not in ("bar", "heatmap"):
        raise ValueError(f"`kind` must be 'bar' or 'heatmap', got {kind!r}.")
    df = perturbation_table(data, key)
    if value not in df.columns:
        raise KeyError(f"the perturbation results have no column {value!r} (columns: {list(df.columns)}).")
    df["gene"], df["fate"] = df["gene"].astype(str), df["fate"].astype(str)
    if fates is not None:
        df = df[df["fate"].isin([str(f) for f in fates])]
    mat = df.pivot_table(index="gene", columns="fate", values=value, aggfunc="first", sort=False)
    sig = None
    if pval_key in df.columns:
        sig = df.pivot_table(index="gene", columns="fate", values=pval_key, aggfunc="first", sort=False) < alpha
    finite = mat.where(np.isfinite(mat))
    strength = finite.abs().max(axis=1).fillna(0.0)
    genes = strength.sort_values(ascending=False, kind="stable").index[:n_genes]
    mat = mat.loc[genes]
    sig = sig.loc[genes, mat.columns] if sig is not None else None

    ax_given = ax is not None
    fig, ax = new_axes(
        ax, figsize=(5.5, max(2.5, 0.35 * len(genes) * (1 if kind == "heatmap" else 0.6 + 0.4 * mat.shape[1])))
    )
    vals = mat.to_numpy(dtype=float)
    shown = np.where(np.isfinite(vals), vals, np.nan)
    if kind == "heatmap":
        vmax = np.nanmax(np.abs(shown)) if np.isfinite(shown).any() else 1.0
        im = ax.imshow(shown, cmap=cmap, vmin=-vmax, vmax=vmax, aspect="auto")
        fig.colorbar(im, ax=ax, label=value, fraction=0.046, pad=0.02)
        ax.set_xticks(range(mat.shape[1]), list(mat.columns), rotation=45, ha="right")
        ax.set_yticks(range(mat.shape[0]), list(mat.index))
        if sig is not None:
            for i, j in zip(*np.nonzero(sig.to_numpy(dtype=bool)), strict=True):
                ax.text(j, i, "*", ha="center", va="center", fontsize=12, color="k")
    else:
        n_f = mat.shape[1]
        height = 0.8 / max(n_f, 1)
        colors = default_palette(n_f)
        y = np.arange(mat.shape[0])
        finite_vals = np.nan_to_num(shown, nan=0.0, posinf=0.0, neginf=0.0)
        span = np.abs(finite_vals).max() if finite_vals.size else 1.0
        for j, fate in enumerate(mat.columns):
            pos = y - 0.4 + height * (j + 0.5)
            ax.barh(pos, finite_vals[:, j], height=height, color=colors[j], label=str(fate))
            if sig is not None:
                for i in np.flatnonzero(sig[fate].to_numpy(dtype=bool)):
                    v = finite_vals[i, j]
                    ax.text(
                        v + np.sign(v or 1) * 0.02 * (span or 1),
                        pos[i],
                        "*",
                        va="center",
                        ha="left" if v >= 0 else "right",
                        fontsize=10,
                    )
        ax.axvline(0.0, color="k", linewidth=0.8)
        ax.set_yticks(y, list(mat.index))
        ax.invert_yaxis()
        ax.set_xlabel(value)
        ax.legend(title="fate", loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_title(title if title is not None else f"perturbation effects ({value})")
    return finish(fig, ax, name="perturbation", show=show, save=save, return_fig=return_fig, ax_given=ax_given)
