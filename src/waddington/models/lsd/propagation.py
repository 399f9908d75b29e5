"""Fates and in-silico perturbations by flowing cells down a trained LSD landscape (torch + numpy/scipy, no AnnData).

Every function takes the trained :class:`~waddington.models.lsd.model.LSDModule` (anything with ``encode(x)`` ->
``(z_loc, z_scale)`` and ``integrate(z0, t)`` -> ``(len(t), n, z_dim)``), the log-normalised expression matrix
(CSR or ndarray; only the rows of a batch are densified) and the observed cell states, and works in batches, so
memory depends on the batch size and never on ``n_cells**2``. End points are snapped to the nearest observed cell
with a :class:`scipy.spatial.cKDTree`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
from scipy.spatial import cKDTree

from .rows import gather_rows

__all__ = ["Snapper", "flow", "propagate_fates", "propagate_perturbation"]


class Snapper:
    """Nearest observed cell of a state, optionally among a subset of cells (e.g. those of terminal clusters).

    Parameters
    ----------
    states
        Observed cell states, shape ``(n_cells, z_dim)``.
    allowed
        Indices of the cells that may be snapped to (default: all).
    """

    def __init__(self, states: np.ndarray, allowed: np.ndarray | None = None):
        states = np.asarray(states, dtype=np.float64)
        self.allowed = np.arange(states.shape[0]) if allowed is None else np.asarray(allowed, dtype=np.int64)
        if self.allowed.size == 0:
            raise ValueError("no cell to snap to: the set of allowed cells is empty.")
        self.tree = cKDTree(states[self.allowed])

    def __call__(self, z: np.ndarray | torch.Tensor) -> np.ndarray:
        """Indices (into all cells) of the nearest allowed cell of each row of ``z``."""
        if isinstance(z, torch.Tensor):
            z = z.detach().cpu().numpy()
        _, i = self.tree.query(np.asarray(z, dtype=np.float64), k=1)
        return self.allowed[np.asarray(i, dtype=np.int64)]


def flow(module, z0: torch.Tensor, t_end: float, n_steps: int, *, return_path: bool = False) -> torch.Tensor:
    """Integrate ``dz/dt = −∇V(z)`` from ``z0`` over ``[0, t_end]`` with ``n_steps`` RK4 steps.

    Returns the end states ``(n, z_dim)``, or the whole path ``(n_steps + 1, n, z_dim)`` with ``return_path``.
    """
    t = torch.linspace(0.0, float(t_end), int(n_steps) + 1, dtype=z0.dtype, device=z0.device)
    path = module.integrate(z0, t, substeps=1)
    if not torch.isfinite(path[-1]).all():
        raise FloatingPointError(
            f"the flow diverged (non-finite states) with {n_steps} RK4 steps over time {t_end}; use more steps "
            "(`n_steps`) or a shorter time."
        )
    return path if return_path else path[-1]


def _encode(module, x: np.ndarray, device, eps: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        loc, scale = module.encode(torch.from_numpy(x).to(device))
    return loc if eps is None else loc + scale * eps


def propagate_fates(
    module,
    X: np.ndarray | sp.csr_matrix,
    snapper: Snapper,
    *,
    t_end: float,
    n_steps: int,
    n_samples: int = 0,
    cells: np.ndarray | None = None,
    batch_size: int = 512,
    seed: int = 0,
    return_paths: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Flow cells down the landscape and snap the end points to observed cells.

    The deterministic flow starts at the posterior mean of q(z|x); the stochastic one starts ``n_samples`` times
    per cell at ``z ~ q(z|x)`` (a seeded torch generator, batch-independent: sample ``s`` of cell ``i`` always uses
    the same draw).

    Parameters
    ----------
    module
        Trained LSD module (eval mode).
    X
        Log-normalised expression, cells × genes (the encoder's genes, in order).
    snapper
        Nearest-cell lookup for end points.
    t_end, n_steps
        Integration time and number of RK4 steps.
    n_samples
        Stochastic starts per cell (0 skips the stochastic simulation).
    cells
        Indices of the cells to start from (default: all).
    batch_size
        Cells per batch.
    seed
        Seed of the posterior draws.
    return_paths
        Also snap every time point of the deterministic flow (``paths``, ``(n_steps + 1, n_start)``).
    progress
        Called with the number of cells finished after each batch.

    Returns
    -------
    Dict with ``"end"`` (snapped cell of the deterministic flow, ``(n_start,)``), ``"end_state"``
    (``(n_start, z_dim)``), ``"samples"`` (snapped cells of the stochastic flows, ``(n_start, n_samples)``) and,
    with ``return_paths``, ``"paths"``.
    """
    device = next(module.parameters()).device
    cells = np.arange(X.shape[0]) if cells is None else np.asarray(cells, dtype=np.int64)
    z_dim = int(module.z_dim)
    gen = torch.Generator(device="cpu")
    ends, end_states, samples, paths = [], [], [], []
    for start in range(0, cells.size, batch_size):
        idx = cells[start : start + batch_size]
        xb = gather_rows(X, idx)
        with torch.no_grad():
            loc, scale = module.encode(torch.from_numpy(xb).to(device))
        out = flow(module, loc, t_end, n_steps, return_path=return_paths)
        end = out[-1] if return_paths else out
        ends.append(snapper(end))
        end_states.append(end.cpu().numpy())
        if return_paths:
            p = out.cpu().numpy()
            paths.append(snapper(p.reshape(-1, z_dim)).reshape(p.shape[0], -1))
        if n_samples > 0:
            # one generator state per cell (seed, cell index) keeps draws independent of the batching
            eps = torch.empty((idx.size, n_samples, z_dim))
            for r, i in enumerate(idx):
                gen.manual_seed(_cell_seed(seed, 0, i))
                eps[r] = torch.randn((n_samples, z_dim), generator=gen)
            eps = eps.to(device)
            z0 = (loc[:, None, :] + scale[:, None, :] * eps).reshape(-1, z_dim)
            samples.append(snapper(flow(module, z0, t_end, n_steps)).reshape(idx.size, n_samples))
        if progress is not None:
            progress(idx.size)
    res = {
        "end": np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64),
        "end_state": np.concatenate(end_states) if end_states else np.zeros((0, z_dim), dtype=np.float32),
    }
    if n_samples > 0:
        res["samples"] = np.concatenate(samples) if samples else np.zeros((0, n_samples), dtype=np.int64)
    if return_paths:
        res["paths"] = np.concatenate(paths, axis=1) if paths else np.zeros((n_steps + 1, 0), dtype=np.int64)
    return res


