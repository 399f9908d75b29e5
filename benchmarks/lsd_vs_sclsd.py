"""Benchmark waddington's LSD against the reference implementation sclsd 0.3.0, side by side in one run.

Both methods get the same data (``wd.datasets.toggle_switch`` at its default size, a larger simulated toggle
switch with 10,000 cells and a wider one with 2,000 genes), the same prior (Boltzmann β = 50 on ``dpt_pseudotime``), the same number of walks, walk length, batch size
and epochs, and the same torch thread count. Each method runs in its own subprocess (clean peak RSS); data and
outputs are exchanged through h5ad/npz files. Reported per dataset: prior construction and walk sampling time,
seconds per epoch, total training time, time to compute the outputs, peak RSS (both read right after the outputs,
before any downstream step), and the quality scores against the
simulation's ground truth (Spearman of potential/pseudotime/entropy with true time, and the fraction of cells whose
expected true-time change along one step of the learned transitions is positive). waddington is trained a second
time after sclsd (``--no-sandwich`` skips it): its seconds per epoch are the mean of the two runs, which cancels a
linear drift of the machine's speed over the run, and the second run is checked to be bit-identical.

On the default data set it also compares what users do after training (issue "LSD downstream"): fate prediction
(accuracy against ``true_fate`` over all cells and over the first half of true time; calibration of the mean
probability of the Ery fate over uncommitted progenitors), with CellRank 2 (PseudotimeKernel on the same DPT
pseudotime + GPCCA) as a third method, and knockouts of the two master regulators from the uncommitted
progenitors (the fraction of the simulated fate shift that is recovered; waddington also knocks out noise genes
as negative controls). Every method gets the same terminal clusters: per true fate, the latest cluster whose
cells mostly take it; a predicted cluster is scored as the fate most of its cells take.

sclsd 0.3.0 needs numpy<2, so it lives in its own virtual environment. Create it once (pin torch, otherwise pip
resolves a different, much larger torch build)::

    python -m venv /work/sclsd-venv
    /work/sclsd-venv/bin/pip install torch==2.13.0 "numpy<2" sclsd==0.3.0

Run (from the repository root, in the project's environment)::

    python benchmarks/lsd_vs_sclsd.py --threads 2 --epochs 30 --record benchmarks/results/lsd_vs_sclsd.md

``--sclsd-python`` (or the environment variable ``SCLSD_PYTHON``) points at the venv's interpreter;
``--skip-sclsd`` runs only this package. The walk-sampling comparison also times a re-creation of the reference's
*sparse* sampler (sclsd's unversioned sparse revision: a pure-Python loop of ``rng.choice`` per walk and step),
next to sclsd 0.3.0's own dense ``torch.multinomial`` sampler.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _memory import peak_rss_mib

HERE = Path(__file__).resolve().parent
DEFAULT_SCLSD_PYTHON = os.environ.get("SCLSD_PYTHON", "/work/sclsd-venv/bin/python")


def _reference_sparse_walks(p, n_walks: int, length: int, seed: int) -> np.ndarray:
    """The sparse sampler of the reference's sparse revision (lsd.md §2.2): per walk and step ``rng.choice``."""
    rng = np.random.default_rng(seed)
    n = p.shape[0]
    walks = np.empty((n_walks, length), dtype=np.int32)
    walks[:, 0] = rng.integers(0, n, n_walks)
    for w in range(n_walks):
        cur = walks[w, 0]
        for k in range(1, length):
            lo, hi = p.indptr[cur], p.indptr[cur + 1]
            probs = p.data[lo:hi] / p.data[lo:hi].sum()
            cur = rng.choice(p.indices[lo:hi], p=probs)
            walks[w, k] = cur
    return walks


