"""Training of LSD with PyTorch Lightning: walk batches gathered from sparse storage and the ELBO training plan."""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import lightning.pytorch as pl
import numpy as np
import scipy.sparse as sp
import torch
from pyro.infer import Trace_ELBO
from scipy.special import gammaln
from torch.utils.data import DataLoader, IterableDataset

from waddington.models._malloc import retain_freed_memory
from waddington.models._optim import adam

from .model import LSDModule
from .rows import gather_rows
from .walks import WalkSampler

__all__ = ["LSDTrainingPlan", "WalkBatches", "fit_lsd"]


class WalkBatches(IterableDataset):
    """Per epoch: sample fresh walks from the prior, shuffle nothing more (walks are i.i.d.), yield batches.

    Each batch holds the log-expression ``x`` and raw counts ``x_raw`` of the *distinct* cells of its
    ``batch_size × length`` walk positions, gathered from the (sparse or dense) matrices, and ``rows`` mapping
    each walk-major position to its row; so no (walks × length × genes) tensor is ever built and every cell is
    densified and encoded once per batch. ``log_factorial`` holds each row's ``Σ_g log x_g!``, computed once for
    the data set. Epoch ``e`` uses the generator ``default_rng([seed, e, rank])``: the same seed gives the same
    batches.
    """

    def __init__(
        self,
        x_log: np.ndarray | sp.csr_matrix,
        counts: np.ndarray | sp.csr_matrix,
        transitions: sp.csr_matrix,
        *,
        n_walks: int,
        length: int,
        batch_size: int,
        seed: int,
        library: np.ndarray | None = None,
    ):
        super().__init__()
        self.x_log, self.counts, self.library = x_log, counts, library
        self.log_factorial = _log_factorial_per_cell(counts)
        self.sampler = WalkSampler(transitions)
        self.n_walks, self.length, self.batch_size, self.seed = int(n_walks), int(length), int(batch_size), int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(self.n_walks / self.batch_size)

    def __iter__(self):
        rank = (
            torch.distributed.get_rank()
            if torch.distributed.is_available() and torch.distributed.is_initialized()
            else 0
        )
        rng = np.random.default_rng([self.seed, self.epoch, rank])
        self.epoch += 1
        walks = self.sampler.sample(self.n_walks, self.length, rng)
        for start in range(0, self.n_walks, self.batch_size):
            w = walks[start : start + self.batch_size]
            cells, rows = np.unique(w.reshape(-1), return_inverse=True)
            batch = {
                "x": torch.from_numpy(gather_rows(self.x_log, cells)),
                "x_raw": torch.from_numpy(gather_rows(self.counts, cells)),
                "rows": torch.from_numpy(rows.astype(np.int64)),
                "log_factorial": torch.from_numpy(self.log_factorial[cells]),
                "walks": torch.from_numpy(w),
            }
            if self.library is not None:
                batch["library"] = torch.from_numpy(self.library[cells].astype(np.float32))
            yield batch


def _log_factorial_per_cell(counts: np.ndarray | sp.spmatrix) -> np.ndarray:
    """``Σ_g log(x_g!)`` per cell (float32), the count-only constant of the ZINB likelihood, computed once."""
    if sp.issparse(counts):
        csr = sp.csr_matrix(counts)
        vals = gammaln(csr.data.astype(np.float64) + 1.0)
        out = sp.csr_matrix((vals, csr.indices, csr.indptr), shape=csr.shape).sum(axis=1)
        return np.asarray(out, dtype=np.float32).ravel()
    return gammaln(np.asarray(counts, dtype=np.float64) + 1.0).sum(axis=1).astype(np.float32)


