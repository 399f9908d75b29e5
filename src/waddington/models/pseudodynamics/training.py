"""Configuration, batches and the Lightning training module of pseudodynamics+.

One training step draws a pair of consecutive time points ``(t_k, t_{k+1})`` (uniformly, as the reference), half a
batch of cells from each, an optimal-transport pairing between the two halves, and evaluates every loss term of
:mod:`~waddington.models.pseudodynamics.losses` on them. The PDE is evaluated at three kinds of points in one
batched pass (forward-mode derivative jets, :mod:`.jets`; nested autograd with Hutchinson traces): the batch
cells at the quadrature nodes of ``[t_k, t_{k+1}]`` (neural-ODE consistency), the batch cells at their own
observation time, and points on the OT displacement interpolation
``x_τ = (1-τ) x0 + τ x1`` at ``t_k + τ Δt`` (residual collocation where the population actually is between the two
time points; the reference only used the observed times, and its own review notes asked for intermediate ones).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import lightning.pytorch as lp
import numpy as np
import torch
from scipy.special import logsumexp

from waddington.models._optim import adam

from . import losses
from .networks import _ACTIVATIONS, PseudodynamicsNet
from .operators import _jet_ready, _resolve, pde_terms
from .pairing import sample_pairs

logger = logging.getLogger(__name__)


@dataclass
class PseudodynamicsConfig:
    """Every training option of pseudodynamics+ (reference §3–4), with the defaults of :func:`waddington.tl.pseudodynamics`.

    The reference's flag names map as: ``channels`` → ``hidden``, ``time_sensitive`` → ``time_dependent``,
    ``R_weight`` → ``residual_weight``, ``D_penalty`` → ``d_penalty``, ``D_var_weight`` → ``d_var_weight``,
    ``D_clip`` → ``d_clip``, ``density_estimator``/``bw``/``gmm_k_max`` unchanged, ``lr``, ``batch_size``,
    ``max_epochs`` unchanged; every other flag keeps its name. See the public function for what each does.
    """

    # networks
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    time_dependent: bool = True
    zero_growth: bool = False
    d_positive: bool = True
    d_clip: tuple[float, float] | None = None
    # data
    density_estimator: str = "kde"
    bw: float | str | None = None
    gmm_k_max: int = 5
    # losses
    weight_intensity: float = 1.0
    mass_weight: float = 10.0
    neuralode_weight: float = 2.0
    n_quadrature: int = 3
    ode_form: str = "log"
    residual_mode: str = "raw"
    residual_weight: float = 5.0
    ema_decay: float = 0.95
    rcg_warmup_steps: int = 300
    rcg_clip_pct: float = 0.02
    rcg_u_net_raw_weight: float = 0.05
    growth_weight: float = 10.0
    growth_loss_mode: str = "logratio"
    growth_pop_ref: str = "popmean"
    g_init_rate: float | str | None = "auto"
    d_penalty: float = 0.1
    d_penalty_mode: str = "mean"
    d_var_weight: float = 0.0
    cfm_weight: float = 1.0
    cfm_unbalanced_reg_m: float | None = None
    cfm_loops: int = 1
    deltax_weight: float = 0.01
    divergence: str = "auto"
    n_probes: int = 1
    # optimisation
    lr: float = 3e-3
    lr_schedule: str = "cosine"
    pretrain_steps: int = 2000
    freeze_surrogate_epochs: int = 0
    batch_size: int = 200
    max_epochs: int = 100
    steps_per_epoch: int | None = None
    early_stopping_patience: int = 20
    compile: bool = False

    def validate(self) -> None:
        """Raise a :class:`ValueError` naming the option that is out of range."""
        choices = {
            "residual_mode": ("raw", "ginv", "rcg"),
            "growth_loss_mode": ("legacy", "logratio", "massbalance"),
            "growth_pop_ref": ("cellsum", "popmean"),
            "d_penalty_mode": ("legacy", "mean"),
            "density_estimator": ("kde", "gmm"),
            "divergence": ("auto", "exact", "hutchinson"),
            "ode_form": ("log", "linear"),
            "lr_schedule": ("cosine", "constant"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}, got {getattr(self, name)!r}.")
        for name in (
            "neuralode_weight",
            "residual_weight",
            "growth_weight",
            "d_penalty",
            "d_var_weight",
            "cfm_weight",
            "deltax_weight",
            "rcg_u_net_raw_weight",
            "weight_intensity",
        ):
            if not (getattr(self, name) >= 0):
                raise ValueError(f"`{name}` must be non-negative, got {getattr(self, name)!r}.")
        if self.batch_size < 4:
            raise ValueError(f"`batch_size` must be at least 4, got {self.batch_size}.")
        if self.n_quadrature < 1 or self.cfm_loops < 1 or self.n_probes < 1:
            raise ValueError("`n_quadrature`, `cfm_loops` and `n_probes` must be at least 1.")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"`ema_decay` must be in [0, 1), got {self.ema_decay}.")
        if not 0 <= self.rcg_clip_pct < 0.5:
            raise ValueError(f"`rcg_clip_pct` must be in [0, 0.5), got {self.rcg_clip_pct}.")
        if self.cfm_unbalanced_reg_m is not None and not self.cfm_unbalanced_reg_m > 0:
            raise ValueError("`cfm_unbalanced_reg_m` must be a positive float (unbalanced OT) or None (balanced).")
        if self.d_clip is not None and not (len(self.d_clip) == 2 and self.d_clip[0] < self.d_clip[1]):
            raise ValueError(f"`d_clip` must be a pair (lo, hi) with lo < hi, got {self.d_clip!r}.")
        if isinstance(self.g_init_rate, str) and self.g_init_rate != "auto":
            raise ValueError(f"`g_init_rate` must be a float, 'auto' or None, got {self.g_init_rate!r}.")
        if self.lr <= 0 or self.max_epochs < 1:
            raise ValueError("`lr` must be positive and `max_epochs` at least 1.")

    def to_dict(self) -> dict:
        """Options as an h5ad-writable dict (``None`` becomes the string ``"None"``)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                value = "None"
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


