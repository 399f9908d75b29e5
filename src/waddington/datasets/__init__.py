"""Simulators with ground truth: a Gata1/Spi1 toggle switch (LSD) and population models (pseudodynamics)."""

from ._population_1d import population_1d
from ._population_branching import branching_fields, population_branching
from ._toggle_switch import toggle_switch

__all__ = ["branching_fields", "population_1d", "population_branching", "toggle_switch"]
