"""pseudodynamics+ PINN: fields, PDE operators, losses, densities and training (torch only)."""

from .density import fit_density, log_sampling_density, observed_log_density
from .inference import evaluate_fields, population_curves
from .networks import PseudodynamicsNet
from .operators import divergence, gradient, laplacian, pde_terms
from .pairing import ot_plan, sample_pairs
from .training import PseudodynamicsConfig, PseudodynamicsModule, TrainingData, fit

__all__ = [
    "PseudodynamicsConfig",
    "PseudodynamicsModule",
    "PseudodynamicsNet",
    "TrainingData",
    "divergence",
    "evaluate_fields",
    "fit",
    "fit_density",
    "gradient",
    "laplacian",
    "log_sampling_density",
    "observed_log_density",
    "ot_plan",
    "pde_terms",
    "population_curves",
    "sample_pairs",
]
