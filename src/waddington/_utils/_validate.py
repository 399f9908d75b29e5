"""Input validation shared by every ``pp``/``tl``/``pl`` function.

Each check raises an error that names the slot that is missing or wrong and the call that fixes it, so that a
user who passes the wrong AnnData learns what to run instead of reading a traceback. Checks only read; they never
modify the AnnData they are given.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ._logging import logger


def _fix(fix: str | None) -> str:
    return f"; {fix}" if fix else ""


def check_obs(
    adata: AnnData,
    key: str,
    *,
    fix: str | None = None,
    numeric: bool = False,
    finite: bool = False,
) -> pd.Series:
    """Return ``adata.obs[key]``, raising a clear error when it is missing, non-numeric or non-finite.

    Parameters
    ----------
    adata
        Annotated data matrix.
    key
        Column of :attr:`~anndata.AnnData.obs`.
    fix
        What the user should run to create the column (appended to the message).
    numeric
        Require a numeric dtype.
    finite
        Require every value to be finite (implies ``numeric``).

    Returns
    -------
    The column as a :class:`pandas.Series`.
    """
    if key not in adata.obs:
        raise KeyError(f"Unable to find {key!r} in adata.obs{_fix(fix)}.")
    col = adata.obs[key]
    if numeric or finite:
        if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            raise TypeError(f"adata.obs[{key!r}] must be numeric, found dtype {col.dtype}.")
    if finite:
        check_finite_obs(adata, key, col.to_numpy(dtype=float))
    return col


def check_finite_obs(adata: AnnData, key: str, values: np.ndarray) -> np.ndarray:
    """Raise a clear error naming ``adata.obs[key]`` and a cell when ``values`` (that column, as numbers) has NaN/inf."""
    bad = ~np.isfinite(values)
    if bad.any():
        hint = ""
        if np.isposinf(values[bad]).all():
            hint = (
                " (all +inf: scanpy's `sc.tl.dpt` gives +inf to cells its kNN graph does not connect to the root "
                "cell; more neighbours in `sc.pp.neighbors` or one connected component avoids it)"
            )
        raise ValueError(
            f"adata.obs[{key!r}] has {int(bad.sum())} non-finite value(s) (NaN or inf), e.g. at cell "
            f"{adata.obs_names[np.flatnonzero(bad)[0]]!r}; fill or remove them before calling this function{hint}."
        )
    return values


def check_obsm(adata: AnnData, key: str, *, fix: str | None = None, finite: bool = True) -> np.ndarray:
    """Return ``adata.obsm[key]`` as a 2-D float array, raising a clear error when missing or non-finite."""
    if key not in adata.obsm:
        available = ", ".join(map(repr, adata.obsm.keys())) or "none"
        raise KeyError(f"Unable to find {key!r} in adata.obsm (available: {available}){_fix(fix)}.")
    value = adata.obsm[key]
    if isinstance(value, pd.DataFrame):
        value = value.to_numpy()
    arr = value.toarray() if sp.issparse(value) else np.asarray(value)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"adata.obsm[{key!r}] must be 2-D, found shape {arr.shape}.")
    arr = arr.astype(float, copy=False)
    if finite:
        check_finite(arr, f"adata.obsm[{key!r}]")
    return arr


def check_obsp(adata: AnnData, key: str, *, fix: str | None = None) -> sp.csr_matrix:
    """Return ``adata.obsp[key]`` as a validated CSR matrix (see :func:`check_graph`)."""
    if key not in adata.obsp:
        raise KeyError(f"Unable to find {key!r} in adata.obsp{_fix(fix)}.")
    return check_graph(adata.obsp[key], adata.n_obs, where=f"adata.obsp[{key!r}]")


def check_graph(graph: Any, n_obs: int, *, where: str = "graph", nonnegative: bool = True) -> sp.csr_matrix:
    """Validate a cell × cell matrix and return it as CSR with float64 values.

    Raises an error when the matrix is not square, does not match ``n_obs``, holds non-finite values, or (with
    ``nonnegative``) holds negative weights.
    """
    if sp.issparse(graph):
        mat = sp.csr_matrix(graph, dtype=np.float64)
    else:
        arr = np.asarray(graph)
        if arr.ndim != 2:
            raise ValueError(f"{where} must be a 2-D matrix, found shape {arr.shape}.")
        mat = sp.csr_matrix(arr.astype(np.float64))
    if mat.shape[0] != mat.shape[1]:
        raise ValueError(f"{where} must be square (cells × cells), found shape {mat.shape}.")
    if mat.shape[0] != n_obs:
        raise ValueError(
            f"{where} has shape {mat.shape} but the AnnData has {n_obs} cells; recompute it on this AnnData "
            "(e.g. `sc.pp.neighbors(adata)`) after subsetting."
        )
    check_finite(mat.data, where)
    if nonnegative and mat.nnz and mat.data.min() < 0:
        raise ValueError(f"{where} has negative entries (min {mat.data.min():.3g}); weights must be non-negative.")
    return mat


def check_uns(adata: AnnData, key: str, *, fix: str | None = None) -> Any:
    """Return ``adata.uns[key]``, raising a clear error when it is missing."""
    if key not in adata.uns:
        raise KeyError(f"Unable to find {key!r} in adata.uns{_fix(fix)}.")
    return adata.uns[key]


def check_layer(adata: AnnData, layer: str, *, fix: str | None = None) -> np.ndarray | sp.spmatrix:
    """Return ``adata.layers[layer]``, raising a clear error when it is missing."""
    if layer not in adata.layers:
        available = ", ".join(map(repr, adata.layers.keys())) or "none"
        raise KeyError(f"Unable to find {layer!r} in adata.layers (available: {available}){_fix(fix)}.")
    return adata.layers[layer]


def check_finite(values: Any, where: str) -> None:
    """Raise a :class:`ValueError` naming ``where`` if ``values`` (array or sparse) holds NaN or inf."""
    data = values.data if sp.issparse(values) else np.asarray(values)
    if data.dtype.kind in "fc" and not np.isfinite(data).all():
        n_bad = int((~np.isfinite(data)).sum())
        raise ValueError(f"{where} has {n_bad} non-finite value(s) (NaN or inf).")


def check_counts(counts: Any, where: str) -> None:
    """Raise a :class:`ValueError` naming ``where`` unless ``counts`` holds non-negative integers."""
    data = counts.data if sp.issparse(counts) else np.asarray(counts)
    check_finite(data, where)
    if data.size == 0:
        return
    if data.min() < 0:
        raise ValueError(f"{where} must hold raw counts, but has negative values (min {data.min():.3g}).")
    if data.dtype.kind == "f" and not np.array_equal(data, np.round(data)):
        raise ValueError(
            f"{where} must hold raw integer counts, but has non-integer values "
            "(is it log-normalised?); store the raw counts there, e.g. `adata.layers['raw'] = counts`."
        )


def _is_integer_matrix(mat: Any) -> bool:
    if mat is None:
        return False
    data = mat.data if sp.issparse(mat) else np.asarray(mat)
    if data.size == 0:
        return True
    return bool(np.isfinite(data).all() and data.min() >= 0 and np.array_equal(data, np.round(data)))


def get_counts(adata: AnnData, layer: str | None = "raw") -> sp.csr_matrix:
    """Return the raw counts of ``adata`` as a CSR matrix of float32, validated as non-negative integers.

    Looks in ``adata.layers[layer]``; when that layer does not exist, falls back to ``adata.raw.X`` (the columns of
    ``adata.var_names``, so a ``raw`` kept from before highly-variable-gene selection works) and then to
    ``adata.X`` if it holds integers, logging which source was used. ``layer=None`` uses ``adata.X`` directly.
    """
    return counts_with_source(adata, layer)[0]


def _raw_columns(adata: AnnData, fix: str):
    """The columns of ``adata.raw.X`` for ``adata.var_names`` (only those are read and checked, not all of raw).

    A raw that lacks some of the genes is an error when it holds counts (it would otherwise be the source).
    """
    raw = adata.raw
    missing = adata.var_names.difference(raw.var_names)
    if len(missing):
        if _is_integer_matrix(raw.X):
            raise ValueError(
                f"adata.raw lacks {len(missing)} of the genes in adata.var_names (e.g. {missing[0]!r}), so its counts "
                f"cannot stand for adata.X; {fix}."
            )
        return None
    return raw.X if np.array_equal(raw.var_names, adata.var_names) else raw[:, adata.var_names].X


def counts_with_source(adata: AnnData, layer: str | None = "raw") -> tuple[sp.csr_matrix, str]:
    """:func:`get_counts` and where the counts came from (``"adata.layers['raw']"``, ``"adata.raw.X"``, ...)."""
    fix = (
        "store raw integer counts there (e.g. `adata.layers['raw'] = adata.X.copy()` before normalising) "
        "or pass `layer=` naming the layer that holds them"
    )
    if layer is None:
        source, counts = "adata.X", adata.X
    elif layer in adata.layers:
        source, counts = f"adata.layers[{layer!r}]", adata.layers[layer]
    elif adata.raw is not None and _is_integer_matrix(raw_counts := _raw_columns(adata, fix)):
        source, counts = "adata.raw.X", raw_counts
        logger.info("layer %r not found; using raw counts from adata.raw.X", layer)
    elif adata.X is not None and _is_integer_matrix(adata.X):
        source, counts = "adata.X", adata.X
        logger.info("layer %r not found; using integer counts from adata.X", layer)
    else:
        raise KeyError(f"Unable to find raw counts in adata.layers[{layer!r}], adata.raw or adata.X; {fix}.")
    if counts is None:
        raise KeyError(f"{source} is empty; {fix}.")
    if counts.shape != (adata.n_obs, adata.n_vars):
        raise ValueError(f"{source} has shape {counts.shape}, expected {(adata.n_obs, adata.n_vars)}.")
    check_counts(counts, source)
    return sp.csr_matrix(counts, dtype=np.float32), source
