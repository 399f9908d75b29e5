"""Plots of pseudodynamics+ results: fields on an embedding, fields along a pseudotime, population fit."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from ._utils import finish, get_basis

_FIX = "run `wd.tl.pseudodynamics(adata, time_key=..., state_key=...)` first"
_LABELS = {
    "growth": "growth g",
    "speed": "|v|",
    "diffusion": "diffusion D",
    "density": "density u",
    "divergence": "∇·v",
}


def _prefix(key: str) -> str:
    return "pd" if key == "pseudodynamics" else key


def _by_time(adata: AnnData, field: str, key: str) -> pd.DataFrame:
    name = f"{_prefix(key)}_{field}_by_time"
    if name not in adata.obsm:
        allowed = ", ".join(_LABELS)
        raise KeyError(f"Unable to find {name!r} in adata.obsm (fields: {allowed}); {_FIX}.")
    table = adata.obsm[name]
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"adata.obsm[{name!r}] must be a DataFrame (cells × time points); {_FIX}.")
    return table


def _params(adata: AnnData, key: str) -> dict:
    if key not in adata.uns or "params" not in adata.uns[key]:
        raise KeyError(f"Unable to find adata.uns[{key!r}]['params']; {_FIX}.")
    return adata.uns[key]["params"]


def pseudodynamics(
    adata: AnnData,
    basis: str | None = None,
    *,
    fields: Sequence[str] = ("growth", "speed", "diffusion"),
    times: Sequence[float] | None = None,
    own_time_only: bool = True,
    key: str = "pseudodynamics",
    components: tuple[int, int] = (0, 1),
    cmap: str = "viridis",
    size: float | None = None,
    panel_size: tuple[float, float] = (3.0, 2.7),
    ax=None,
    show: bool | None = None,
    save: bool | str | None = None,
    return_fig: bool = False,
):
    """Fitted fields (``g``, ``|v|``, ``D``, …) on an embedding, one panel per field and time point.

    Parameters
    ----------
    adata
        Annotated data matrix after :func:`waddington.tl.pseudodynamics`.
    basis
        Embedding in :attr:`~anndata.AnnData.obsm` (``"umap"`` → ``X_umap``); default: the state space used in
        training. A 1-D state space is drawn against the cells' time.
    fields
        Any of ``"growth"``, ``"speed"``, ``"diffusion"``, ``"density"``, ``"divergence"`` (rows).
    times
        Time points to draw (columns); default: all fitted time points.
    own_time_only
        Draw only the cells observed at each time point (as the reference's ``cell_of_t``); otherwise all cells,
        coloured by the field at that time.
    key
        Key of the results in :attr:`~anndata.AnnData.uns`.
    components
        Two columns of the embedding.
    cmap, size
        Colour map and marker size.
    panel_size
        Width and height of one panel.
    ax
        Not supported (the plot is a grid); pass ``None``.
    show, save, return_fig
        As in scanpy.

    Returns
    -------
    The Figure with ``return_fig=True``, else the array of Axes when not shown.

    Examples
    --------
    >>> import waddington as wd
    >>> adata = wd.datasets.population_branching()
    >>> wd.tl.pseudodynamics(adata, time_key="day", state_key="X_state")  # doctest: +SKIP
    >>> wd.pl.pseudodynamics(adata, fields=["growth", "speed"])  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    if ax is not None:
        raise ValueError("`ax` is not supported: the plot is a grid of panels; use `return_fig=True` instead.")
    params = _params(adata, key)
    tables = {f: _by_time(adata, f, key) for f in fields}
    columns = list(next(iter(tables.values())).columns)
    all_times = np.asarray([float(c) for c in columns])
    if times is None:
        picks = list(range(len(columns)))
    else:
        picks = []
        for t in times:
            hit = np.flatnonzero(np.isclose(all_times, float(t)))
            if hit.size == 0:
                raise ValueError(f"time {t} was not fitted; fitted times are {all_times.tolist()}.")
            picks.append(int(hit[0]))
    time_key = str(params["time_key"])
    cell_time = adata.obs[time_key].to_numpy(dtype=float) if time_key in adata.obs else None
    if basis is None:
        state = np.asarray(adata.obsm[str(params["state_key"])], dtype=float)
        if state.ndim == 1 or state.shape[1] == 1 or int(params["n_dims"]) == 1:
            xy = np.c_[state.reshape(len(state), -1)[:, 0], cell_time if cell_time is not None else 0.0]
            labels = (str(params["state_key"]), time_key)
        else:
            xy = state[:, list(components)]
            labels = (f"{params['state_key']} {components[0] + 1}", f"{params['state_key']} {components[1] + 1}")
    else:
        xy, bkey = get_basis(adata, basis, components)
        labels = (f"{bkey} {components[0] + 1}", f"{bkey} {components[1] + 1}")
    n_rows, n_cols = len(fields), len(picks)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(panel_size[0] * n_cols, panel_size[1] * n_rows), squeeze=False)
    s = size if size is not None else max(2.0, 60000 / max(adata.n_obs, 1) ** 1.2)
    for r, field in enumerate(fields):
        table = tables[field]
        values = table.to_numpy(dtype=float)
        for c, j in enumerate(picks):
            a = axes[r, c]
            mask = np.ones(adata.n_obs, bool)
            if own_time_only and cell_time is not None:
                mask = np.isclose(cell_time, all_times[j])
            a.scatter(xy[:, 0], xy[:, 1], c="lightgrey", s=s * 0.5, linewidths=0, rasterized=True)
            sc_ = a.scatter(xy[mask, 0], xy[mask, 1], c=values[mask, j], cmap=cmap, s=s, linewidths=0, rasterized=True)
            fig.colorbar(sc_, ax=a, shrink=0.8)
            a.set_title(f"{_LABELS.get(field, field)} at {columns[j]}", fontsize=9)
            a.set_xticks([])
            a.set_yticks([])
            if r == n_rows - 1:
                a.set_xlabel(labels[0], fontsize=8)
            if c == 0:
                a.set_ylabel(labels[1], fontsize=8)
    fig.tight_layout()
    return finish(fig, axes, name="pseudodynamics", show=show, save=save, return_fig=return_fig, ax_given=False)