def _waddington_worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    import anndata as ad
    import scipy.sparse as sp

    import waddington as wd
    from waddington.models.lsd.walks import WalkSampler

    t_start = time.perf_counter()
    rss_imports = peak_rss_mib()
    adata = ad.read_h5ad(args.inp)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    wd.pp.lsd_prior(adata, "dpt_pseudotime", beta=50.0)
    timings["prior_s"] = time.perf_counter() - t0
    prior = adata.obsp["lsd_prior_transitions"]
    WalkSampler(prior).sample(4, 2, np.random.default_rng(0))  # load the compiled sampler (numba cache)
    t0 = time.perf_counter()
    WalkSampler(prior).sample(args.walks, args.length, np.random.default_rng(args.seed))
    timings["walks_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _reference_sparse_walks(sp.csr_matrix(prior), args.walks, args.length, args.seed)
    timings["reference_sparse_walks_s"] = time.perf_counter() - t0
    rss_before_training = peak_rss_mib()
    wd.tl.lsd(
        adata,
        n_walks=args.walks,
        walk_length=args.length,
        batch_size=args.batch,
        n_epochs=args.epochs,
        accelerator="cpu",
        progress_bar=False,
        random_state=args.seed,
    )
    timing = adata.uns["lsd"]["timing"]
    # peak memory of prior, walks, training and outputs: read here, before the downstream steps, at the point where
    # the sclsd runner reads its own
    timings["peak_rss_mib"] = peak_rss_mib()
    extra = {}
    if args.terminal:
        terminal = args.terminal.split(",")
        t0 = time.perf_counter()
        wd.tl.lsd_fates(adata, cluster_key="clusters", terminal_states=terminal, progress_bar=False)
        timings["fates_s"] = time.perf_counter() - t0
        probs = adata.obsm["lsd_fate_probabilities"]
        extra["fate"] = adata.obs["lsd_fate"].to_numpy().astype(str)
        extra["fate_prob"] = probs[terminal].to_numpy()
        genes = args.knockouts.split(",")
        t0 = time.perf_counter()
        df = wd.tl.lsd_perturb(
            adata, genes, cluster_key="clusters", terminal_states=terminal, groups=["True"],
            group_key="is_progenitor", progress_bar=False,
        )  # fmt: skip
        timings["perturb_s"] = time.perf_counter() - t0
        frac = df.pivot(index="gene", columns="fate", values=["fraction_perturbed", "fraction_unperturbed"])
        extra["ko_perturbed"] = frac["fraction_perturbed"].loc[genes, terminal].to_numpy()
        extra["ko_control"] = frac["fraction_unperturbed"].loc[genes, terminal].to_numpy()
        extra["ko_significant"] = df.pivot(index="gene", columns="fate", values="significant").loc[genes, terminal]
        extra["ko_significant"] = extra["ko_significant"].to_numpy(dtype=bool)
    timings["train_s"] = float(timing["train_s"])
    timings["epoch_s"] = float(timing["s_per_epoch"])
    timings["outputs_s"] = float(timing["outputs_s"])
    timings["total_s"] = time.perf_counter() - t_start
    timings["rss_before_training_mib"] = rss_before_training
    timings["rss_above_imports_mib"] = timings["peak_rss_mib"] - rss_imports
    trans = sp.csr_matrix(adata.obsp["lsd_transitions"])
    np.savez(
        args.out,
        potential=adata.obs["lsd_potential"].to_numpy(),
        pseudotime=adata.obs["lsd_pseudotime"].to_numpy(),
        entropy=adata.obs["lsd_entropy"].to_numpy(),
        t_data=trans.data,
        t_indices=trans.indices,
        t_indptr=trans.indptr,
        timings=json.dumps(timings),
        **extra,
    )


def _run(cmd: list[str], threads: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"command failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-4000:]}")


def _scores(npz: Path, adata) -> dict[str, float]:
    import scipy.sparse as sp
    from scipy.stats import spearmanr

    d = np.load(npz)
    t = adata.obs["true_time"].to_numpy(dtype=float)
    n = adata.n_obs
    trans = sp.csr_matrix((d["t_data"], d["t_indices"], d["t_indptr"]), shape=(n, n))
    out = json.loads(str(d["timings"]))
    out["spearman_potential"] = float(spearmanr(d["potential"], -t)[0])
    out["spearman_pseudotime"] = float(spearmanr(d["pseudotime"], t)[0])
    out["spearman_entropy"] = float(spearmanr(d["entropy"], t)[0])
    out["frac_forward"] = float(((trans @ t - t) > 0).mean())
    return out


def _prior_scores(adata) -> dict[str, float]:
    from scipy.stats import spearmanr

    import waddington as wd

    t = adata.obs["true_time"].to_numpy(dtype=float)
    a = wd.pp.lsd_prior(adata, "dpt_pseudotime", copy=True)
    p = a.obsp["lsd_prior_transitions"]
    return {
        "spearman_pseudotime": float(spearmanr(adata.obs["dpt_pseudotime"], t)[0]),
        "frac_forward": float(((p @ t - t) > 0).mean()),
    }


def _terminal_clusters(adata) -> dict[str, str]:
    """Per true fate, the latest cluster (by mean true time) whose cells mostly take that fate (scoring only)."""
    obs = adata.obs
    mean_t = obs.groupby("clusters", observed=True)["true_time"].mean()
    major = _cluster_fates(adata)
    return {f: max((c for c in mean_t.index if major[c] == f), key=mean_t.get) for f in ("Ery", "Mye")}


def _cluster_fates(adata) -> dict[str, str]:
    """The fate most cells of each cluster truly take: how a predicted cluster is scored against ``true_fate``."""
    obs = adata.obs
    return {
        str(c): obs.loc[obs["clusters"] == c, "true_fate"].astype(str).value_counts().idxmax()
        for c in obs["clusters"].cat.categories
    }


def _fate_scores(adata, fate_clusters, p_ery=None) -> dict[str, float]:
    """Accuracy of predicted fate clusters against ``true_fate`` (all cells, first half of true time), calibration."""
    major = _cluster_fates(adata)
    pred = np.array([major.get(str(c), "none") for c in fate_clusters])
    truth = adata.obs["true_fate"].astype(str).to_numpy()
    t = adata.obs["true_time"].to_numpy(dtype=float)
    ok = pred == truth
    out = {"fate_acc": float(ok.mean()), "fate_acc_early": float(ok[t <= t.max() / 2].mean())}
    if p_ery is not None:
        prog = adata.obs["is_progenitor"].to_numpy() == "True"
        true_ery = adata.uns["truth"]["fate_fractions"]["wild_type"]["Ery"]
        out["p_ery_error"] = float(abs(np.mean(p_ery[prog]) - true_ery))
    return out


def _knockout_scores(adata, d, genes: list[str], terminal: dict[str, str], prefix: str = "") -> dict[str, float]:
    """Recovered fraction of the true knockout shift of each master regulator, and significance."""
    ff = adata.uns["truth"]["fate_fractions"]
    order = list(terminal)  # fates in the column order of the arrays
    out = {}
    for gene, fate in (("Gata1", "Mye"), ("Spi1", "Ery")):
        i, j = genes.index(gene), order.index(fate)
        true = ff[f"{gene}_knockout"][fate] - ff["wild_type"][fate]
        out[f"ko_{gene}_recovered"] = float((d["ko_perturbed"][i, j] - d["ko_control"][i, j]) / true)
        if "ko_significant" in d:
            out[f"ko_{gene}_significant"] = float(d["ko_significant"][i, j])
    if "ko_significant" in d:
        noise = [k for k, g in enumerate(genes) if g not in ("Gata1", "Spi1")]
        out["ko_noise_significant"] = float(d["ko_significant"][noise].any(axis=1).mean()) if noise else 0.0
    return out


def _cellrank_fates(adata, terminal: dict[str, str]) -> tuple[dict[str, float], float]:
    """CellRank 2 baseline: PseudotimeKernel on the DPT pseudotime, GPCCA with the same terminal clusters."""
    import cellrank as cr

    t0 = time.perf_counter()
    k = cr.kernels.PseudotimeKernel(adata, time_key="dpt_pseudotime").compute_transition_matrix()
    g = cr.estimators.GPCCA(k)
    g.set_terminal_states({c: adata.obs_names[adata.obs["clusters"] == c].tolist() for c in terminal.values()})
    g.compute_fate_probabilities()
    elapsed = time.perf_counter() - t0
    probs = np.asarray(g.fate_probabilities)
    names = list(g.fate_probabilities.names)
    pred = np.asarray(names)[probs.argmax(1)]
    return _fate_scores(adata, pred, probs[:, names.index(terminal["Ery"])]), elapsed


ROWS = [
    ("prior_s", "prior construction (s)", "{:.4f}", "lower"),
    ("walks_s", "walk sampling (s)", "{:.4f}", "lower"),
    ("epoch_s", "seconds per epoch", "{:.2f}", "lower"),
    ("train_s", "total training (s)", "{:.1f}", "lower"),
    ("outputs_s", "compute outputs (s)", "{:.2f}", "lower"),
    ("peak_rss_mib", "peak RSS (MiB)", "{:.0f}", "lower"),
    ("rss_above_imports_mib", "peak RSS above the imports (MiB)", "{:.0f}", "lower"),
    ("spearman_potential", "Spearman(potential, -true time)", "{:.3f}", "higher"),
    ("spearman_pseudotime", "Spearman(pseudotime, true time)", "{:.3f}", "higher"),
    ("frac_forward", "cells moving forward (1 step)", "{:.3f}", "higher"),
    ("spearman_entropy", "Spearman(entropy, true time)", "{:+.3f}", "lower"),
    ("fates_s", "fate prediction (s)", "{:.1f}", "lower"),
    ("fate_acc", "fate accuracy, all cells", "{:.3f}", "higher"),
    ("fate_acc_early", "fate accuracy, first half of true time", "{:.3f}", "higher"),
    ("p_ery_error", "|mean P(Ery) - true fraction| (progenitors)", "{:.3f}", "lower"),
    ("perturb_s", "knockout screen (s)", "{:.1f}", "lower"),
    ("ko_Gata1_recovered", "Gata1 KO: recovered fraction of the true Mye shift", "{:.2f}", "higher"),
    ("ko_Gata1_significant", "Gata1 KO significant", "{:.0f}", "higher"),
    ("ko_Spi1_recovered", "Spi1 KO: recovered fraction of the true Ery shift", "{:.2f}", "higher"),
    ("ko_Spi1_significant", "Spi1 KO significant", "{:.0f}", "higher"),
    ("ko_noise_significant", "noise-gene KOs significant (fraction)", "{:.2f}", "lower"),
]


def _table(name: str, ours: dict, ref: dict | None, prior: dict | None) -> str:
    lines = [
        f"## {name}",
        "",
        "| metric | waddington | sclsd 0.3.0 | ratio (sclsd / waddington) | DPT prior / CellRank 2 |",
        "|---|---|---|---|---|",
    ]
    for key, label, fmt, _ in ROWS:
        if key not in ours:
            continue
        a = fmt.format(ours[key])
        b = fmt.format(ref[key]) if ref and key in ref else "—"
        ratio = "—"
        if ref and key in ref and key.endswith(("_s", "_mib")) and ours[key] > 0:
            ratio = f"{ref[key] / ours[key]:.1f}×"
        p = fmt.format(prior[key]) if prior and key in prior else ""
        lines.append(f"| {label} | {a} | {b} | {ratio} | {p} |")
    if "epoch_runs" in ours:
        before, after = ours["epoch_runs"]
        lines.append(
            f"| seconds per epoch, waddington before / after sclsd (averaged above) | {before:.2f} / {after:.2f} "
            f"| {ref['epoch_s']:.2f} | {ref['epoch_s'] / before:.1f}× / {ref['epoch_s'] / after:.1f}× | |"
        )
        same = "yes" if ours["rerun_identical"] else "NO"
        lines.append(f"| second waddington run bit-identical (same seed) | {same} | — | — | |")
    if "reference_sparse_walks_s" in ours:
        lines.append(
            f"| walk sampling, reference sparse sampler re-created (s) | {ours['walks_s']:.4f} | "
            f"{ours['reference_sparse_walks_s']:.3f} | {ours['reference_sparse_walks_s'] / ours['walks_s']:.0f}× | |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads for both methods (default 2)")
    ap.add_argument("--epochs", type=int, default=30, help="training epochs on the default toggle switch")
    ap.add_argument("--walks", type=int, default=4096)
    ap.add_argument("--length", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--large-cells", type=int, default=10000, help="cells of the larger simulated graph")
    ap.add_argument("--large-epochs", type=int, default=2, help="epochs on the larger graph (timing only)")
    ap.add_argument(
        "--wide-genes", type=int, default=2000, help="genes of a wider 2,000-cell data set (large epochs; 0: skip)"
    )
    ap.add_argument("--sclsd-python", default=DEFAULT_SCLSD_PYTHON)
    ap.add_argument("--skip-sclsd", action="store_true")
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument(
        "--no-sandwich", action="store_true", help="train waddington once (default: again after sclsd, averaged)"
    )
    ap.add_argument("--skip-downstream", action="store_true", help="no fates, knockouts or CellRank baseline")
    ap.add_argument("--noise-genes", type=int, default=20, help="noise genes knocked out by waddington (controls)")
    ap.add_argument("--record", default=None, help="also write the report to this file")
    ap.add_argument("--terminal", default="", help=argparse.SUPPRESS)
    ap.add_argument("--knockouts", default="Gata1,Spi1", help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("inp", nargs="?", help=argparse.SUPPRESS)
    ap.add_argument("out", nargs="?", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _waddington_worker(args)
        return

    import waddington as wd

    if not args.skip_sclsd and not Path(args.sclsd_python).exists():
        sys.exit(
            f"sclsd interpreter {args.sclsd_python!r} not found; create the venv (see the docstring) or --skip-sclsd"
        )
    work = Path(tempfile.mkdtemp(prefix="lsd_bench_"))
    datasets = [("toggle_switch (default: 2000 cells x 500 genes)", {}, args.epochs)]
    if not args.skip_large:
        datasets.append(
            (f"toggle_switch ({args.large_cells} cells x 500 genes)", {"n_cells": args.large_cells}, args.large_epochs)
        )
    if args.wide_genes:
        datasets.append(
            (f"toggle_switch (2000 cells x {args.wide_genes} genes)", {"n_genes": args.wide_genes}, args.large_epochs)
        )
    header = [
        "# LSD: waddington vs sclsd 0.3.0",
        "",
        f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs visible, torch threads = {args.threads}; "
        f"walks {args.walks} x length {args.length}, batch {args.batch}, seed {args.seed}.",
        "Command: python benchmarks/lsd_vs_sclsd.py " + " ".join(sys.argv[1:]),
        "",
    ]
    sections = []
    genes = ["Gata1", "Spi1"]
    for name, kwargs, epochs in datasets:
        adata = wd.datasets.toggle_switch(random_state=args.seed, **kwargs)
        is_default = not kwargs
        prog = adata.obs["true_time"] <= adata.uns["truth"]["progenitor_time"]
        adata.obs["is_progenitor"] = prog.astype(str)
        terminal = _terminal_clusters(adata)
        path = work / f"data_{adata.n_obs}x{adata.n_vars}.h5ad"
        adata.write_h5ad(path)
        common = ["--walks", str(args.walks), "--length", str(args.length), "--batch", str(args.batch)]
        common += ["--epochs", str(epochs), "--threads", str(args.threads), "--seed", str(args.seed)]
        downstream = []
        if is_default and not args.skip_downstream:
            noise = [str(g) for g in adata.uns["truth"]["noise_genes"][: args.noise_genes]]
            genes = ["Gata1", "Spi1", *noise]
            downstream = ["--terminal", ",".join(terminal.values())]
        ours_npz = work / f"ours_{adata.n_obs}x{adata.n_vars}.npz"
        _run(
            [
                sys.executable, str(Path(__file__).resolve()), "--worker", str(path), str(ours_npz), *common,
                *downstream, *(["--knockouts", ",".join(genes)] if downstream else []),
            ],
            args.threads,
        )  # fmt: skip
        ours = _scores(ours_npz, adata)
        d = np.load(ours_npz)
        if downstream:
            ours.update(_fate_scores(adata, d["fate"], d["fate_prob"][:, 0]))
            ours.update(_knockout_scores(adata, d, genes, terminal))
        ref = None
        if not args.skip_sclsd:
            ref_npz = work / f"sclsd_{adata.n_obs}x{adata.n_vars}.npz"
            cmd = [
                args.sclsd_python,
                str(HERE / "_sclsd_runner.py"),
                str(path),
                str(ref_npz),
                "--time-key",
                "dpt_pseudotime",
            ]
            ref_downstream = [*downstream, *(["--knockouts", "Gata1,Spi1"] if downstream else [])]
            _run([*cmd, *common, *ref_downstream], args.threads)
            ref = _scores(ref_npz, adata)
            d = np.load(ref_npz, allow_pickle=False)
            if downstream:
                ref.update(_fate_scores(adata, d["fate"]))
                ref.update(_knockout_scores(adata, d, ["Gata1", "Spi1"], terminal))
            if not args.no_sandwich:
                # train waddington again after sclsd (timing only) and average: the machine's speed drifts over
                # the minutes a run takes, and a before/after pair cancels a linear drift
                again_npz = work / f"ours_again_{adata.n_obs}x{adata.n_vars}.npz"
                _run([sys.executable, str(Path(__file__).resolve()), "--worker", str(path), str(again_npz), *common],
                     args.threads)  # fmt: skip
                again = np.load(again_npz)
                again_timings = json.loads(str(again["timings"]))
                first = {k: ours[k] for k in ("epoch_s", "train_s")}
                for key in first:
                    ours[key] = 0.5 * (first[key] + float(again_timings[key]))
                ours["epoch_runs"] = (first["epoch_s"], float(again_timings["epoch_s"]))
                ours["rerun_identical"] = bool(np.array_equal(np.load(ours_npz)["potential"], again["potential"]))
        prior = _prior_scores(adata)
        if downstream:
            cr_scores, cr_s = _cellrank_fates(adata, terminal)
            prior.update(cr_scores)
            prior["fates_s"] = cr_s
        sections.append(_table(f"{name}, {epochs} epochs", ours, ref, prior))
        print(sections[-1] + "\n", flush=True)
    report = "\n".join(header) + "\n" + "\n\n".join(sections) + "\n"
    if args.record:
        Path(args.record).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
