"""Random walks on a row-stochastic CSR transition matrix, sampled by a numba-compiled inverse-CDF sampler.

All randomness (start cells and one uniform number per step) is drawn up front from a numpy
:class:`~numpy.random.Generator`, so a seed gives the same walks on every machine and the compiled loop is
pure arithmetic: per step one binary search in the cumulative weights of the current row, O(log degree).
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp

__all__ = ["WalkSampler", "sample_walks"]


@numba.njit(cache=True)
def _cumulative(indptr, data):  # pragma: no cover - compiled
    out = np.empty(data.shape[0], dtype=np.float64)
    n = indptr.shape[0] - 1
    for i in range(n):
        acc = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            acc += data[p]
            out[p] = acc
    return out


@numba.njit(cache=True)
def _walk(indptr, indices, cum, starts, u, out):  # pragma: no cover - compiled
    n_walks, length = out.shape
    for w in range(n_walks):
        cur = starts[w]
        out[w, 0] = cur
        for k in range(1, length):
            lo = indptr[cur]
            hi = indptr[cur + 1]
            target = u[w, k - 1] * cum[hi - 1]
            a, b = lo, hi - 1
            while a < b:  # first position with cum > target
                mid = (a + b) // 2
                if cum[mid] > target:
                    b = mid
                else:
                    a = mid + 1
            cur = indices[a]
            out[w, k] = cur


class WalkSampler:
    """Sample fixed-length random walks from a CSR transition matrix.

    Parameters
    ----------
    transitions
        Row-stochastic (or any non-negative) CSR matrix; every row needs at least one positive entry
        (:func:`waddington.pp.lsd_prior` guarantees this by turning empty rows into absorbing self-loops).
    """

    def __init__(self, transitions: sp.spmatrix):
        p = sp.csr_matrix(transitions, dtype=np.float64, copy=True)
        p.eliminate_zeros()
        p.sum_duplicates()
        if p.shape[0] != p.shape[1]:
            raise ValueError(f"transition matrix must be square, found shape {p.shape}.")
        if p.nnz and (not np.isfinite(p.data).all() or p.data.min() < 0):
            raise ValueError("transition matrix must hold finite, non-negative weights.")
        empty = np.flatnonzero(np.diff(p.indptr) == 0)
        if empty.size:
            raise ValueError(
                f"{empty.size} row(s) of the transition matrix have no outgoing transition (e.g. row {empty[0]}); "
                "recompute it with `wd.pp.lsd_prior`, which makes such cells absorbing."
            )
        self.n = p.shape[0]
        self.indptr = p.indptr.astype(np.int64)
        self.indices = p.indices.astype(np.int64)
        self.cum = _cumulative(self.indptr, p.data)

    def sample(
        self, n_walks: int, length: int, rng: np.random.Generator, starts: np.ndarray | None = None
    ) -> np.ndarray:
        """Return ``(n_walks, length)`` int64 cell indices; starts are uniform over cells unless given."""
        if length < 1 or n_walks < 0:
            raise ValueError(f"need n_walks >= 0 and length >= 1, got {n_walks} and {length}.")
        if starts is None:
            starts = rng.integers(0, self.n, size=n_walks)
        starts = np.ascontiguousarray(starts, dtype=np.int64)
        u = rng.random((n_walks, max(length - 1, 1)))
        out = np.empty((n_walks, length), dtype=np.int64)
        _walk(self.indptr, self.indices, self.cum, starts, u, out)
        return out


def sample_walks(
    transitions: sp.spmatrix, n_walks: int, length: int, *, random_state: int | np.random.Generator = 0
) -> np.ndarray:
    """Sample ``n_walks`` walks of ``length`` cells from ``transitions`` (see :class:`WalkSampler`).

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> P = sp.csr_matrix([[0.0, 1.0], [1.0, 0.0]])
    >>> sample_walks(P, 2, 3, random_state=0).shape
    (2, 3)
    """
    rng = random_state if isinstance(random_state, np.random.Generator) else np.random.default_rng(random_state)
    return WalkSampler(transitions).sample(n_walks, length, rng)