def pseudodynamics_fields(
    adata: AnnData,
    pseudotime_key: str,
    *,
    fields: Sequence[str] = ("growth", "speed", "diffusion"),
    key: str = "pseudodynamics",
    n_bins: int = 30,
    quantiles: tuple[float, float] = (0.1, 0.9),
    truth: dict[str, str] | None = None,
    panel_size: tuple[float, float] = (3.6, 2.8),
    show: bool | None = None,
    save: bool | str | None = None,
    return_fig: bool = False,
):
    """Fields along a pseudotime: the binned median with a quantile band, one panel per field.

    Each cell contributes its field at its own time (``obs['pd_growth']`` etc.; ``|v|`` from
    ``obsm['pd_velocity']``).

    Parameters
    ----------
    adata
        Annotated data matrix after :func:`waddington.tl.pseudodynamics`.
    pseudotime_key
        Column of :attr:`~anndata.AnnData.obs` to bin the cells by (any numeric ordering, e.g. a state coordinate).
    fields
        Any of ``"growth"``, ``"speed"``, ``"diffusion"``, ``"density"``, ``"divergence"``.
    key
        Key of the results in :attr:`~anndata.AnnData.uns`.
    n_bins
        Equal-count bins along the pseudotime.
    quantiles
        Lower and upper quantile of the band.
    truth
        Optional ``{field: obs column}`` of known values to overlay (e.g. ``{"growth": "true_g"}``).
    panel_size
        Width and height of one panel.
    show, save, return_fig
        As in scanpy.

    Returns
    -------
    The Figure with ``return_fig=True``, else the array of Axes (one per field) when not shown.

    Examples
    --------
    >>> import waddington as wd
    >>> adata = wd.datasets.population_1d()
    >>> wd.tl.pseudodynamics(adata, time_key="day", state_key="X_state")  # doctest: +SKIP
    >>> wd.pl.pseudodynamics_fields(adata, "state", truth={"growth": "true_g"})  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    _params(adata, key)
    if pseudotime_key not in adata.obs:
        raise KeyError(f"Unable to find {pseudotime_key!r} in adata.obs; run `sc.tl.dpt(adata)` or pass another key.")
    pt = adata.obs[pseudotime_key].to_numpy(dtype=float)
    prefix = _prefix(key)
    per_cell = {}
    for field in fields:
        if field == "speed":
            name = f"{prefix}_velocity"
            if name not in adata.obsm:
                raise KeyError(f"Unable to find {name!r} in adata.obsm; {_FIX}.")
            per_cell[field] = np.linalg.norm(np.asarray(adata.obsm[name], dtype=float), axis=1)
        else:
            name = f"{prefix}_{field}"
            if name not in adata.obs:
                raise KeyError(f"Unable to find {name!r} in adata.obs; {_FIX}.")
            per_cell[field] = adata.obs[name].to_numpy(dtype=float)
    truth = dict(truth or {})
    order = np.argsort(pt, kind="stable")
    bins = np.array_split(order, max(1, min(int(n_bins), len(order))))
    centers = np.array([pt[b].mean() for b in bins])
    fig, axes = plt.subplots(1, len(fields), figsize=(panel_size[0] * len(fields), panel_size[1]), squeeze=False)
    axes = axes[0]
    for a, field in zip(axes, fields, strict=True):
        vals = per_cell[field]
        med = np.array([np.median(vals[b]) for b in bins])
        lo = np.array([np.quantile(vals[b], quantiles[0]) for b in bins])
        hi = np.array([np.quantile(vals[b], quantiles[1]) for b in bins])
        a.fill_between(centers, lo, hi, alpha=0.3, color="C0", label=f"{quantiles[0]:g}–{quantiles[1]:g} quantile")
        a.plot(centers, med, color="C0", label="fitted (median)")
        if field in truth:
            col = truth[field]
            if col not in adata.obs:
                raise KeyError(f"Unable to find {col!r} in adata.obs (given in `truth`).")
            tv = adata.obs[col].to_numpy(dtype=float)
            a.plot(centers, [np.median(tv[b]) for b in bins], color="k", ls="--", label="truth")
        a.set_xlabel(pseudotime_key)
        a.set_title(_LABELS.get(field, field))
        a.legend(fontsize=7)
    fig.tight_layout()
    return finish(fig, axes, name="pseudodynamics_fields", show=show, save=save, return_fig=return_fig, ax_given=False)


def population_fit(
    adata: AnnData,
    *,
    key: str = "pseudodynamics",
    truth: Sequence[float] | None = None,
    logy: bool = True,
    ax=None,
    show: bool | None = None,
    save: bool | str | None = None,
    return_fig: bool = False,
):
    """Observed population sizes (mean ± std) against the fitted ``∫u ds`` and the growth-implied ``N(t)``.

    Parameters
    ----------
    adata
        Annotated data matrix after :func:`waddington.tl.pseudodynamics`.
    key
        Key of the results in :attr:`~anndata.AnnData.uns`.
    truth
        Optional true population sizes at the fitted time points (simulations), drawn as crosses.
    logy
        Logarithmic y axis.
    ax
        Matplotlib Axes to draw into.
    show, save, return_fig
        As in scanpy.

    Returns
    -------
    The Figure with ``return_fig=True``, else the Axes when not shown.

    Examples
    --------
    >>> import waddington as wd
    >>> adata = wd.datasets.population_1d()
    >>> wd.tl.pseudodynamics(adata, time_key="day", state_key="X_state")  # doctest: +SKIP
    >>> wd.pl.population_fit(adata)  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    if key not in adata.uns or "population" not in adata.uns[key]:
        raise KeyError(f"Unable to find adata.uns[{key!r}]['population']; {_FIX}.")
    pop = adata.uns[key]["population"]
    ax_given = ax is not None
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.2, 3.2))
    else:
        fig = ax.figure
    t = np.asarray(pop["t"], dtype=float)
    ax.errorbar(t, pop["observed_mean"], yerr=pop["observed_std"], fmt="o", color="k", capsize=3, label="observed")
    ax.plot(pop["t_grid"], pop["fitted_grid"], color="C0", label="fitted ∫u ds")
    ax.plot(pop["t_grid"], pop["implied_grid"], color="C1", ls="--", label="implied by g")
    if truth is not None:
        truth = np.asarray(truth, dtype=float)
        if truth.shape != t.shape:
            raise ValueError(f"`truth` must have one value per fitted time point ({t.size}), got {truth.shape}.")
        ax.plot(t, truth, "x", color="C3", label="truth")
    if logy:
        ax.set_yscale("log")
    params = adata.uns[key].get("params", {})
    ax.set_xlabel(str(params.get("time_key", "time")))
    ax.set_ylabel("population size")
    ax.legend(fontsize=8)
    return finish(fig, ax, name="population_fit", show=show, save=save, return_fig=return_fig, ax_given=ax_given)