class LSDTrainingPlan(pl.LightningModule):
    """Lightning training plan of LSD.

    Single-particle ELBO (``Trace_ELBO.differentiable_loss``) plus the penalties, Adam with a cosine-with-warm-
    restarts schedule that is actually stepped (once per epoch), and a per-epoch history.
    """

    def __init__(
        self,
        module: LSDModule,
        *,
        lr: float = 1e-3,
        lr_min: float = 1e-5,
        lr_T0: int = 40,
        lr_T_mult: int = 1,
        kl_weight: float = 1.0,
        V_coeff: float = 0.01,
        W_coeff_max: float = 1e-3,
        W_coeff_min: float = 1e-4,
        W_epochs: int = 50,
    ):
        super().__init__()
        self.module = module
        self.lr, self.lr_min, self.lr_T0, self.lr_T_mult = float(lr), float(lr_min), int(lr_T0), int(lr_T_mult)
        self.kl_weight, self.V_coeff = float(kl_weight), float(V_coeff)
        self.W_coeff_max, self.W_coeff_min, self.W_epochs = float(W_coeff_max), float(W_coeff_min), int(W_epochs)
        self.elbo = Trace_ELBO()
        self.history: dict[str, list[float]] = {
            "epoch": [],
            "loss": [],
            "potential_metric": [],
            "lr": [],
            "W_coeff": [],
        }
        self._sum = {"loss": 0.0, "potential_metric": 0.0, "n": 0}
        self._lr_epoch_start = float(lr)

    def w_coeff(self, epoch: int) -> float:
        """Smoothness weight: linear decay from ``W_coeff_max`` to ``W_coeff_min`` over ``W_epochs`` epochs."""
        if epoch >= self.W_epochs:
            return self.W_coeff_min
        return self.W_coeff_max + (self.W_coeff_min - self.W_coeff_max) * epoch / self.W_epochs

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:  # noqa: D102
        n_walks, length = batch["walks"].shape
        loss = self.elbo.differentiable_loss(
            self.module.model,
            self.module.guide,
            batch["x_raw"],
            batch["x"],
            int(n_walks),
            int(length),
            batch.get("library"),
            self.kl_weight,
            self.w_coeff(self.current_epoch),
            self.V_coeff,
            batch.get("rows"),
            batch.get("log_factorial"),
        )
        pm = float(self.module.last["potential_metric"])
        self._sum["loss"] += float(loss.detach()) * int(n_walks)
        self._sum["potential_metric"] += pm * int(n_walks)
        self._sum["n"] += int(n_walks)
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=int(n_walks))
        return loss

    def on_train_epoch_start(self) -> None:  # noqa: D102
        self._lr_epoch_start = float(self.optimizers().param_groups[0]["lr"])

    def on_train_epoch_end(self) -> None:  # noqa: D102
        n = max(self._sum["n"], 1)
        self.history["epoch"].append(float(self.current_epoch))
        self.history["loss"].append(self._sum["loss"] / n)
        self.history["potential_metric"].append(self._sum["potential_metric"] / n)
        self.history["lr"].append(self._lr_epoch_start)
        self.history["W_coeff"].append(self.w_coeff(self.current_epoch))
        self._sum = {"loss": 0.0, "potential_metric": 0.0, "n": 0}

    def configure_optimizers(self):  # noqa: D102
        opt = adam(self.module.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            opt, T_0=self.lr_T0, T_mult=self.lr_T_mult, eta_min=self.lr_min
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def fit_lsd(
    plan: LSDTrainingPlan,
    data: WalkBatches,
    *,
    n_epochs: int,
    accelerator: str = "cpu",
    devices: int | str | list[int] = "auto",
    strategy: Any = "auto",
    grad_clip: float = 10.0,
    progress_bar: bool = True,
    trainer_kwargs: dict[str, Any] | None = None,
) -> pl.Trainer:
    """Train ``plan`` on ``data`` for ``n_epochs`` with a quiet Lightning trainer (no logger, no checkpoints).

    The loop runs inside :func:`~waddington.models._malloc.retain_freed_memory`, so the few-MiB tensors of each
    step reuse heap pages instead of being mapped afresh every step.
    """
    kwargs: dict[str, Any] = {
        "max_epochs": int(n_epochs),
        "accelerator": accelerator,
        "devices": devices,
        "strategy": strategy,
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "enable_progress_bar": bool(progress_bar),
        "gradient_clip_val": float(grad_clip) if grad_clip else None,
        "gradient_clip_algorithm": "norm",
        "num_sanity_val_steps": 0,
    }
    kwargs.update(trainer_kwargs or {})
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__` defined.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            trainer = pl.Trainer(**kwargs)
            loader = DataLoader(data, batch_size=None, num_workers=0)
            with retain_freed_memory():
                trainer.fit(plan, train_dataloaders=loader)
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)
    return trainer
