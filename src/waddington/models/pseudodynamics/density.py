"""Observed densities per time point, scaled so that their integral over state space is the population size.

The reference divides each time point's density by its *sum over the pooled cells* and multiplies by
``N_k/N_0`` (reference §2), so the mass the PDE sees depends on how the estimate overlaps the pooled cells and is
not ``N(t)``. Here each estimator is a proper probability density ``p̂_k`` on ``R^d`` (a Gaussian KDE or a
Gaussian mixture integrates to one), and the observed density is ``u_k(s) = N_k p̂_k(s)``, so
``∫ u_k(s) ds = N_k`` exactly, whatever cells it is evaluated at. Everything is returned as logarithms.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from scipy.stats import gaussian_kde


class _KDE:
    """Gaussian KDE with full covariance (scipy), as the reference; ``bw_method`` is scipy's factor."""

    def __init__(self, X: np.ndarray, bw_method):
        # scipy fails on a singular covariance (e.g. all cells identical in one dimension): add a tiny jitter scale
        self.kde = gaussian_kde(X.T, bw_method=bw_method)
        self.n_components = X.shape[0]

    def logpdf(self, S: np.ndarray) -> np.ndarray:
        return self.kde.logpdf(S.T)


class _GMM:
    """Gaussian mixture with full covariances; the number of components (1..k_max) is chosen by the lowest BIC."""

    def __init__(self, X: np.ndarray, k_max: int, random_state: int):
        from sklearn.mixture import GaussianMixture

        best, best_bic = None, np.inf
        for k in range(1, max(1, min(int(k_max), X.shape[0] - 1)) + 1):
            gmm = GaussianMixture(k, covariance_type="full", random_state=random_state, max_iter=500, reg_covar=1e-6)
            gmm.fit(X)
            bic = gmm.bic(X)
            if bic < best_bic:
                best, best_bic = gmm, bic
        self.gmm = best
        self.n_components = best.n_components

    def logpdf(self, S: np.ndarray) -> np.ndarray:
        return self.gmm.score_samples(S)


def fit_density(
    X: np.ndarray, *, estimator: str = "kde", bw_method=None, gmm_k_max: int = 5, random_state: int = 0
) -> _KDE | _GMM:
    """Fit a probability density to the cells ``X`` (n×d) of one time point.

    Parameters
    ----------
    X
        States of one time point.
    estimator
        ``"kde"`` (Gaussian KDE, full covariance) or ``"gmm"`` (Gaussian mixture, components by BIC).
    bw_method
        KDE bandwidth: ``None``/``"scott"``, ``"silverman"`` or a float factor (the reference's ``--bw``).
    gmm_k_max
        Largest number of mixture components tried.
    random_state
        Seed of the mixture fit.

    Returns
    -------
    An object with ``logpdf(S)`` returning the log density at the rows of ``S``.
    """
    X = np.asarray(X, dtype=np.float64)
    if estimator == "kde":
        if X.shape[0] <= X.shape[1]:
            raise ValueError(f"a KDE in {X.shape[1]} dimensions needs more than {X.shape[1]} cells per time point.")
        return _KDE(X, bw_method)
    if estimator == "gmm":
        return _GMM(X, gmm_k_max, random_state)
    raise ValueError(f"`density` must be 'kde' or 'gmm', got {estimator!r}.")


def observed_log_density(
    states: np.ndarray,
    time_index: np.ndarray,
    population: np.ndarray,
    *,
    estimator: str = "kde",
    bw_method=None,
    gmm_k_max: int = 5,
    random_state: int = 0,
) -> tuple[np.ndarray, list]:
    """Log observed density ``log u_k(s_i) = log N_k + log p̂_k(s_i)`` of every time point at every cell.

    Parameters
    ----------
    states
        All cells' states (n×d).
    time_index
        Time point index ``k`` of every cell (n,), in ``0..T-1``.
    population
        Population size ``N_k`` of every time point (T,), in whatever unit the caller chooses (the integral of
        ``u_k`` over state space equals it).
    estimator, bw_method, gmm_k_max, random_state
        See :func:`fit_density`.

    Returns
    -------
    ``(log_u, estimators)``: a (T, n) array and the fitted estimators (one per time point).
    """
    population = np.asarray(population, dtype=np.float64)
    n_times = population.shape[0]
    log_u = np.empty((n_times, states.shape[0]), dtype=np.float64)
    estimators = []
    for k in range(n_times):
        est = fit_density(
            states[time_index == k],
            estimator=estimator,
            bw_method=bw_method,
            gmm_k_max=gmm_k_max,
            random_state=random_state,
        )
        estimators.append(est)
        log_u[k] = np.log(population[k]) + est.logpdf(states)
    return log_u, estimators


def log_sampling_density(log_p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``log Σ_k w_k p̂_k(s_i)`` for a mixture of time points (importance weights of pooled cells).

    Parameters
    ----------
    log_p
        (T, n) log probability densities ``log p̂_k(s_i)``.
    weights
        (T,) mixture weights (normalised here).
    """
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    with np.errstate(divide="ignore"):
        return logsumexp(log_p + np.log(w)[:, None], axis=0)
