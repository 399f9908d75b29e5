"""Helpers shared by the plotting functions: embeddings, colours, and scanpy-style ``ax``/``show``/``save``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from waddington._utils import logger


def basis_key(adata: AnnData, basis: str) -> str:
    """Name of the ``obsm`` entry that ``basis`` refers to: ``"X_<basis>"`` if present, else ``basis`` itself."""
    for key in (f"X_{basis}", basis):
        if key in adata.obsm:
            return key
    available = ", ".join(map(repr, adata.obsm.keys())) or "none"
    fixes = {
        "umap": "run `sc.tl.umap(adata)` first",
        "X_umap": "run `sc.tl.umap(adata)` first",
        "pca": "run `sc.pp.pca(adata)` first",
        "diffmap": "run `sc.tl.diffmap(adata)` first",
        "spatial": "load spatial coordinates into adata.obsm['spatial'] (e.g. with squidpy)",
        "X_lsd_diff_state": "run `wd.tl.lsd(adata)` first",
        "X_lsd_cell_state": "run `wd.tl.lsd(adata)` first",
    }
    fix = fixes.get(basis, "pass `basis=` naming an existing embedding")
    raise KeyError(
        f"Unable to find the embedding {basis!r} in adata.obsm as 'X_{basis}' or {basis!r} (available: {available}); {fix}."
    )


def get_basis(adata: AnnData, basis: str, components: tuple[int, int] = (0, 1)) -> tuple[np.ndarray, str]:
    """Return the two requested columns of an embedding as a float array, and its ``obsm`` key."""
    key = basis_key(adata, basis)
    arr = adata.obsm[key]
    arr = arr.to_numpy() if isinstance(arr, pd.DataFrame) else np.asarray(arr)
    comps = list(components)
    if len(comps) != 2:
        raise ValueError(f"`components` must name two columns, got {components!r}.")
    if arr.ndim != 2 or arr.shape[1] <= max(comps):
        raise ValueError(f"adata.obsm[{key!r}] has shape {arr.shape}; cannot take components {components!r}.")
    return arr[:, comps].astype(float), key


def default_palette(n: int) -> list[str]:
    """Scanpy's default categorical palette for ``n`` categories."""
    from scanpy.plotting import palettes

    if n <= 20:
        return list(palettes.default_20[:n])
    if n <= 28:
        return list(palettes.default_28[:n])
    return [palettes.default_102[i % len(palettes.default_102)] for i in range(n)]


def category_colors(adata: AnnData, key: str, categories: list[Any]) -> dict[Any, str]:
    """Colours for the categories of ``obs[key]`` from ``uns[f"{key}_colors"]`` when present, scanpy's palette otherwise."""
    stored = adata.uns.get(f"{key}_colors") if adata is not None else None
    if stored is not None and len(stored) >= len(categories):
        return dict(zip(categories, list(stored)[: len(categories)], strict=True))
    return dict(zip(categories, default_palette(len(categories)), strict=True))


def scatter_cells(
    ax,
    adata: AnnData,
    coords: np.ndarray,
    color: str | None,
    *,
    size: float | None = None,
    alpha: float = 1.0,
    cmap: str = "viridis",
    legend: bool = True,
    colorbar: bool = True,
    zorder: int = 1,
    z: np.ndarray | None = None,
    default_color: str = "lightgrey",
    palette: dict[Any, str] | None = None,
):
    """Scatter cells coloured by an ``obs`` column or a gene (categorical palette or continuous colour map).

    ``z`` gives a third coordinate for 3-D axes; ``palette`` maps categories to colours (default:
    :func:`category_colors`).
    """
    size = size if size is not None else max(2.0, min(30.0, 12000.0 / max(adata.n_obs, 1)))
    extra = {} if z is None else {"zs": np.asarray(z, dtype=float)}
    if color is None:
        return ax.scatter(
            coords[:, 0], coords[:, 1], s=size, c=default_color, alpha=alpha, linewidths=0, zorder=zorder, **extra
        )
    if color in adata.obs:
        values = adata.obs[color]
    elif color in adata.var_names:
        values = pd.Series(np.asarray(adata.obs_vector(color), dtype=float), index=adata.obs_names)
    else:
        raise KeyError(
            f"Unable to find {color!r} in adata.obs or adata.var_names; pass `color=` naming an obs column or gene."
        )
    if isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == object or pd.api.types.is_bool_dtype(values):
        cat = values.astype("category")
        cats = list(cat.cat.categories)
        colors = palette if palette is not None else category_colors(adata, color, cats)
        c = np.array([colors[v] if v in colors else "lightgrey" for v in cat.to_numpy()], dtype=object)
        sc_ = ax.scatter(
            coords[:, 0], coords[:, 1], s=size, c=list(c), alpha=alpha, linewidths=0, zorder=zorder, **extra
        )
        if legend:
            from matplotlib.lines import Line2D

            handles = [Line2D([], [], marker="o", ls="", color=colors[k], label=str(k)) for k in cats]
            ax.legend(handles=handles, title=color, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        return sc_
    vals = values.to_numpy(dtype=float)
    order = np.argsort(vals, kind="stable")  # draw high values on top, as scanpy does
    if z is not None:
        extra = {"zs": extra["zs"][order]}
    sc_ = ax.scatter(
        coords[order, 0],
        coords[order, 1],
        s=size,
        c=vals[order],
        cmap=cmap,
        alpha=alpha,
        linewidths=0,
        zorder=zorder,
        **extra,
    )
    if colorbar:
        ax.figure.colorbar(sc_, ax=ax, label=color, fraction=0.046, pad=0.02)
    return sc_


def new_axes(ax=None, figsize: tuple[float, float] = (5.0, 4.5), projection: str | None = None):
    """Return ``(fig, ax)``; a new figure when ``ax`` is None."""
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig = plt.figure(figsize=figsize)
    ax = fig.add_subplot(111, projection=projection)
    return fig, ax


def finish(fig, ax, *, name: str, show: bool | None, save: bool | str | None, return_fig: bool, ax_given: bool):
    """Save and/or show the figure the way scanpy does and return what scanpy returns.

    ``save=True`` writes ``{sc.settings.figdir}/{name}.{format}``; a string without a directory is appended to
    ``name`` (``save="_lsd.pdf"`` → ``figdir/streamlines_lsd.pdf``); a string with a directory is used as the path.
    ``show=None`` shows the figure unless an ``ax`` was passed or ``sc.settings.autoshow`` is off. Returns the
    Figure with ``return_fig=True``, the Axes when not shown, None otherwise.
    """
    import matplotlib.pyplot as plt
    import scanpy as sc

    if save:
        figdir = Path(sc.settings.figdir)
        fmt = sc.settings.file_format_figs
        if save is True:
            path = figdir / f"{name}.{fmt}"
        else:
            s = str(save)
            path = Path(s) if os.path.dirname(s) else figdir / f"{name}{s}"
            if not path.suffix:
                path = path.with_suffix(f".{fmt}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, bbox_inches="tight")
        logger.info("saved figure to %s", path)
    if show is None:
        show = (not ax_given) and bool(sc.settings.autoshow)
    if show:
        plt.show()
    if return_fig:
        return fig
    if not show:
        return ax
    return None
