"""How far can one step of a transition matrix move toggle-switch cells forward in true time? (issue #3's target).

Issue #3 asks that the expected change of true time along one step of ``obsp["lsd_transitions"]`` be positive for
at least 85 % of cells. This script trains the default model on several simulated data sets and scores, side by
side, what bounds and what could move that fraction:

* ``lsd_transitions`` as written by ``wd.tl.lsd`` (Boltzmann ``exp(−β ΔV)`` on the kNN graph, DESIGN.md §3), and
  its sharpest potential-only variant (potential smoothed six times, β = 300);
* the DPT prior the model is trained on (``obsp["lsd_prior_transitions"]``);
* an oracle: the same Boltzmann formula on the *true* time;
* a supervised ceiling: the same formula on true time *predicted from expression* by gradient boosting on the
  PCs, out of fold (5 folds), i.e. how much of true time expression can tell at all;
* a velocity kernel built from the learned dynamics instead of the scalar potential (not what the package
  writes; an experiment): the latent drift ``−∇V(z̄)`` at the kNN-smoothed cell state ``z̄`` is pushed through the
  decoder, ``v = J_x̂(z̄) · (−∇V(z̄))`` with ``x̂(z) = log1p(L · ρ(z))`` (``L`` the median library size), projected
  on the PCs, and scored CellRank-VelocityKernel style, ``P_ij ∝ exp(cos(pca_j − pca_i, v_i) / σ)``, σ = 0.05.

For each it prints the forward fraction, the forward fraction over the last tenth of cells by true time (the
attractors, where expression has stopped changing) and Spearman(fate entropy, true time) of the matrix (the
entropy recipe of ``wd.tl.lsd``: 6 k-means states of the cell state, 10 steps).

Run from the repository root::

    python benchmarks/lsd_forward_fraction.py --threads 2 --record benchmarks/results/lsd_forward_fraction.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np


def _forward(p, t: np.ndarray) -> tuple[float, float]:
    step = p @ t - t > 0
    last = t >= np.quantile(t, 0.9)
    return float(step.mean()), float(step[last].mean())


def _decoder_velocity_kernel(adata, model, graph, sigma: float, smoothing: int):
    import scipy.sparse as sp
    import torch

    from waddington.models.lsd.transitions import edge_softmax, smooth_on_graph

    z = np.asarray(adata.obsm["X_lsd_cell_state"], dtype=np.float64)
    z = np.column_stack([smooth_on_graph(graph, z[:, k], smoothing) for k in range(z.shape[1])])
    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    lib = float(np.median(np.expm1(x).sum(1)))
    module = model.module.eval()
    zt = torch.as_tensor(z, dtype=torch.float32)
    drift = module.drift(zt)

    def expression(state):
        return torch.log1p(lib * module.z_decoder(state)[1])

    with torch.no_grad():
        _, v = torch.func.jvp(expression, (zt,), (drift,))
    v_pca = v.numpy().astype(np.float64) @ np.asarray(adata.varm["PCs"], dtype=np.float64)
    pca = np.asarray(adata.obsm["X_pca"], dtype=np.float64)[:, : v_pca.shape[1]]
    rows = np.repeat(np.arange(graph.shape[0]), np.diff(graph.indptr))
    d = pca[graph.indices] - pca[rows]
    f = v_pca[rows]
    cos = (d * f).sum(1) / (np.linalg.norm(d, axis=1) * np.linalg.norm(f, axis=1) + 1e-12)
    return sp.csr_matrix((edge_softmax(graph.indptr, cos, 1.0 / sigma), graph.indices, graph.indptr), shape=graph.shape)


def _supervised_time(adata, t: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.model_selection import KFold, cross_val_predict

    x = np.asarray(adata.obsm["X_pca"])[:, :30]
    cv = KFold(5, shuffle=True, random_state=seed)
    return cross_val_predict(HistGradientBoostingRegressor(max_iter=300, random_state=seed), x, t, cv=cv)


def _one(seed: int, n_cells: int, epochs: int) -> list[tuple[str, float, float, float]]:
    from scipy.stats import spearmanr
    from sklearn.cluster import KMeans

    import waddington as wd
    from waddington.models.lsd.transitions import binarize, boltzmann_transitions, fate_entropy, smooth_on_graph

    adata = wd.datasets.toggle_switch(n_cells, random_state=seed)
    wd.pp.lsd_prior(adata, "dpt_pseudotime")
    wd.tl.lsd(adata, n_epochs=epochs, progress_bar=False, random_state=0)
    model = wd.tl.LSDModel.from_adata(adata)
    t = adata.obs["true_time"].to_numpy(float)
    graph = binarize(adata.obsp["connectivities"])
    states = KMeans(n_clusters=6, n_init=4, random_state=0).fit_predict(adata.obsm["X_lsd_cell_state"])

    def boltzmann(score: np.ndarray, beta: float, smoothing: int = 0):
        s = smooth_on_graph(graph, score, smoothing)
        return boltzmann_transitions(graph, (s - s.min()) / (np.ptp(s) + 1e-12), beta)[0]

    v_raw = model.potential(np.asarray(adata.obsm["X_lsd_cell_state"], dtype=np.float32)).astype(np.float64)
    candidates = {
        "lsd_transitions (default: V smoothed 2x, beta 50)": adata.obsp["lsd_transitions"],
        "Boltzmann on V smoothed 6x, beta 300": boltzmann(-v_raw, 300.0, 6),
        "DPT prior (lsd_prior_transitions)": adata.obsp["lsd_prior_transitions"],
        "oracle: Boltzmann on true time, beta 50": boltzmann(t, 50.0),
        "ceiling: true time predicted from PCs (out of fold), beta 50": boltzmann(_supervised_time(adata, t, 0), 50.0),
        "experiment: decoder-velocity kernel, sigma 0.05": _decoder_velocity_kernel(adata, model, graph, 0.05, 2),
    }
    out = []
    for name, p in candidates.items():
        fwd, fwd_last = _forward(p, t)
        ent = spearmanr(fate_entropy(p, states, n_steps=10), t)[0]
        out.append((name, fwd, fwd_last, float(ent)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", default="0,1,2", help="data seeds of toggle_switch (comma-separated)")
    ap.add_argument("--cells", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--record", default=None, help="also write the report to this file")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    results, t0 = {}, time.perf_counter()
    for seed in seeds:
        results[seed] = _one(seed, args.cells, args.epochs)
        print(f"seed {seed} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    lines = [
        "# Forward fraction of one transition step on the toggle switch",
        "",
        f"python {platform.python_version()}, torch threads = {args.threads}; toggle_switch({args.cells}) with data "
        f"seeds {args.seeds}, default `wd.tl.lsd` ({args.epochs} epochs, random_state 0).",
        "Command: python benchmarks/lsd_forward_fraction.py " + " ".join(sys.argv[1:]),
        "",
        "Each cell: forward fraction / forward fraction over the last tenth by true time / Spearman(entropy, true "
        "time).",
        "",
        "| transition matrix | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    for k, (name, *_) in enumerate(results[seeds[0]]):
        cells = [f"{results[s][k][1]:.3f} / {results[s][k][2]:.2f} / {results[s][k][3]:+.2f}" for s in seeds]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    report = "\n".join(lines) + "\n"
    if args.record:
        Path(args.record).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