@dataclass
class TrainingData:
    """Arrays the training needs (no AnnData): states, time points, observed log densities and supervision.

    ``log_u[k, i]`` is ``log u_obs,k(s_i) = log N_k + log p̂_k(s_i)`` in the model's population unit, so its
    integral over state space is ``N_k`` (:mod:`~waddington.models.pseudodynamics.density`).
    """

    states: np.ndarray
    time_index: np.ndarray
    times: np.ndarray
    log_u: np.ndarray
    log_pop: np.ndarray
    deltax: np.ndarray | None = None
    floors: np.ndarray = field(init=False)
    log_q_pooled: np.ndarray = field(init=False)

    def __post_init__(self):
        self.states = np.asarray(self.states, dtype=np.float32)
        self.time_index = np.asarray(self.time_index, dtype=np.int64)
        self.times = np.asarray(self.times, dtype=np.float64)
        self.log_u = np.asarray(self.log_u, dtype=np.float64)
        self.log_pop = np.asarray(self.log_pop, dtype=np.float64)
        self.floors = self.log_u.max(axis=1) - 23.0
        # density the pooled cells were drawn from: Σ_k (n_k/n) p̂_k
        counts = np.bincount(self.time_index, minlength=len(self.times)).astype(np.float64)
        log_p = self.log_u - self.log_pop[:, None]
        self.log_q_pooled = logsumexp(log_p + np.log(counts / counts.sum())[:, None], axis=0)


