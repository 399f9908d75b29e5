"""CellRank kernels built from our results."""

from ._lsd_kernel import LSDKernel

__all__ = ["LSDKernel"]
