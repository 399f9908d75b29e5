"""Benchmark of wd.tl.pseudodynamics on the ground-truth simulators.

Prints, for the main option combinations (residual raw / ginv / rcg; growth logratio / massbalance; with and
without conditional flow matching), the recovery scores against the truth and the training time, plus the cost of
one training step of 200 cells with one torch thread (the reference pseudodynamics+ needs 0.16 s per such step:
an adaptive dopri5 adjoint solve with ~33 right-hand-side evaluations; here a fixed 3-node Gauss–Legendre
quadrature, no adjoint, and the PDE terms from forward-mode jets), uncompiled and with ``compile=True``. The
compiled rows include compiling in their setup, not in the step figure; the recovery row ``compile=True`` includes
it in its total (about 30 s with a cold inductor cache, a few seconds with a warm one).

Run (about 20-30 min on 2 quiet cores):

    python benchmarks/pseudodynamics.py | tee benchmarks/results/pseudodynamics.txt

``--quick`` trains fewer epochs for a smoke run; ``--only-defaults`` runs the default configuration only;
``--overhead`` prints where a step's time goes (step time against batch size, operations per step and the
machine's cost per tensor operation) and exits.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

import waddington as wd
from waddington.models.pseudodynamics import (
    PseudodynamicsConfig,
    PseudodynamicsModule,
    PseudodynamicsNet,
    TrainingData,
    observed_log_density,
)
from waddington.models.pseudodynamics.training import PairBatches

COMBOS = {
    "default (raw, logratio, CFM)": {},
    "residual ginv": {"residual_mode": "ginv"},
    "residual rcg": {"residual_mode": "rcg"},
    "growth massbalance": {"growth_loss_mode": "massbalance"},
    "no CFM": {"cfm_weight": 0.0},
    "CFM unbalanced (reg_m=1)": {"cfm_unbalanced_reg_m": 1.0},
    "compile=True": {"compile": True},
}


def scores(adata) -> dict[str, float]:
    g, tg = adata.obs["pd_growth"].to_numpy(), adata.obs["true_g"].to_numpy()
    v, tv = np.asarray(adata.obsm["pd_velocity"]), np.asarray(adata.obsm["true_v"])
    D, tD = adata.obs["pd_diffusion"].to_numpy(), adata.obs["true_D"].to_numpy()
    rel = lambda x, y: float(np.linalg.norm(x - y) / np.linalg.norm(y))
    cos = (v * tv).sum(1) / (np.linalg.norm(v, axis=1) * np.linalg.norm(tv, axis=1) + 1e-12)
    pop = adata.uns["pseudodynamics"]["population"]
    n_true = np.asarray(adata.uns["truth"]["N"], dtype=float)
    return {
        "g_r": float(np.corrcoef(g, tg)[0, 1]),
        "g_rel": rel(g, tg),
        "v_r": float(np.corrcoef(v.ravel(), tv.ravel())[0, 1]),
        "v_rel": rel(v, tv),
        "v_cos": float(cos.mean()),
        "D_ratio": float(np.median(D / tD)),
        "N_fit_err": float(np.max(np.abs(pop["fitted"] / n_true - 1))),
        "N_g_err": float(np.max(np.abs(pop["implied"] / n_true - 1))),
    }


def _step_setup(adata, n_steps: int, batch_size: int, engine: str = "auto", **options):
    """A fresh module and ``n_steps`` pre-drawn batches (after 5 warm-up steps, which compile), one torch thread.

    ``engine="autograd"`` computes the PDE terms by nested backward passes (the code before forward-mode jets).
    """
    torch.set_num_threads(1)
    X = np.asarray(adata.obsm["X_state"], dtype=float)
    times, ti = np.unique(adata.obs["day"].to_numpy(), return_inverse=True)
    pop = np.asarray(adata.uns["pop"]["mean"], dtype=float)
    pop = pop / pop[0]
    log_u, _ = observed_log_density(X, ti, pop)
    cfg = PseudodynamicsConfig(batch_size=batch_size, **options)
    data = TrainingData(X, ti, times, log_u, np.log(pop))
    net = PseudodynamicsNet(X.shape[1], state_center=X.mean(0), state_scale=X.std(0), time_center=2.5, time_scale=2.5)
    module = PseudodynamicsModule(net, cfg, len(times) - 1)
    if engine != "auto":
        module.engine = engine
    it = iter(PairBatches(data, np.arange(X.shape[0]), cfg, n_steps + 5, seed=0))
    opt = module.optimizer

    def one(b):
        loss = module.batch_losses(b, train=True)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(5):
        one(next(it))
    return one, [next(it) for _ in range(n_steps)]


def step_seconds(adata, n_steps: int = 30, batch_size: int = 200, repeats: int = 5, **options) -> float:
    """Seconds per training step (forward + backward + Adam) of ``batch_size`` cells, one torch thread.

    The best of ``repeats`` passes over the same ``n_steps`` pre-drawn batches: on a shared machine single passes
    of 30 steps varied by ±20 % between runs, and the minimum is the figure other tenants disturb least.
    """
    one, items = _step_setup(adata, n_steps, batch_size, **options)
    return min(_pass_seconds(one, items) for _ in range(repeats))


def _pass_seconds(one, items) -> float:
    """Seconds per step of one pass of ``one`` over the pre-drawn batches ``items``."""
    start = time.perf_counter()
    for b in items:
        one(b)
    return (time.perf_counter() - start) / len(items)


def _best_per_call(fn, calls: int, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def overhead(adata) -> None:
    """Print step time against batch size, operations per step and the cost of one tiny tensor operation.

    A step's fixed part (what a batch of a few cells still costs) is dispatch and autograd bookkeeping: it is the
    number of operations times the machine's cost per operation, whatever the arithmetic.
    """
    torch.set_num_threads(1)
    print("## where a step's time goes (population_1d, 1 torch thread)")
    setups = {b: _step_setup(adata, 20, b) for b in (25, 50, 100, 200)}
    best = dict.fromkeys(setups, float("inf"))
    for _ in range(4):  # alternate the batch sizes so that a drift of the machine's speed hits all of them
        for b, (one, items) in setups.items():
            best[b] = min(best[b], _pass_seconds(one, items))
    for b, sec in best.items():
        print(f"batch {b:4d} cells: {sec * 1e3:6.1f} ms/step")
    one, items = setups[200]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for x in items[:5]:
            one(x)
    events = prof.events()
    top_level = sum(e.name.startswith("aten::") and e.cpu_parent is None for e in events) / 5
    nodes = sum(e.name.startswith("autograd::engine::evaluate_function") for e in events) / 5
    print(f"per step of 200 cells: {top_level:.0f} tensor operations called from Python, {nodes:.0f} autograd nodes")
    x, y = torch.randn(8, 8), torch.randn(8, 8)
    fwd = _best_per_call(lambda: x * y, 2000)
    leaf = torch.randn(8, 8, requires_grad=True)

    def chain():
        z = leaf
        for _ in range(100):
            z = z * y
        z.sum().backward()

    per_node = _best_per_call(chain, 50) / 100
    print(
        f"one 8x8 multiplication: {fwd * 1e6:.1f} us; forward + backward per autograd node of a 100-node chain: "
        f"{per_node * 1e6:.1f} us"
    )
    print()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only-defaults", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps-only", action="store_true", help="only the per-step timings")
    parser.add_argument("--overhead", action="store_true", help="only where a step's time goes")
    args = parser.parse_args()
    print(f"# pseudodynamics benchmark — torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print(f"# training with torch.set_num_threads({args.threads}); step timing with 1 thread")
    print()
    one_d = wd.datasets.population_1d(random_state=0)
    if args.overhead:
        overhead(one_d)
        return
    branching = wd.datasets.population_branching(random_state=0)
    print("## seconds per training step of 200 cells, 1 torch thread (reference pseudodynamics+: 0.16 s)")
    for name, ad_, opts in [
        ("population_1d (d=1)", one_d, {}),
        ("population_1d, compile=True", one_d, {"compile": True}),
        ("population_1d, nested autograd (before jets)", one_d, {"engine": "autograd"}),
        ("population_branching (d=2)", branching, {}),
        ("population_branching, compile=True", branching, {"compile": True}),
        ("population_branching, nested autograd", branching, {"engine": "autograd"}),
        ("population_branching, residual rcg", branching, {"residual_mode": "rcg"}),
        ("population_branching, rcg, compile=True", branching, {"residual_mode": "rcg", "compile": True}),
        ("population_branching, no CFM", branching, {"cfm_weight": 0.0}),
    ]:
        sec = step_seconds(ad_, **opts)
        print(f"{name:45s} {sec * 1e3:7.1f} ms/step   ({0.16 / sec:5.1f}x faster than 0.16 s)")
    print()
    if args.steps_only:
        return
    extra = {"max_epochs": 20} if args.quick else {}
    combos = {"default (raw, logratio, CFM)": {}} if args.only_defaults else COMBOS
    header = f"{'dataset':22s} {'options':30s} " + " ".join(
        f"{k:>9s}" for k in ("g_r", "g_rel", "v_r", "v_rel", "v_cos", "D_ratio", "N_fit_err", "N_g_err")
    )
    print("## recovery against the truth (defaults unless stated); N_*_err = max relative error over time points")
    print(header + "    epochs   s/epoch   total s")
    datasets = [
        ("population_1d", wd.datasets.population_1d),
        ("population_branching", wd.datasets.population_branching),
    ]
    # defaults on both datasets first, then the other combinations
    runs = [(ds, combo) for combo in combos for ds in datasets]
    for (ds_name, factory), combo in runs:
        opts = combos[combo]
        torch.set_num_threads(args.threads)
        adata = factory(random_state=0)
        start = time.perf_counter()
        wd.tl.pseudodynamics(
            adata, time_key="day", state_key="X_state", progress_bar=False, accelerator="cpu", **opts, **extra
        )
        total = time.perf_counter() - start
        info = adata.uns["pseudodynamics"]["training"]
        sc = scores(adata)
        line = f"{ds_name:22s} {combo:30s} " + " ".join(f"{sc[k]:9.3f}" for k in sc)
        epochs = int(info["n_epochs"])
        print(line + f"  {epochs:7d} {info['seconds'] / max(epochs, 1):8.2f} {total:9.1f}", flush=True)


if __name__ == "__main__":
    main()
