"""Tools: the methods, each writing its results into AnnData slots."""

from ._lsd import LSDModel, lsd
from ._lsd_fates import lsd_fates
from ._lsd_perturb import lsd_perturb
from ._pseudodynamics import pseudodynamics, pseudodynamics_predict

__all__ = ["LSDModel", "lsd", "lsd_fates", "lsd_perturb", "pseudodynamics", "pseudodynamics_predict"]
