"""Streamlines of a transition matrix or velocity field over an embedding (our own scVelo-style implementation)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from waddington._utils import check_graph, check_obsm, check_uns, logger

from ._projection import project_transitions, smooth_on_grid, velocity_transitions
from ._utils import basis_key, finish, get_basis, new_axes, scatter_cells

_FIX_TRANSITIONS = (
    "run `wd.tl.lsd(adata)` (key='lsd'), `wd.pp.lsd_prior(adata, time_key)` (key='lsd_prior'), "
    "`wd.tl.pseudodynamics(adata, ...)` (key='pd'), or store any row-stochastic matrix in adata.obsp "
    "(e.g. a CellRank kernel's `kernel.write_to_adata()`, key='T_fwd') and pass its key"
)


def _knn_graph(states: np.ndarray, n_neighbors: int = 30) -> sp.csr_matrix:
    from sklearn.neighbors import NearestNeighbors

    k = min(n_neighbors + 1, states.shape[0])
    nn = NearestNeighbors(n_neighbors=k).fit(states)
    return sp.csr_matrix(nn.kneighbors_graph(states, mode="connectivity"))


def _row_normalize(P: sp.csr_matrix, where: str) -> sp.csr_matrix:
    rs = np.asarray(P.sum(axis=1)).ravel()
    nz = rs > 0
    if nz.any() and not np.allclose(rs[nz], 1.0, rtol=1e-6, atol=1e-8):
        logger.warning(
            "%s is not row-stochastic (row sums %.3g..%.3g); normalising its rows", where, rs[nz].min(), rs[nz].max()
        )
        P = sp.csr_matrix(sp.diags(np.where(nz, 1.0 / np.where(nz, rs, 1.0), 0.0)) @ P)
    return P


def _pseudodynamics_keys(adata: AnnData, key: str) -> tuple[str, str] | None:
    """``(uns key, slot prefix)`` when ``key`` names a pseudodynamics result, else ``None``.

    ``"pd"`` and ``"pseudodynamics"`` name the default result; any other ``key_added`` of
    :func:`waddington.tl.pseudodynamics` names its own (``uns[key]`` with a ``state_key`` and ``obsm[f"{key}_velocity"]``).
    """
    if key in ("pd", "pseudodynamics"):
        return "pseudodynamics", "pd"
    uns = adata.uns.get(key)
    if isinstance(uns, Mapping) and "state_key" in uns.get("params", {}) and f"{key}_velocity" in adata.obsm:
        return key, key
    return None


def transitions_key(adata: AnnData, key: str) -> str:
    """Name of the ``obsp`` entry that ``key`` refers to: ``key`` itself or ``f"{key}_transitions"``."""
    for cand in (key, f"{key}_transitions"):
        if cand in adata.obsp:
            return cand
    available = ", ".join(map(repr, adata.obsp.keys())) or "none"
    raise KeyError(
        f"Unable to find transitions for key={key!r} in adata.obsp (looked for {key!r} and {key + '_transitions'!r}; "
        f"available: {available}); {_FIX_TRANSITIONS}."
    )


def embedding_arrows(
    adata: AnnData,
    basis: str = "umap",
    *,
    key: str = "lsd",
    components: tuple[int, int] = (0, 1),
    graph_key: str = "connectivities",
    softmax_scale: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell arrows of a transition matrix or velocity field in a 2-D embedding (no plotting).

    Parameters
    ----------
    adata
        Annotated data matrix.
    basis
        Embedding, looked up as ``adata.obsm[f"X_{basis}"]`` or ``adata.obsm[basis]``.
    key
        ``"pd"`` for pseudodynamics' velocity (or the ``key_added`` of another pseudodynamics result), otherwise
        an ``obsp`` key holding a row-stochastic matrix (``key`` or ``f"{key}_transitions"``, e.g. ``"lsd"``,
        ``"lsd_prior"``, ``"T_fwd"``).
    components
        The two embedding columns to use (0-based).
    graph_key
        ``obsp`` key of the neighbour graph that defines the unbiased-walk baseline (and, for ``key="pd"``, the
        velocity kernel's neighbours; a 30-NN graph in the state space is built when it is missing).
    softmax_scale
        Inverse temperature of the velocity kernel (``key="pd"`` only); ``None`` uses CellRank's heuristic.

    Returns
    -------
    ``(coords, arrows)``, both of shape ``(n_cells, 2)``.
    """
    coords, emb_key = get_basis(adata, basis, components)
    graph = (
        check_graph(adata.obsp[graph_key], adata.n_obs, where=f"adata.obsp[{graph_key!r}]")
        if graph_key in adata.obsp
        else None
    )
    pd_keys = _pseudodynamics_keys(adata, key)
    if pd_keys is not None:
        uns_key, prefix = pd_keys
        fix = "run `wd.tl.pseudodynamics(adata, ...)` first"
        uns = check_uns(adata, uns_key, fix=fix)
        params = uns.get("params", {}) if isinstance(uns, Mapping) else {}
        if "state_key" not in params:
            raise KeyError(f"adata.uns[{uns_key!r}]['params'] has no 'state_key'; {fix}.")
        state_key = str(params["state_key"])
        vel = check_obsm(adata, f"{prefix}_velocity", fix=fix)
        n_dims = int(params.get("n_dims", vel.shape[1]))
        states = check_obsm(adata, state_key, fix=f"adata.uns[{uns_key!r}] names state_key={state_key!r}; restore it")
        states, vel = states[:, :n_dims], vel[:, :n_dims]
        if emb_key == state_key:
            if max(components) >= n_dims:
                raise ValueError(f"components {components!r} exceed the {n_dims} dimensions of the velocity.")
            return coords, vel[:, list(components)]
        if graph is None:
            logger.info("adata.obsp[%r] not found; using a 30-NN graph in adata.obsm[%r]", graph_key, state_key)
            graph = _knn_graph(states)
        P, scale = velocity_transitions(states, vel, graph, softmax_scale=softmax_scale)
        logger.debug("velocity kernel softmax scale %.3g", scale)
        return coords, project_transitions(P, coords, graph=graph)
    tkey = transitions_key(adata, key)
    P = _row_normalize(
        check_graph(adata.obsp[tkey], adata.n_obs, where=f"adata.obsp[{tkey!r}]"), f"adata.obsp[{tkey!r}]"
    )
    return coords, project_transitions(P, coords, graph=graph)


