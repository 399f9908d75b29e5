"""The Waddington landscape: the LSD potential over the differentiation state, as contours or a 3-D surface."""

from __future__ import annotations

from typing import Literal

import numpy as np
from anndata import AnnData

from waddington._utils import check_obs

from ._projection import smooth_on_grid
from ._utils import basis_key, finish, get_basis, new_axes, scatter_cells


def potential(
    adata: AnnData,
    *,
    basis: str = "X_lsd_diff_state",
    key: str = "lsd_potential",
    kind: Literal["contour", "surface"] = "contour",
    color: str | None = None,
    components: tuple[int, int] = (0, 1),
    n_grid: int = 60,
    smooth: float = 1.5,
    min_mass: float = 0.005,
    levels: int = 15,
    cmap: str = "viridis",
    cell_cmap: str = "viridis",
    size: float | None = None,
    alpha: float = 0.8,
    elev: float = 30.0,
    azim: float = -60.0,
    legend: bool = True,
    title: str | None = None,
    ax=None,
    show: bool | None = None,
    save: bool | str | None = None,
    return_fig: bool = False,
):
    """Plot the Waddington landscape: the potential interpolated on a grid over a 2-D state, with the cells on top.

    The potential of the cells (``obs[key]``) is averaged on a regular grid with a Gaussian kernel
    (:func:`~waddington.pl._projection.smooth_on_grid`); grid points far from any cell are left empty.

    Parameters
    ----------
    adata
        Annotated data matrix.
    basis
        Embedding, ``adata.obsm[basis]`` or ``adata.obsm[f"X_{basis}"]``; the LSD differentiation state by default.
    key
        ``obs`` column holding the potential.
    kind
        ``"contour"`` (filled contours in 2-D) or ``"surface"`` (a 3-D surface with the cells at their potential).
    color
        ``obs`` column or gene to colour the cells by; black dots when None.
    components
        The two embedding columns to use (0-based).
    n_grid
        Grid points per axis.
    smooth
        Kernel width in grid spacings.
    min_mass
        Grid points with less than this fraction of the 99th-percentile cell mass are left empty.
    levels
        Number of contour levels.
    cmap
        Colour map of the landscape.
    cell_cmap
        Colour map of the cells for a continuous ``color``.
    size
        Marker size of the cells.
    alpha
        Opacity of the cells.
    elev, azim
        Viewing angles of the surface.
    legend
        Draw a legend for a categorical ``color``.
    title
        Axes title.
    ax
        Axes to draw into (a 3-D Axes for ``kind="surface"``).
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
    >>> adata = wd.datasets.toggle_switch()  # doctest: +SKIP
    >>> wd.pp.lsd_prior(adata, "dpt_pseudotime")  # doctest: +SKIP
    >>> wd.tl.lsd(adata)  # doctest: +SKIP
    >>> wd.pl.potential(adata, kind="surface", color="clusters")  # doctest: +SKIP
    """
    if kind not in ("contour", "surface"):
        raise ValueError(f"`kind` must be 'contour' or 'surface', got {kind!r}.")
    values = check_obs(adata, key, fix="run `wd.tl.lsd(adata)` first", numeric=True, finite=True).to_numpy(float)
    coords, _ = get_basis(adata, basis, components)
    field = smooth_on_grid(coords, values, n_grid=n_grid, smooth=smooth, min_mass=min_mass)
    Z = field["values"]
    gx, gy = np.meshgrid(field["x"], field["y"])
    label = basis_key(adata, basis).removeprefix("X_")
    ax_given = ax is not None
    if kind == "contour":
        fig, ax = new_axes(ax)
        cf = ax.contourf(gx, gy, np.ma.masked_invalid(Z), levels=levels, cmap=cmap, zorder=0)
        ax.contour(gx, gy, np.ma.masked_invalid(Z), levels=levels, colors="k", linewidths=0.4, alpha=0.5, zorder=1)
        # below the axes, so that a categorical legend on the right does not cover it
        fig.colorbar(cf, ax=ax, label=key, location="bottom", fraction=0.05, pad=0.18, shrink=0.8)
        scatter_cells(
            ax,
            adata,
            coords,
            color,
            size=size,
            alpha=alpha,
            cmap=cell_cmap,
            legend=legend,
            colorbar=False,
            zorder=2,
            default_color="k",
        )
    else:
        fig, ax = new_axes(ax, figsize=(6.0, 5.0), projection="3d")
        if not hasattr(ax, "plot_surface"):
            raise ValueError("kind='surface' needs a 3-D Axes (`fig.add_subplot(projection='3d')`).")
        surf = ax.plot_surface(gx, gy, np.ma.masked_invalid(Z), cmap=cmap, alpha=0.7, linewidth=0, antialiased=True)
        fig.colorbar(surf, ax=ax, label=key, fraction=0.03, pad=0.08)
        scatter_cells(
            ax,
            adata,
            coords,
            color,
            size=size,
            alpha=alpha,
            cmap=cell_cmap,
            legend=legend,
            colorbar=False,
            z=values,
            default_color="k",
        )
        ax.set_zlabel(key)
        ax.view_init(elev=elev, azim=azim)
    ax.set_xlabel(f"{label}{components[0] + 1}")
    ax.set_ylabel(f"{label}{components[1] + 1}")
    ax.set_title(title if title is not None else "potential landscape")
    return finish(fig, ax, name="potential", show=show, save=save, return_fig=return_fig, ax_given=ax_given)