def _cell_seed(seed: int, stream: int, cell: int) -> int:
    """Seed of the posterior draws of one cell in one stream (independent of batching)."""
    return int(np.random.SeedSequence([int(seed), int(stream), int(cell)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def propagate_perturbation(
    module,
    X: np.ndarray | sp.csr_matrix,
    snapper: Snapper,
    cells: np.ndarray,
    *,
    genes: np.ndarray | None = None,
    level: float | np.ndarray = 0.0,
    t_end: float,
    n_rounds: int,
    n_steps: int,
    n_samples: int = 1,
    stochastic: bool = False,
    batch_size: int = 512,
    seed: int = 0,
    stream: int = 0,
    final_snapper: Snapper | None = None,
) -> np.ndarray:
    """Where cells end up when gene(s) are clamped for the whole propagation (in-silico knockout/overexpression).

    The propagation is split into ``n_rounds`` segments of ``t_end / n_rounds``: clamp the gene(s) in the
    expression of the current cell, encode, flow for one segment (``n_steps`` RK4 steps), snap to the nearest
    observed cell, take that cell's expression and repeat, so the perturbation holds to the end (the reference
    stops clamping for its final, longest segment). ``genes=None`` runs the same procedure without clamping, the
    control arm. With ``stochastic`` every encoding draws ``z ~ q(z|x)`` instead of taking the posterior mean; the
    draws depend only on ``(seed, stream, cell, sample, round)``, so two arms with the same ``stream`` share them
    (common random numbers) and arms with different streams are independent.

    Parameters
    ----------
    module
        Trained LSD module (eval mode).
    X
        Log-normalised expression, cells × genes.
    snapper
        Nearest-cell lookup used between segments.
    cells
        Indices of the start cells.
    genes
        Column index (or indices) of the clamped gene(s); None for the control arm.
    level
        Value(s) the gene(s) are clamped to, in log-normalised units (0 = knockout).
    t_end, n_rounds, n_steps
        Total time, number of clamp-encode-flow-snap segments, RK4 steps per segment.
    n_samples
        Simulations per start cell (identical unless ``stochastic``).
    stochastic
        Draw the encodings from the posterior.
    batch_size
        Cells per batch.
    seed, stream
        Seed and stream of the posterior draws.
    final_snapper
        Nearest-cell lookup for the final end point (e.g. restricted to fate cells); default ``snapper``.

    Returns
    -------
    Snapped end cells, shape ``(len(cells), n_samples)``.
    """
    device = next(module.parameters()).device
    cells = np.asarray(cells, dtype=np.int64)
    final_snapper = final_snapper or snapper
    z_dim = int(module.z_dim)
    cols = None if genes is None else np.atleast_1d(np.asarray(genes, dtype=np.int64))
    lev = None if cols is None else np.broadcast_to(np.asarray(level, dtype=np.float32), cols.shape)
    dt = float(t_end) / int(n_rounds)
    gen = torch.Generator(device="cpu")
    out = []
    for start in range(0, cells.size, batch_size):
        idx = cells[start : start + batch_size]
        current = np.repeat(idx, n_samples)  # (batch * n_samples,), sample-major within a cell
        eps_all = None
        if stochastic:
            eps_all = torch.empty((idx.size, n_samples, n_rounds, z_dim))
            for r, i in enumerate(idx):
                gen.manual_seed(_cell_seed(seed, stream, i))
                eps_all[r] = torch.randn((n_samples, n_rounds, z_dim), generator=gen)
            eps_all = eps_all.reshape(idx.size * n_samples, n_rounds, z_dim).to(device)
        for k in range(n_rounds):
            xb = gather_rows(X, current)
            if cols is not None:
                xb[:, cols] = lev
            z = _encode(module, xb, device, None if eps_all is None else eps_all[:, k])
            end = flow(module, z, dt, n_steps)
            current = (final_snapper if k == n_rounds - 1 else snapper)(end)
        out.append(current.reshape(idx.size, n_samples))
    return np.concatenate(out) if out else np.zeros((0, n_samples), dtype=np.int64)
