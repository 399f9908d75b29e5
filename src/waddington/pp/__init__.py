"""Preprocessing: priors and inputs computed from an AnnData."""

from ._lsd_prior import lsd_prior

__all__ = ["lsd_prior"]
