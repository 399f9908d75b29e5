"""Run sclsd 0.3.0 (the reference LSD) on an h5ad file and report stage timings; used by lsd_vs_sclsd.py.

Runs inside the sclsd virtual environment (see lsd_vs_sclsd.py for how to create it); never imports waddington.
Usage: python _sclsd_runner.py IN.h5ad OUT.npz --time-key dpt_pseudotime --walks 4096 --length 10 --batch 256
--epochs 60 --threads 2 --seed 0
"""

import argparse
import json
import sys
import time

import numpy as np
from _memory import peak_rss_mib


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("inp")
    ap.add_argument("out")
    ap.add_argument("--time-key", default="dpt_pseudotime")
    ap.add_argument("--walks", type=int, default=4096)
    ap.add_argument("--length", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--terminal", default="", help="comma-separated fate clusters: also run fates and knockouts")
    ap.add_argument("--knockouts", default="Gata1,Spi1")
    ap.add_argument("--time-range", type=float, default=10.0)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import anndata as ad
    import scipy.sparse as sp
    from sclsd import LSD, LSDConfig

    t_start = time.perf_counter()
    rss_imports = peak_rss_mib()
    adata = ad.read_h5ad(args.inp)
    cfg = LSDConfig()
    cfg.walks.num_walks = args.walks
    cfg.walks.path_len = args.length
    cfg.walks.batch_size = args.batch
    cfg.walks.random_state = args.seed
    lsd = LSD(adata, cfg, device=torch.device("cpu"))
    timings = {}
    t0 = time.perf_counter()
    lsd.set_prior_transition(prior_time_key=args.time_key)
    timings["prior_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    lsd.prepare_walks()
    timings["walks_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    lsd.train(num_epochs=args.epochs, plot_loss=False, random_state=args.seed)
    timings["train_s"] = time.perf_counter() - t0
    timings["epoch_s"] = timings["train_s"] / args.epochs
    t0 = time.perf_counter()
    res = lsd.get_adata()
    timings["outputs_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    timings["peak_rss_mib"] = peak_rss_mib()
    timings["rss_above_imports_mib"] = timings["peak_rss_mib"] - rss_imports
    trans = sp.csr_matrix(res.obsp["transitions"])
    extra = {}
    if args.terminal:
        # fates: the reference's get_cell_fates (flow, snap to the nearest cell of any cluster)
        t0 = time.perf_counter()
        fated = lsd.get_cell_fates(res, time_range=args.time_range, cluster_key="clusters")
        timings["fates_s"] = time.perf_counter() - t0
        extra["fate"] = fated.obs["fate"].to_numpy().astype(str)
        # knockouts from the uncommitted progenitors, the reference's perturb with its defaults
        terminal = args.terminal.split(",")
        genes = args.knockouts.split(",")
        prog = res.obs["is_progenitor"].astype(str).to_numpy() == "True"
        x = torch.from_numpy(res.X[prog].toarray()).float()
        pert, ctrl = np.zeros((len(genes), len(terminal))), np.zeros((len(genes), len(terminal)))
        t0 = time.perf_counter()
        for i, gene in enumerate(genes):
            p_lab, c_lab = lsd.perturb(res, x, gene, "clusters")
            p_lab, c_lab = np.asarray(p_lab).astype(str), np.asarray(c_lab).astype(str)
            for j, fate in enumerate(terminal):
                pert[i, j], ctrl[i, j] = np.mean(p_lab == fate), np.mean(c_lab == fate)
        timings["perturb_s"] = time.perf_counter() - t0
        extra["ko_perturbed"], extra["ko_control"] = pert, ctrl
    np.savez(
        args.out,
        potential=res.obs["potential"].to_numpy(),
        pseudotime=res.obs["lsd_pseudotime"].to_numpy(),
        entropy=res.obs["entropy"].to_numpy(),
        t_data=trans.data,
        t_indices=trans.indices,
        t_indptr=trans.indptr,
        walks=lsd.walks.numpy(),
        obs_names=np.asarray(res.obs_names, dtype=str),
        timings=json.dumps(timings),
        **extra,
    )
    print(json.dumps(timings), file=sys.stderr)


if __name__ == "__main__":
    main()