def streamlines(
    adata: AnnData,
    basis: str = "umap",
    *,
    key: str = "lsd",
    color: str | None = None,
    components: tuple[int, int] = (0, 1),
    graph_key: str = "connectivities",
    density: float = 1.0,
    smooth: float = 0.5,
    n_grid: int = 40,
    min_mass: float = 0.01,
    n_neighbors: int | None = None,
    softmax_scale: float | None = None,
    linewidth: float = 1.0,
    arrowsize: float = 1.0,
    stream_color: str = "k",
    size: float | None = None,
    alpha: float = 0.4,
    cmap: str = "viridis",
    legend: bool = True,
    title: str | None = None,
    ax=None,
    show: bool | None = None,
    save: bool | str | None = None,
    return_fig: bool = False,
    **kwargs: Any,
):
    """Streamlines of a transition matrix (LSD, prior, CellRank kernel) or a velocity field over an embedding.

    Each cell's arrow is the expected displacement under the transition matrix minus that of an unbiased walk on
    the kNN graph (:func:`~waddington.pl._projection.project_transitions`), so only the directional bias is drawn.
    Arrows are averaged on a grid with a Gaussian kernel, grid points with too little cell mass are masked, and
    :meth:`matplotlib.axes.Axes.streamplot` draws the result over the cells.

    Parameters
    ----------
    adata
        Annotated data matrix.
    basis
        Embedding: ``adata.obsm[f"X_{basis}"]`` or ``adata.obsm[basis]`` (``"umap"``, ``"spatial"``,
        ``"X_lsd_diff_state"``, ...).
    key
        What to draw. ``"lsd"`` reads ``obsp["lsd_transitions"]``; any ``obsp`` key (or its prefix before
        ``"_transitions"``) holding a row-stochastic matrix works, e.g. ``"lsd_prior"`` or a CellRank kernel's
        ``"T_fwd"``. ``"pd"`` reads ``obsm["pd_velocity"]`` in the state space named by
        ``uns["pseudodynamics"]["params"]["state_key"]``: used directly when ``basis`` is that space, otherwise
        turned into a cosine-softmax transition matrix on the kNN graph and projected. A pseudodynamics result
        stored under another ``key_added`` (e.g. ``"pd2"``) is drawn with ``key="pd2"``.
    color
        ``obs`` column or gene to colour the cells by; categorical colours come from ``uns[f"{color}_colors"]``.
    components
        The two embedding columns to draw (0-based).
    graph_key
        ``obsp`` key of the kNN graph (baseline walk; neighbours of the velocity kernel).
    density
        Streamline density passed to :meth:`~matplotlib.axes.Axes.streamplot`.
    smooth
        Width of the Gaussian smoothing kernel in grid spacings.
    n_grid
        Grid points per axis.
    min_mass
        Grid points whose cell mass is below this fraction of the 99th percentile are left empty.
    n_neighbors
        Cells averaged per grid point (default ``max(10, n_cells // 50)``).
    softmax_scale
        Inverse temperature of the velocity kernel for ``key="pd"``.
    linewidth
        Maximal streamline width; widths scale with the local arrow length.
    arrowsize
        Arrow head size.
    stream_color
        Colour of the streamlines.
    size
        Marker size of the cells.
    alpha
        Opacity of the cells.
    cmap
        Colour map for a continuous ``color``.
    legend
        Draw a legend for a categorical ``color``.
    title
        Axes title (default: the transitions drawn).
    ax
        Axes to draw into.
    show
        Show the figure (default: unless ``ax`` is given).
    save
        ``True`` or a file-name suffix/path to save the figure (scanpy's convention).
    return_fig
        Return the Figure instead of the Axes.
    **kwargs
        Passed to :meth:`~matplotlib.axes.Axes.streamplot`.

    Returns
    -------
    The Axes (``show=False``), the Figure (``return_fig=True``) or None.

    Examples
    --------
    >>> import waddington as wd
    >>> adata = wd.datasets.toggle_switch()  # doctest: +SKIP
    >>> wd.pp.lsd_prior(adata, "dpt_pseudotime")  # doctest: +SKIP
    >>> wd.pl.streamlines(adata, "umap", key="lsd_prior", color="clusters")  # doctest: +SKIP
    """
    coords, arrows = embedding_arrows(
        adata, basis, key=key, components=components, graph_key=graph_key, softmax_scale=softmax_scale
    )
    field = smooth_on_grid(coords, arrows, n_grid=n_grid, smooth=smooth, min_mass=min_mass, n_neighbors=n_neighbors)
    U, V = field["values"]
    speed = np.hypot(U, V)
    top = np.nanmax(speed) if np.isfinite(speed).any() else 0.0
    if not top > 0:
        logger.warning("the projected arrows are all zero (an unbiased walk?); nothing to draw as streamlines")
    lw = np.nan_to_num(linewidth * 2 * speed / top, nan=0.0) if top > 0 else linewidth

    ax_given = ax is not None
    fig, ax = new_axes(ax)
    scatter_cells(ax, adata, coords, color, size=size, alpha=alpha, cmap=cmap, legend=legend, zorder=1)
    if top > 0:
        stream_kw = {
            "density": density,
            "linewidth": lw,
            "color": stream_color,
            "arrowsize": arrowsize,
            "arrowstyle": "-|>",
            "maxlength": 4.0,
            "integration_direction": "both",
            "zorder": 3,
        }
        stream_kw.update(kwargs)
        ax.streamplot(field["x"], field["y"], np.ma.masked_invalid(U), np.ma.masked_invalid(V), **stream_kw)
    label = basis_key(adata, basis).removeprefix("X_")
    ax.set_xlabel(f"{label}{components[0] + 1}")
    ax.set_ylabel(f"{label}{components[1] + 1}")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title if title is not None else f"{key} streamlines")
    return finish(fig, ax, name="streamlines", show=show, save=save, return_fig=return_fig, ax_given=ax_given)
