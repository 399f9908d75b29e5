"""Training curves stored in ``uns[key]["history"]`` (LSD, pseudodynamics, anything with a history dict)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from anndata import AnnData

from waddington._utils import logger

from ._utils import finish

_ALIASES = {"pd": "pseudodynamics"}
_X_KEYS = ("epoch", "step", "iteration", "global_step")
_PREFIXES = ("train_", "val_", "validation_", "valid_")
_SUFFIXES = ("_train", "_val", "_validation", "_valid")


def _metric_name(name: str) -> str:
    for p in _PREFIXES:
        if name.startswith(p):
            return name[len(p) :]
    for s in _SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def history_table(data: AnnData | Mapping | pd.DataFrame, key: str = "lsd") -> pd.DataFrame:
    """The training history as a DataFrame (one column per recorded quantity, equal lengths)."""
    if isinstance(data, AnnData):
        ukey = _ALIASES.get(key, key)
        fix = {"lsd": "run `wd.tl.lsd(adata)` first", "pseudodynamics": "run `wd.tl.pseudodynamics(adata, ...)` first"}
        if ukey not in data.uns or "history" not in data.uns[ukey]:
            raise KeyError(f"Unable to find adata.uns[{ukey!r}]['history']; {fix.get(ukey, 'train the model first')}.")
        data = data.uns[ukey]["history"]
    if isinstance(data, pd.DataFrame):
        return data
    columns, lengths = {}, {}
    for name, series in dict(data).items():
        arr = np.asarray(series)
        if arr.ndim != 1 or arr.dtype.kind not in "biuf":
            logger.info("history entry %r is not a 1-D numeric series; skipped", name)
            continue
        columns[name], lengths[name] = arr.astype(float), arr.shape[0]
    if not columns:
        raise ValueError("the history holds no 1-D numeric series to plot.")
    n = max(lengths.values())
    for name, length in lengths.items():
        if length != n:
            logger.info("history entry %r has %d values, not %d; padded with NaN", name, length, n)
            columns[name] = np.concatenate([columns[name], np.full(n - length, np.nan)])
    return pd.DataFrame(columns)


def history(
    data: AnnData | Mapping | pd.DataFrame,
    key: str = "lsd",
    *,
    x: str | None = None,
    keys: list[str] | None = None,
    logy: bool | None = None,
    ncols: int = 3,
    panel_size: tuple[float, float] = (3.6, 2.8),
    ax=None,
    show: bool | None = None,
    save: bool | str | None = None,
    return_fig: bool = False,
):
    """Training curves: one panel per recorded quantity, training and validation versions of a metric together.

    Parameters
    ----------
    data
        AnnData with ``uns[key]["history"]``, or the history itself (a dict of equal-length series or a DataFrame).
    key
        ``uns`` key of the model (``"lsd"``, ``"pseudodynamics"``; ``"pd"`` is an alias).
    x
        Series to use as the x axis; default the first of ``"epoch"``, ``"step"``, ``"iteration"`` present,
        otherwise the position.
    keys
        Series to draw (default: all numeric ones except ``x``).
    logy
        Logarithmic y axis; default: when a panel's positive values span more than two orders of magnitude.
    ncols
        Panels per row.
    panel_size
        Width and height of one panel in inches.
    ax
        One Axes to draw every series into (instead of one panel each).
    show
        Show the figure (default: unless ``ax`` is given).
    save
        ``True`` or a file-name suffix/path to save the figure.
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The array of panel Axes or the given Axes (``show=False``), the Figure (``return_fig=True``) or None.

    Examples
    --------
    >>> import waddington as wd
    >>> wd.pl.history(adata, "lsd")  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    table = history_table(data, key)
    if x is None:
        x = next((c for c in _X_KEYS if c in table.columns), None)
    elif x not in table.columns:
        raise KeyError(f"the history has no series {x!r} (available: {list(table.columns)}).")
    xs = table[x].to_numpy() if x is not None else np.arange(len(table))
    names = [c for c in table.columns if c != x and c not in _X_KEYS] if keys is None else list(keys)
    unknown = [k for k in names if k not in table.columns]
    if unknown:
        raise KeyError(f"the history has no series {unknown} (available: {list(table.columns)}).")
    if not names:
        raise ValueError("the history holds nothing to plot besides the x axis.")
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(_metric_name(name), []).append(name)

    ax_given = ax is not None
    if ax is not None:
        fig, panels = ax.figure, dict.fromkeys(groups, ax)
        axes_out = ax
    else:
        n = len(groups)
        nc = min(ncols, n)
        nr = math.ceil(n / nc)
        fig, axes = plt.subplots(nr, nc, figsize=(panel_size[0] * nc, panel_size[1] * nr), squeeze=False)
        flat = axes.ravel()
        for extra in flat[n:]:
            extra.set_visible(False)
        panels = dict(zip(groups, flat[:n], strict=True))
        axes_out = flat[:n]
    for group, members in groups.items():
        pax = panels[group]
        for name in members:
            pax.plot(xs, table[name].to_numpy(), label=name, linewidth=1.2)
        vals = table[members].to_numpy(dtype=float)
        pos = vals[np.isfinite(vals) & (vals > 0)]
        use_log = (
            logy
            if logy is not None
            else bool(pos.size and np.isfinite(vals).sum() == pos.size and pos.max() / pos.min() > 100.0)
        )
        # on a caller's axes shared by several series, only an explicit ``logy=True`` switches the scale
        if use_log and (not ax_given or logy):
            pax.set_yscale("log")
        if not ax_given:
            pax.set_title(group)
            pax.set_xlabel(x if x is not None else "index")
            if len(members) > 1:
                pax.legend(frameon=False, fontsize=8)
    if ax_given:
        ax.set_xlabel(x if x is not None else "index")
        ax.legend(frameon=False, fontsize=8)
    else:
        fig.tight_layout()  # the caller's figure keeps the layout the caller chose
    return finish(fig, axes_out, name="history", show=show, save=save, return_fig=return_fig, ax_given=ax_given)