class PairBatches(torch.utils.data.IterableDataset):
    """Batches of two consecutive time points drawn from a fixed set of cells with a numpy generator."""

    def __init__(
        self,
        data: TrainingData,
        cells: np.ndarray,
        cfg: PseudodynamicsConfig,
        n_batches: int,
        seed: int,
        fixed: bool = False,
    ):
        super().__init__()
        self.data, self.cfg, self.n_batches = data, cfg, int(n_batches)
        self.cells = np.asarray(cells)
        self.by_time = [self.cells[data.time_index[self.cells] == k] for k in range(len(data.times))]
        self.seed = int(seed)
        self.rng = np.random.default_rng(seed)
        self._rank_seeded = False
        self.fixed = [self.sample(k % (len(data.times) - 1)) for k in range(self.n_batches)] if fixed else None

    def __len__(self) -> int:
        return self.n_batches

    def use_rank(self, rank: int) -> None:
        """Draw the stream of process ``rank`` of a multi-device run (rank 0: the single-device stream).

        Every process holds its own copy of this dataset; without a stream per rank all devices would train on
        the same batches. Called on the first iteration with the rank of the initialised process group.
        """
        self._rank_seeded = True
        if rank:
            self.rng = np.random.default_rng([self.seed, int(rank)])

    def __iter__(self):
        if self.fixed is not None:
            yield from self.fixed
            return
        if not self._rank_seeded:
            dist = torch.distributed
            self.use_rank(dist.get_rank() if dist.is_available() and dist.is_initialized() else 0)
        for _ in range(self.n_batches):
            yield self.sample(int(self.rng.integers(len(self.data.times) - 1)))

    def sample(self, k: int) -> dict:
        """One batch for the interval ``[t_k, t_{k+1}]``."""
        d, cfg, rng = self.data, self.cfg, self.rng
        half = cfg.batch_size // 2
        pool0, pool1 = self.by_time[k], self.by_time[k + 1]
        i0 = rng.choice(pool0, half, replace=len(pool0) < half)
        i1 = rng.choice(pool1, half, replace=len(pool1) < half)
        idx = np.concatenate([i0, i1])
        t_k, t_kp1 = d.times[k], d.times[k + 1]
        log_u_k, log_u_kp1 = d.log_u[k, idx], d.log_u[k + 1, idx]
        # the batch is a 50/50 draw from the two time points: q = ½ p̂_k + ½ p̂_{k+1}
        log_q = np.logaddexp(log_u_k - d.log_pop[k], log_u_kp1 - d.log_pop[k + 1]) - math.log(2.0)
        x0s, x1s, taus = [], [], []
        for _ in range(cfg.cfm_loops):
            a, b = sample_pairs(d.states[i0], d.states[i1], rng, unbalanced_reg_m=cfg.cfm_unbalanced_reg_m)
            x0s.append(d.states[i0][a])
            x1s.append(d.states[i1][b])
            taus.append(rng.uniform(size=half))
        out = {
            "k": torch.tensor(k),
            "s": torch.as_tensor(d.states[idx]),
            "t_own": torch.as_tensor(np.r_[np.full(half, t_k), np.full(half, t_kp1)], dtype=torch.float32),
            "log_u_k": torch.as_tensor(log_u_k, dtype=torch.float32),
            "log_u_kp1": torch.as_tensor(log_u_kp1, dtype=torch.float32),
            "log_q": torch.as_tensor(log_q, dtype=torch.float32),
            "x0": torch.as_tensor(np.stack(x0s)),
            "x1": torch.as_tensor(np.stack(x1s)),
            "tau": torch.as_tensor(np.stack(taus), dtype=torch.float32),
            "t_k": torch.tensor(t_k, dtype=torch.float32),
            "t_kp1": torch.tensor(t_kp1, dtype=torch.float32),
            "floor_k": torch.tensor(d.floors[k], dtype=torch.float32),
            "floor_kp1": torch.tensor(d.floors[k + 1], dtype=torch.float32),
            "log_relmass": torch.tensor(d.log_pop[k + 1] - d.log_pop[k], dtype=torch.float32),
            "log_pop_k": torch.tensor(d.log_pop[k], dtype=torch.float32),
            "log_pop_kp1": torch.tensor(d.log_pop[k + 1], dtype=torch.float32),
        }
        if d.deltax is not None:
            out["deltax"] = torch.as_tensor(np.asarray(d.deltax[idx], dtype=np.float32))
        # background cells from every time point: the density fit at t_k and t_{k+1} must also hold where the
        # pair has no cells, or the surrogate grows mass there (the reference drew its whole batch this way)
        bg = rng.choice(self.cells, half, replace=len(self.cells) < half)
        out["s_bg"] = torch.as_tensor(d.states[bg])
        out["log_u_k_bg"] = torch.as_tensor(d.log_u[k, bg], dtype=torch.float32)
        out["log_u_kp1_bg"] = torch.as_tensor(d.log_u[k + 1, bg], dtype=torch.float32)
        return out


def _compiler_name() -> str:
    """The C++ compiler torch.compile's CPU backend uses: ``$CXX``, else ``clang++`` on macOS and ``g++`` elsewhere."""
    return os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")


def _has_compiler() -> bool:
    """Whether that compiler exists (a quick check; a compile that still fails is caught at the first step)."""
    return sys.platform == "win32" or shutil.which(_compiler_name()) is not None


def gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre nodes and weights on ``[0, 1]``."""
    x, w = np.polynomial.legendre.leggauss(int(n))
    return 0.5 * (x + 1.0), 0.5 * w


class PseudodynamicsModule(lp.LightningModule):
    """Lightning module: the network, the loss of one batch, the RCG moving averages and the history."""

    def __init__(self, net: PseudodynamicsNet, cfg: PseudodynamicsConfig, n_intervals: int, seed: int = 0):
        super().__init__()
        self.net, self.cfg = net, cfg
        nodes, weights = gauss_legendre(cfg.n_quadrature)
        self.register_buffer("quad_nodes", torch.as_tensor(nodes, dtype=torch.float32))
        self.register_buffer("quad_weights", torch.as_tensor(weights, dtype=torch.float32))
        # RCG: one EMA slot per interval [t_k, t_{k+1}] (the reference indexed a key its dataset never emitted)
        self.register_buffer("rcg_ema", torch.zeros(max(n_intervals, 1)))
        self.register_buffer("rcg_ema_initialized", torch.zeros(max(n_intervals, 1), dtype=torch.bool))
        self.probe_generator = torch.Generator().manual_seed(int(seed))
        self.history: dict[str, list[float]] = defaultdict(list)
        self._epoch_sums: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "val": defaultdict(list)}
        self.rcg_steps = 0

        self.optimizer = adam(self.net.parameters(), lr=cfg.lr)
        # the PDE terms come from forward-mode jets whenever the traces are exact (the same values as nested
        # autograd, and a graph torch.compile can trace); compiling fuses the whole loss and its backward
        self.engine = "auto"
        self._compiled_terms = None  # built on first use: a compiled function does not pickle (ddp_spawn)
        self._compile_failed = False
        if cfg.compile:
            if not _jet_ready(net) or _resolve(cfg.divergence, net.n_dims) != "exact":
                raise ValueError(
                    "`compile=True` needs exact divergences (set divergence='exact'; 'auto' uses Hutchinson "
                    f"probes above 5 dimensions, here {net.n_dims}) and one of the activations "
                    f"{sorted(_ACTIVATIONS)}."
                )
            self.engine = "jet"
            if not _has_compiler():
                self._compile_failed = True
                logger.warning(
                    "compile=True needs a C++ compiler for torch.compile on CPU (looked for %s; set CXX); "
                    "training runs uncompiled",
                    _compiler_name(),
                )

    def __getstate__(self):
        """Pickle without the compiled loss (rebuilt on first use), so that spawned processes can copy the module."""
        state = dict(super().__getstate__())
        state["_compiled_terms"] = None
        return state

    def _loss_terms(self, b: dict):
        """:meth:`_terms`, compiled when ``cfg.compile``; if compiling fails, logged once and run uncompiled."""
        if not self.cfg.compile or self._compile_failed:
            return self._terms(b)
        if self._compiled_terms is None:
            self._compiled_terms = torch.compile(self._terms, dynamic=False)
        try:
            return self._compiled_terms(b)
        except Exception as err:  # noqa: BLE001 - inductor fails with several types; a real error recurs below
            message = str(err).strip().splitlines()
            logger.warning(
                "torch.compile failed (%s: %s); training continues uncompiled",
                type(err).__name__,
                message[0] if message else "",
            )
            self._compile_failed = True
            self._compiled_terms = None
            return self._terms(b)

    def configure_optimizers(self):
        """The Adam optimiser shared with the surrogate pre-training, with a per-epoch cosine decay to lr/20."""
        if self.cfg.lr_schedule == "constant":
            return self.optimizer
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=max(int(self.cfg.max_epochs), 1), eta_min=self.cfg.lr / 20
        )
        return {"optimizer": self.optimizer, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # ------------------------------------------------------------------ loss
    def batch_losses(self, b: dict, train: bool) -> dict[str, torch.Tensor]:
        """Every loss term of one batch (dict of scalars, ``"loss"`` is the weighted total)."""
        cfg = self.cfg
        out, coll_g, r = self._loss_terms(b)
        if cfg.residual_mode == "rcg":
            out["residual"], r_eff = self._rcg(b, coll_g, r, out["residual_raw"], train)
        else:
            r_eff = cfg.residual_weight
        total = (
            out["density"]
            + cfg.mass_weight * out.get("mass", 0.0)
            + cfg.neuralode_weight * out["ode"]
            + r_eff * out["residual"]
        )
        total = total + cfg.d_penalty * out["d_penalty"]
        if "growth" in out:
            total = total + cfg.growth_weight * out["growth"]
        if "d_var" in out:
            total = total + cfg.d_var_weight * out["d_var"]
        if "deltax" in out:
            total = total + cfg.deltax_weight * out["deltax"]
        if "cfm" in out:
            total = total + cfg.cfm_weight * out["cfm"]
        if cfg.residual_mode == "rcg" and self.rcg_steps >= cfg.rcg_warmup_steps:
            total = total + cfg.rcg_u_net_raw_weight * out["residual_raw"]
        out["loss"] = total
        return out

    def _terms(self, b: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """The loss terms that depend on the batch only (everything but the RCG residual and the weighted total).

        Returns the terms and the growth and PDE residual at the collocation points (for the RCG residual). Pure in
        the batch and the weights, with the time step as a tensor, so that ``torch.compile`` traces it once.
        """
        cfg, net = self.cfg, self.net
        s, t_own = b["s"], b["t_own"]
        B = s.shape[0]
        t_k, t_kp1 = b["t_k"], b["t_kp1"]
        dt = t_kp1 - t_k
        ones = torch.ones(B, device=s.device)
        out: dict[str, torch.Tensor] = {}
        alpha = cfg.weight_intensity

        # (1) log-density fit at both time points of the pair, at the pair's cells and background cells
        s_fit = torch.cat([s, b["s_bg"]])
        ones_fit = torch.ones(s_fit.shape[0], device=s.device)
        n_fit = s_fit.shape[0]
        lu_both = net.log_density(s_fit.repeat(2, 1), torch.cat([t_k * ones_fit, t_kp1 * ones_fit]))
        lu_k_all, lu_kp1_all = lu_both[:n_fit], lu_both[n_fit:]
        lu_k, lu_kp1 = lu_k_all[:B], lu_kp1_all[:B]
        target_k = torch.cat([b["log_u_k"], b["log_u_k_bg"]])
        target_kp1 = torch.cat([b["log_u_kp1"], b["log_u_kp1_bg"]])
        out["density"] = losses.weighted_log_mse(target_k, lu_k_all, b["floor_k"], alpha) + losses.weighted_log_mse(
            target_kp1, lu_kp1_all, b["floor_kp1"], alpha
        )
        if cfg.mass_weight > 0:
            # ∫u(s, t) ds by importance sampling over the batch must equal N at both time points
            log_b = math.log(B)
            mass_k = torch.logsumexp(lu_k - b["log_q"], 0) - log_b
            mass_kp1 = torch.logsumexp(lu_kp1 - b["log_q"], 0) - log_b
            out["mass"] = (mass_k - b["log_pop_k"]) ** 2 + (mass_kp1 - b["log_pop_kp1"]) ** 2

        # PDE terms at quadrature nodes, own times and OT interpolation points, in one pass
        nq = cfg.n_quadrature
        x0, x1, tau = b["x0"][0], b["x1"][0], b["tau"][0]
        x_tau = (1 - tau)[:, None] * x0 + tau[:, None] * x1
        t_tau = t_k + tau * (t_kp1 - t_k)
        t_nodes = (t_k + self.quad_nodes * (t_kp1 - t_k)).repeat_interleave(B)
        all_s = torch.cat([s.repeat(nq, 1), s, x_tau])
        all_t = torch.cat([t_nodes, t_own, t_tau])
        terms = pde_terms(
            net,
            all_s,
            all_t,
            method=cfg.divergence,
            n_probes=cfg.n_probes,
            generator=self.probe_generator if cfg.divergence != "exact" else None,
            engine=self.engine,
        )
        nB = nq * B
        node = {k_: v[:nB] for k_, v in terms.items()}
        own = {k_: v[nB : nB + B] for k_, v in terms.items()}
        coll = {k_: v[nB:] for k_, v in terms.items()}
        ot_v = terms["v"][nB + B :]

        # (2) neural-ODE consistency (quadrature of the surrogate's RHS at fixed states)
        ln_nodes = node["log_u"].reshape(nq, B)
        rhs_nodes = node["rhs"].reshape(nq, B)
        out["ode"], log_u_int = losses.ode_consistency(
            b["log_u_k"],
            b["log_u_kp1"],
            ln_nodes,
            rhs_nodes,
            self.quad_weights,
            dt,
            b["floor_kp1"],
            alpha,
            form=cfg.ode_form,
        )

        # (3) PDE residual (∂ℓ/∂t - RHS/u, per time unit)
        r = coll["residual"]
        raw = (r**2).mean()
        out["residual_raw"] = raw
        if cfg.residual_mode == "raw":
            out["residual"] = raw
        elif cfg.residual_mode == "ginv":
            g_star = (coll["g"] + r).detach()
            out["residual"] = ((coll["g"] - g_star) ** 2).mean()

        # (4) growth / population
        log_q = b["log_q"]
        g_both = net.growth(s.repeat(2, 1), torch.cat([t_k * ones, t_kp1 * ones]))
        g_k, g_kp1 = g_both[:B], g_both[B:]
        c = torch.maximum(b["log_u_k"].max(), b["log_u_kp1"].max()).detach()
        iw_k = torch.exp(b["log_u_k"] - log_q - c)
        iw_kp1 = torch.exp(b["log_u_kp1"] - log_q - c)
        iw_int = torch.exp(log_u_int - log_q - c)
        g_int = (self.quad_weights[:, None] * node["g"].reshape(nq, B) * torch.exp(ln_nodes - c)).sum(0) * dt
        g_int = g_int * torch.exp(-log_q)
        if cfg.growth_weight > 0 and cfg.residual_mode != "rcg":
            out["growth"] = losses.growth_loss(
                cfg.growth_loss_mode,
                g_k=g_k,
                g_kp1=g_kp1,
                iw_k=iw_k,
                iw_kp1=iw_kp1,
                iw_int=iw_int,
                growth_integral=g_int,
                dt=dt,
                relmass=torch.exp(b["log_relmass"]),
                pop_ref=cfg.growth_pop_ref,
            )

        # (5) diffusion penalty and (8) diffusion variance/entropy
        out["d_penalty"] = losses.diffusion_penalty(own["D"], cfg.d_penalty_mode)
        if cfg.d_var_weight > 0:
            out["d_var"] = losses.diffusion_variance_entropy(own["D"], s, b["log_u_k"], b["log_u_kp1"])

        # (6) velocity supervision by the kNN displacement
        if cfg.deltax_weight > 0 and "deltax" in b:
            out["deltax"] = losses.velocity_cosine(b["deltax"], own["v"])

        # (7) conditional flow matching on OT pairs
        if cfg.cfm_weight > 0:
            cfm = losses.flow_matching(ot_v, x0, x1, dt)
            for loop in range(1, cfg.cfm_loops):
                x0l, x1l, tl_ = b["x0"][loop], b["x1"][loop], b["tau"][loop]
                xl = (1 - tl_)[:, None] * x0l + tl_[:, None] * x1l
                cfm = cfm + losses.flow_matching(net.velocity(xl, t_k + tl_ * (t_kp1 - t_k)), x0l, x1l, dt)
            out["cfm"] = cfm
        return out, coll["g"], r

    def _rcg(self, b, g, r, raw, train):
        """Residual-centred growth: implied growth, re-centred by a per-interval EMA on the population anchor."""
        cfg = self.cfg
        if self.rcg_steps < cfg.rcg_warmup_steps:
            return raw, cfg.residual_weight * min(1.0, (self.rcg_steps + 1) / max(cfg.rcg_warmup_steps, 1))
        k = int(b["k"])
        with torch.no_grad():
            implied = torch.nan_to_num(g + r, nan=0.0, posinf=0.0, neginf=0.0)
            if cfg.rcg_clip_pct > 0:
                q = torch.tensor([cfg.rcg_clip_pct, 1 - cfg.rcg_clip_pct], dtype=implied.dtype, device=implied.device)
                lo, hi = torch.quantile(implied, q)
                implied = implied.clamp(lo, hi)
            # all collocation points are (approximately) samples of the population: plain mean
            e_bar = implied.mean()
            if train:
                if not bool(self.rcg_ema_initialized[k]):
                    self.rcg_ema[k] = e_bar
                    self.rcg_ema_initialized[k] = True
                else:
                    self.rcg_ema[k] = cfg.ema_decay * self.rcg_ema[k] + (1 - cfg.ema_decay) * e_bar
            ema = self.rcg_ema[k] if bool(self.rcg_ema_initialized[k]) else e_bar
            dt = float((b["t_kp1"] - b["t_k"]).clamp(1e-6))
            e_true = b["log_relmass"] / dt
            target = implied - ema + e_true
        return ((g - target) ** 2).mean(), cfg.residual_weight

    # ------------------------------------------------------------- lightning
    def on_train_epoch_start(self):
        """Freeze the surrogate for the first ``freeze_surrogate_epochs``."""
        # the fields first learn the PDE of the pre-fitted surrogate before the PDE may reshape it
        self.net.u.requires_grad_(self.current_epoch >= self.cfg.freeze_surrogate_epochs)

    def on_train_end(self):
        """Unfreeze the surrogate."""
        self.net.u.requires_grad_(True)

    def training_step(self, batch, batch_idx):
        """Loss of one training batch (recorded for the history)."""
        out = self.batch_losses(batch, train=True)
        if self.cfg.residual_mode == "rcg":
            self.rcg_steps += 1
        for key, value in out.items():
            self._epoch_sums["train"][key].append(float(value.detach()))
        return out["loss"]

    def validation_step(self, batch, batch_idx):
        """Validation loss of one fixed batch (autograd enabled: the loss needs derivatives)."""
        with torch.enable_grad():
            out = self.batch_losses(batch, train=False)
        for key, value in out.items():
            self._epoch_sums["val"][key].append(float(value.detach()))
        self.log("val_loss", out["loss"].detach(), prog_bar=True, on_epoch=True, on_step=False, batch_size=1)

    def on_validation_epoch_end(self):
        """Record the epoch's mean validation losses."""
        sums = self._epoch_sums["val"]
        if sums and not self.trainer.sanity_checking:
            for key, values in sums.items():
                self.history[f"val_{key}"].append(float(np.mean(values)))
        self._epoch_sums["val"] = defaultdict(list)

    def on_train_epoch_end(self):
        """Record the epoch's mean training losses."""
        for key, values in self._epoch_sums["train"].items():
            self.history[f"train_{key}"].append(float(np.mean(values)))
        self.history["epoch"].append(float(self.current_epoch))
        self._epoch_sums["train"] = defaultdict(list)


