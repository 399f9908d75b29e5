"""A CellRank kernel from the LSD potential: Boltzmann transitions downhill on the kNN graph."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from cellrank.kernels import Kernel
from cellrank.kernels._base_kernel import BidirectionalKernel
from cellrank.kernels.mixins import ConnectivityMixin

from waddington._utils import check_obs
from waddington.models.lsd.transitions import boltzmann_transitions

__all__ = ["LSDKernel"]


class LSDKernel(ConnectivityMixin, BidirectionalKernel):
    """CellRank kernel whose transitions follow the learned Waddington potential downhill.

    ``T_ij ∝ 1[A_ij > 0] · exp(−β (V_j − V_i) / (V_max − V_min))`` on the kNN graph ``A``, the same matrix that
    :func:`waddington.tl.lsd` writes to ``obsp['lsd_transitions']``. Dividing by the potential's range makes ``beta``
    independent of the arbitrary scale of ``V`` (β = 50 has the sharpness of the LSD prior on a [0, 1] pseudotime).
    With ``weighted=True`` the Boltzmann factors multiply the connectivity weights instead of the binarised graph.
    The backward kernel (``backward=True`` or ``~kernel``) walks uphill, ``exp(+β (V_j − V_i) / (V_max − V_min))``,
    towards the progenitors, as CellRank's backward kernels do for initial states.
    Use it like any CellRank kernel: estimators (``cr.estimators.GPCCA``), plotting, and combinations such as
    ``0.8 * LSDKernel(adata) + 0.2 * ConnectivityKernel(adata)``.

    Parameters
    ----------
    adata
        Annotated data with ``obs[potential_key]`` (from :func:`waddington.tl.lsd`) and a kNN graph.
    backward
        Walk uphill in the potential (towards early cells) instead of downhill.
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
        backward: bool = False,
        potential_key: str = "lsd_potential",
        conn_key: str = "connectivities",
        **kwargs: Any,
    ):
        super().__init__(adata, backward=backward, potential_key=potential_key, conn_key=conn_key, **kwargs)

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
        params = {"beta": float(beta), "weighted": bool(weighted), "key": self._potential_key}
        if self._reuse_cache({**params, "backward": self.backward}):
            return self
        v = self._potential
        score = (v - v.min()) / (float(v.max() - v.min()) + 1e-12)
        trans, absorbing = boltzmann_transitions(self.connectivities, score if self.backward else -score, float(beta))
        if weighted:
            # absorbing self-loops (rows without a positive weight, stored zeros included) keep weight 1
            loops = np.zeros(self.adata.n_obs)
            loops[absorbing] = 1.0
            weights = self.connectivities + sp.diags(loops)
            trans = trans.multiply(weights).tocsr()
            sums = np.asarray(trans.sum(axis=1)).ravel()
            trans = sp.csr_matrix(sp.diags(1.0 / sums) @ trans)
        self.transition_matrix = trans
        return self

    def __invert__(self) -> LSDKernel:
        """The kernel of the opposite direction (uphill for a forward kernel), without a transition matrix."""
        inverted = self._copy_ignore("_transition_matrix")
        inverted._backward = not self.backward
        inverted._params = {}
        return inverted


assert issubclass(LSDKernel, Kernel)
