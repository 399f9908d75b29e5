"""Plots that read the slots written by the tools."""

from ._fates import fates
from ._history import history
from ._perturbation import perturbation
from ._potential import potential
from ._pseudodynamics import population_fit, pseudodynamics, pseudodynamics_fields
from ._streamlines import streamlines

__all__ = [
    "fates",
    "history",
    "perturbation",
    "population_fit",
    "potential",
    "pseudodynamics",
    "pseudodynamics_fields",
    "streamlines",
]
