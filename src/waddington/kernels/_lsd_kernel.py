"""A CellRank kernel from the LSD potential: Boltzmann transitions downhill on the kNN graph."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from cellrank.kernels import Kernel
from cellrank.kernels._base_kernel import UnidirectionalKernel
from cellrank.kernels.mixins import ConnectivityMixin

from waddington._utils import check_obs
from waddington.models.lsd.transitions import boltzmann_transitions

__all__ = ["LSDKernel"]


class LSDKernel(ConnectivityMixin, UnidirectionalKernel):
    """CellRank kernel whose transitions follow the learned Waddington potential downhill.

    ``T_ij ∝ 1[A_ij > 0] · exp(−β (V_j − V_i) / (V_max − V_min))`` on the kNN graph ``A``, the same matrix that
    :func:`waddington.tl.lsd` writes to ``obsp['lsd_transitions']``. Dividing by the potential's range makes ``beta``
    independent of the arbitrary scale of ``V`` (β = 50 has the sharpness of the LSD prior on a [0, 1] pseudotime).
    With ``weighted=True`` the Boltzmann factors multiply the connectivity weights instead of the binarised graph.
    Use it like any CellRank kernel: estimators (``cr.estimators.GPCCA``), plotting, and combinations such as
    ``0.8 * LSDKernel(adata) + 0.2 * ConnectivityKernel(adata)``.

    Parameters
    ----------
    adata
        Annotated data with ``obs[potential_key]`` (from :func:`waddington.tl.lsd`) and a kNN graph.
    potential_key
        Column of :attr:`~anndata.AnnData.obs` with the potential (high = early).
    conn_key
        Key of the kNN graph in :attr:`~anndata.AnnData.obsp`.
    kwargs
        Passed to :class:`cellrank.kernels.Kernel`.

    Examples
    --------
    >>> import cellrank as cr
    >>> import waddington as wd
    >>> k = wd.kernels.LSDKernel(adata).compute_transition_matrix(beta=50)  # doctest: +SKIP
    >>> g = cr.estimators.GPCCA(k)  # doctest: +SKIP
    """

    def __init__(
        self,
        adata: AnnData,
        potential_key: str = "lsd_potential",
        conn_key: str = "connectivities",
        **kwargs: Any,
    ):
        super().__init__(adata, potential_key=potential_key, conn_key=conn_key, **kwargs)

    def _read_from_adata(self, potential_key: str = "lsd_potential", **kwargs: Any) -> None:
        check_obs(self.adata, potential_key, fix="run `wd.tl.lsd(adata)` first (or pass `potential_key=`)", finite=True)
        super()._read_from_adata(**kwargs)
        self._potential_key = potential_key
        self._potential = self.adata.obs[potential_key].to_numpy(dtype=np.float64).copy()

    @property
    def potential(self) -> np.ndarray:
        """The potential the kernel was built from."""
        return self._potential

    def compute_transition_matrix(self, beta: float = 50.0, weighted: bool = False) -> LSDKernel:
        """Compute the Boltzmann transition matrix from the potential.

        Parameters
        ----------
        beta
            Inverse temperature on the range-normalised potential (0 gives a uniform walk on the graph).
        weighted
            Multiply by the connectivity weights instead of using the binarised graph.

        Returns
        -------
        Returns self and updates :attr:`transition_matrix` and :attr:`params`.
        """
        if not np.isfinite(beta) or beta < 0:
            raise ValueError(f"`beta` must be finite and non-negative, got {beta!r}.")
        if self._reuse_cache({"beta": float(beta), "weighted": bool(weighted), "key": self._potential_key}):
            return self
        v = self._potential
        score = -(v - v.min()) / (float(v.max() - v.min()) + 1e-12)
        trans, _ = boltzmann_transitions(self.connectivities, score, float(beta))
        if weighted:
            isolated = np.diff(self.connectivities.indptr) == 0  # absorbing self-loops keep weight 1
            weights = self.connectivities + sp.diags(isolated.astype(np.float64))
            trans = trans.multiply(weights).tocsr()
            sums = np.asarray(trans.sum(axis=1)).ravel()
            trans = sp.csr_matrix(sp.diags(1.0 / sums) @ trans)
        self.transition_matrix = trans
        return self


assert issubclass(LSDKernel, Kernel)