class _BestInMemory(lp.Callback):
    """Keep a copy of the weights with the lowest validation loss in memory (no checkpoint files)."""

    def __init__(self):
        self.best = math.inf
        self.state = None
        self.epoch = -1

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get("val_loss")
        if value is not None and float(value) < self.best:
            self.best = float(value)
            self.epoch = int(trainer.current_epoch)
            self.state = copy.deepcopy(pl_module.net.state_dict())


def pretrain_density(
    net: PseudodynamicsNet,
    data: TrainingData,
    cells: np.ndarray,
    cfg: PseudodynamicsConfig,
    seed: int,
    optimizer: torch.optim.Optimizer | None = None,
) -> list[float]:
    """Fit the density surrogate alone to the observed log densities at every time point (phase 1).

    The surrogate is what every PDE term differentiates, and fitting it costs only forward passes, so it is
    first trained on its own (``pretrain_steps`` Adam steps on batches of cells × all time points) before the
    joint training; the reference trains everything from scratch, which spends most epochs on this. Pass the
    joint training's optimizer so that its moment estimates carry over (a fresh Adam's first steps are
    sign-like and would undo part of the fit).
    """
    if cfg.pretrain_steps <= 0:
        return []
    rng = np.random.default_rng(seed + 2)
    opt = optimizer if optimizer is not None else torch.optim.Adam(net.parameters(), lr=cfg.lr)
    T = len(data.times)
    n = min(len(cells), max(cfg.batch_size, 512))
    device = next(net.parameters()).device
    # everything that does not depend on the drawn cells is built once: at ~8 µs per tensor operation on a small
    # CPU, the per-step conversions and a loop over time points cost as much as the network itself
    t = torch.as_tensor(data.times, dtype=torch.float32, device=device).repeat_interleave(n)
    floors = torch.as_tensor(data.floors, dtype=torch.float32, device=device).unsqueeze(1)
    log_pop = torch.as_tensor(data.log_pop, dtype=torch.float32, device=device)
    trace = []
    for _ in range(int(cfg.pretrain_steps)):
        idx = rng.choice(cells, n, replace=False)
        s = torch.as_tensor(data.states[idx], device=device).repeat(T, 1)
        target = torch.as_tensor(data.log_u[:, idx], dtype=torch.float32, device=device)
        pred = net.log_density(s, t).reshape(T, n)
        # one weighted log-MSE per time point (rows), averaged over time points and counted for both ends of a pair
        loss = losses.weighted_log_mse(target, pred, floors, cfg.weight_intensity).sum() * (2.0 / T)
        if cfg.mass_weight > 0:
            log_q = torch.as_tensor(data.log_q_pooled[idx], dtype=torch.float32, device=device)
            log_mass = torch.logsumexp(pred - log_q, dim=1) - math.log(n)
            loss = loss + cfg.mass_weight * ((log_mass - log_pop) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        trace.append(float(loss.detach()))
    return trace


def fit(
    net: PseudodynamicsNet,
    data: TrainingData,
    train_cells: np.ndarray,
    val_cells: np.ndarray,
    cfg: PseudodynamicsConfig,
    *,
    seed: int = 0,
    accelerator: str = "cpu",
    devices="auto",
    strategy="auto",
    progress_bar: bool = True,
) -> tuple[PseudodynamicsNet, dict, dict]:
    """Train ``net`` with Lightning and return it with the best validation weights loaded, its history and info.

    Parameters
    ----------
    net
        The network to train (modified in place).
    data
        Training arrays.
    train_cells, val_cells
        Indices of the training and validation cells (each time point needs cells in both).
    cfg
        Options.
    seed
        Seed of the batch generator, the Hutchinson probes and Lightning.
    accelerator, devices, strategy
        Passed to :class:`lightning.pytorch.Trainer`.
    progress_bar
        Show Lightning's progress bar.

    Returns
    -------
    ``(net, history, info)``: ``history`` maps loss names to per-epoch lists; ``info`` holds ``best_epoch``,
    ``best_val_loss``, ``n_epochs``, ``steps_per_epoch``, the pre-training trace and the seconds taken.
    """
    start = time.perf_counter()
    n_intervals = len(data.times) - 1
    steps = cfg.steps_per_epoch or int(np.clip(len(train_cells) // cfg.batch_size, 25, 100))
    train_ds = PairBatches(data, train_cells, cfg, steps, seed=seed)
    val_ds = PairBatches(data, val_cells, cfg, max(n_intervals, 2), seed=seed + 1, fixed=True)
    loader = lambda ds: torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0)
    module = PseudodynamicsModule(net, cfg, n_intervals, seed=seed)
    pretrain = pretrain_density(net, data, train_cells, cfg, seed, optimizer=module.optimizer)
    best = _BestInMemory()
    callbacks = [best]
    if cfg.early_stopping_patience and cfg.early_stopping_patience > 0:
        callbacks.append(lp.callbacks.EarlyStopping("val_loss", patience=int(cfg.early_stopping_patience), mode="min"))
    with tempfile.TemporaryDirectory(prefix="waddington_pd_") as root:
        trainer = lp.Trainer(
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            max_epochs=int(cfg.max_epochs),
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=bool(progress_bar),
            callbacks=callbacks,
            inference_mode=False,
            num_sanity_val_steps=0,
            default_root_dir=root,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*IterableDataset.*__len__.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            # torch's own compiler calls a helper it deprecated (torch 2.13); nothing the user can act on
            warnings.filterwarnings("ignore", message=".*_prims_common.check.*", category=FutureWarning)
            trainer.fit(module, loader(train_ds), loader(val_ds))
    if best.state is not None:
        net.load_state_dict(best.state)
    history = {k: list(v) for k, v in module.history.items()}
    info = {
        "best_epoch": int(best.epoch),
        "best_val_loss": float(best.best),
        "n_epochs": len(history.get("epoch", [])),
        "steps_per_epoch": int(steps),
        "pretrain_density_loss": np.asarray(pretrain, dtype=float),
        "seconds": float(time.perf_counter() - start),
    }
    return net.cpu(), history, info
