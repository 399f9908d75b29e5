"""Internal helpers shared by every public function: validation, random state, devices, slot writing."""

from ._device import resolve_accelerator, resolve_device
from ._logging import logger
from ._random import get_rng, resolve_seed, seed_everything
from ._validate import (
    check_counts,
    check_finite,
    check_finite_obs,
    check_graph,
    check_layer,
    check_obs,
    check_obsm,
    check_obsp,
    check_uns,
    counts_with_source,
    get_counts,
)

__all__ = [
    "check_counts",
    "check_finite",
    "check_finite_obs",
    "check_graph",
    "check_layer",
    "check_obs",
    "check_obsm",
    "check_obsp",
    "check_uns",
    "counts_with_source",
    "get_counts",
    "get_rng",
    "logger",
    "resolve_accelerator",
    "resolve_device",
    "resolve_seed",
    "seed_everything",
]
