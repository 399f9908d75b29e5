"""Dense rows gathered from a sparse or dense expression matrix, one batch at a time (numpy/scipy only)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["gather_rows"]


def gather_rows(mat: np.ndarray | sp.csr_matrix, idx: np.ndarray) -> np.ndarray:
    """Dense float32 copy of rows ``idx`` of a CSR matrix or ndarray (only those rows are densified).

    The result is always a new array, so callers may modify it (e.g. clamp a gene).
    """
    if sp.issparse(mat):
        return mat[idx].toarray().astype(np.float32, copy=False)
    return np.asarray(mat[idx], dtype=np.float32)
