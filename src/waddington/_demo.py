"""``waddington demo``: simulate the toggle switch, fit the models, and write data, figures and a scored report.

The demo is a list of sections; each section is a function ``(adata, out_dir, state) -> str`` that may add to the
AnnData, write figures into ``out_dir`` and returns a markdown fragment for ``report.md``. ``state`` is a dict
shared between sections (options, scores). Add a section by writing such a function and listing it in
:data:`SECTIONS`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anndata import AnnData

from ._utils import logger

__all__ = ["SECTIONS", "fate_scores", "lsd_scores", "pseudodynamics_scores", "run_demo"]


def lsd_scores(adata: AnnData, *, key: str = "lsd", time_key: str = "true_time") -> dict[str, float]:
    """Score an LSD fit against the ground-truth time of a simulation.

    Spearman correlations of potential, pseudotime and entropy with the true time, and the fraction of cells whose
    expected true-time change along one step of the learned transitions is positive.
    """
    from scipy.stats import spearmanr

    t = adata.obs[time_key].to_numpy(dtype=float)
    out: dict[str, float] = {}
    if f"{key}_potential" in adata.obs:
        out["spearman_potential_vs_-time"] = float(spearmanr(adata.obs[f"{key}_potential"], -t)[0])
    if f"{key}_pseudotime" in adata.obs:
        out["spearman_pseudotime_vs_time"] = float(spearmanr(adata.obs[f"{key}_pseudotime"], t)[0])
    if f"{key}_entropy" in adata.obs:
        out["spearman_entropy_vs_time"] = float(spearmanr(adata.obs[f"{key}_entropy"], t)[0])
    if f"{key}_transitions" in adata.obsp:
        p = adata.obsp[f"{key}_transitions"]
        out["frac_forward_transitions"] = float(((p @ t - t) > 0).mean())
    return out


def _prior_scores(adata: AnnData, prior_time_key: str, time_key: str = "true_time") -> dict[str, float]:
    from scipy.stats import spearmanr

    t = adata.obs[time_key].to_numpy(dtype=float)
    out = {"spearman_prior_time_vs_time": float(spearmanr(adata.obs[prior_time_key], t)[0])}
    if "lsd_prior_transitions" in adata.obsp:
        p = adata.obsp["lsd_prior_transitions"]
        out["frac_forward_transitions"] = float(((p @ t - t) > 0).mean())
    return out


def _section_lsd(adata: AnnData, out: Path, state: dict[str, Any]) -> str:
    """Prior → LSD; figures of the potential, entropy and training history; scores against the truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import pp, tl

    t0 = time.perf_counter()
    pp.lsd_prior(adata, "dpt_pseudotime")
    tl.lsd(
        adata,
        n_epochs=state["n_epochs"],
        random_state=state["random_state"],
        progress_bar=state["progress_bar"],
    )
    elapsed = time.perf_counter() - t0
    scores = lsd_scores(adata)
    prior = _prior_scores(adata, "dpt_pseudotime")
    state["scores"]["lsd"] = scores
    state["scores"]["dpt_prior"] = prior

    emb = adata.obsm["X_umap"]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    for ax, (col, title, cmap) in zip(
        axes,
        [
            ("true_time", "true time", "viridis"),
            ("lsd_potential", "LSD potential", "magma"),
            ("lsd_pseudotime", "LSD pseudotime", "viridis"),
            ("lsd_entropy", "LSD fate entropy (plasticity)", "coolwarm"),
        ],
        strict=True,
    ):
        sc = ax.scatter(emb[:, 0], emb[:, 1], c=adata.obs[col], s=4, cmap=cmap, rasterized=True)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(sc, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(out / "lsd_umap.png", dpi=110)
    plt.close(fig)

    hist = adata.uns["lsd"]["history"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].plot(hist["epoch"], hist["loss"])
    axes[0].set(xlabel="epoch", ylabel="loss (−ELBO + penalties)", title="training loss")
    axes[1].plot(hist["epoch"], hist["potential_metric"])
    axes[1].set(xlabel="epoch", ylabel="mean uphill step of V", title="potential monotonicity along walks")
    fig.tight_layout()
    fig.savefig(out / "lsd_history.png", dpi=110)
    plt.close(fig)

    rows = [
        ("Spearman(potential, −true time)", scores["spearman_potential_vs_-time"], "—"),
        (
            "Spearman(pseudotime, true time)",
            scores["spearman_pseudotime_vs_time"],
            f"{prior['spearman_prior_time_vs_time']:.3f}",
        ),
        (
            "cells moving forward in true time (one step)",
            scores["frac_forward_transitions"],
            f"{prior['frac_forward_transitions']:.3f}",
        ),
        ("Spearman(entropy, true time) (want < 0)", scores["spearman_entropy_vs_time"], "—"),
    ]
    table = "\n".join(f"| {name} | {val:.3f} | {ref} |" for name, val, ref in rows)
    return (
        "## Landscape (LSD)\n\n"
        f"`wd.pp.lsd_prior(adata, 'dpt_pseudotime')` then `wd.tl.lsd(adata, n_epochs={state['n_epochs']})` "
        f"({elapsed:.0f} s).\n\n"
        "| score | LSD | DPT prior |\n|---|---|---|\n"
        f"{table}\n\n"
        "![potential on UMAP](lsd_umap.png)\n\n![training history](lsd_history.png)\n"
    )


def fate_scores(adata: AnnData, *, cluster_key: str = "clusters") -> dict[str, float]:
    """Score ``wd.tl.lsd_fates`` against a simulation's ``true_fate``.

    A predicted fate cluster counts as the fate most of its cells truly take. Returns the accuracy over all cells
    and over the first half of true time, and the mean probability of the fate "Ery" over uncommitted
    progenitors next to the simulated wild-type fraction.
    """
    obs = adata.obs
    major = {
        str(c): obs.loc[obs[cluster_key] == c, "true_fate"].astype(str).value_counts().idxmax()
        for c in obs[cluster_key].cat.categories
    }
    pred = obs["lsd_fate"].astype(str).map(major).to_numpy()
    ok = pred == obs["true_fate"].astype(str).to_numpy()
    t = obs["true_time"].to_numpy(dtype=float)
    truth = adata.uns["truth"]
    prog = t <= float(truth["progenitor_time"])
    probs = adata.obsm["lsd_fate_probabilities"]
    ery = [c for c in probs.columns if major.get(str(c)) == "Ery"]
    return {
        "accuracy_all": float(ok.mean()),
        "accuracy_first_half": float(ok[t <= t.max() / 2].mean()),
        "mean_p_ery_progenitors": float(probs[ery].sum(axis=1)[prog].mean()) if ery else float("nan"),
        "true_p_ery_progenitors": float(truth["fate_fractions"]["wild_type"]["Ery"]),
    }


def _section_downstream(adata: AnnData, out: Path, state: dict[str, Any]) -> str:
    """Fates, knockouts of both master regulators; streamline, landscape, fate and perturbation figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import pl, tl

    t0 = time.perf_counter()
    tl.lsd_fates(adata, cluster_key="clusters", random_state=state["random_state"], progress_bar=state["progress_bar"])
    fates = [str(f) for f in adata.uns["lsd_fates"]["fates"]]
    adata.obs["demo_progenitor"] = (adata.obs["true_time"] <= float(adata.uns["truth"]["progenitor_time"])).map(
        {True: "progenitor", False: "later"}
    )
    noise = [str(g) for g in adata.uns["truth"]["noise_genes"][:2]]
    table = tl.lsd_perturb(
        adata,
        ["Gata1", "Spi1", *noise],
        cluster_key="clusters",
        groups=["progenitor"],
        group_key="demo_progenitor",
        random_state=state["random_state"],
        progress_bar=state["progress_bar"],
    )
    elapsed = time.perf_counter() - t0
    scores = fate_scores(adata)
    state["scores"]["fates"] = scores

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    pl.streamlines(adata, basis="umap", key="lsd", color="lsd_pseudotime", ax=ax, show=False)
    fig.tight_layout()
    fig.savefig(out / "lsd_streamlines.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    pl.potential(adata, color="clusters", ax=ax, show=False)
    fig.tight_layout()
    fig.savefig(out / "lsd_landscape.png", dpi=110)
    plt.close(fig)
    fig = pl.fates(adata, cluster_key="clusters", show=False, return_fig=True)
    fig.savefig(out / "lsd_fates.png", dpi=110)
    plt.close(fig)
    fig = pl.perturbation(adata, show=False, return_fig=True)
    fig.savefig(out / "lsd_perturbation.png", dpi=110)
    plt.close(fig)

    ko = table[table["gene"].isin(["Gata1", "Spi1", *noise])]
    ko_rows = "\n".join(
        f"| {r.gene} | {r.fate} | {r.fraction_unperturbed:.3f} | {r.fraction_perturbed:.3f} | {r.pval_adj:.2g} "
        f"| {'yes' if r.significant else 'no'} |"
        for r in ko.itertuples()
    )
    return (
        "## Fates and knockouts\n\n"
        f"`wd.tl.lsd_fates(adata, cluster_key='clusters')` found the fate clusters {fates}; knockouts of Gata1, "
        f"Spi1 and two noise genes from the uncommitted progenitors with `wd.tl.lsd_perturb` ({elapsed:.0f} s).\n\n"
        "| score | value |\n|---|---|\n"
        f"| fate accuracy, all cells | {scores['accuracy_all']:.3f} |\n"
        f"| fate accuracy, first half of true time | {scores['accuracy_first_half']:.3f} |\n"
        f"| mean P(Ery) over progenitors (truth {scores['true_p_ery_progenitors']:.3f}) | "
        f"{scores['mean_p_ery_progenitors']:.3f} |\n\n"
        "| gene | fate cluster | fraction, control | fraction, knockout | adjusted p | significant |\n"
        "|---|---|---|---|---|---|\n"
        f"{ko_rows}\n\n"
        "![streamlines](lsd_streamlines.png)\n\n![landscape](lsd_landscape.png)\n\n"
        "![fates](lsd_fates.png)\n\n![knockouts](lsd_perturbation.png)\n"
    )


def pseudodynamics_scores(adata: AnnData) -> dict[str, float]:
    """Recovery of growth, drift, diffusion and population size by ``wd.tl.pseudodynamics`` against the truth."""
    import numpy as np

    g, tg = adata.obs["pd_growth"].to_numpy(), adata.obs["true_g"].to_numpy()
    v, tv = np.asarray(adata.obsm["pd_velocity"]), np.asarray(adata.obsm["true_v"])
    cos = (v * tv).sum(1) / (np.linalg.norm(v, axis=1) * np.linalg.norm(tv, axis=1) + 1e-12)
    pop = adata.uns["pseudodynamics"]["population"]
    n_true = np.asarray(adata.uns["truth"]["N"], dtype=float)
    return {
        "pearson_g": float(np.corrcoef(g, tg)[0, 1]),
        "cosine_v": float(cos.mean()),
        "median_ratio_D": float(np.median(adata.obs["pd_diffusion"] / adata.obs["true_D"])),
        "max_rel_error_N_fitted": float(np.max(np.abs(pop["fitted"] / n_true - 1))),
        "max_rel_error_N_implied": float(np.max(np.abs(pop["implied"] / n_true - 1))),
    }


def _section_pseudodynamics(adata: AnnData, out: Path, state: dict[str, Any]) -> str:
    """pseudodynamics+ on the 2-D branching population: fields, population fit, scores against the truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import datasets, pl, tl

    pdata = datasets.population_branching(random_state=state["random_state"])
    # the demo's epoch budget scales the training (the full defaults need ~100 epochs, a few minutes)
    epochs = int(state.get("pd_epochs", min(100, 2 * state["n_epochs"])))
    t0 = time.perf_counter()
    tl.pseudodynamics(
        pdata,
        time_key="day",
        state_key="X_state",
        max_epochs=epochs,
        pretrain_steps=min(2000, 50 * epochs),
        random_state=state["random_state"],
        progress_bar=state["progress_bar"],
    )
    elapsed = time.perf_counter() - t0
    scores = pseudodynamics_scores(pdata)
    state["scores"]["pseudodynamics"] = scores
    fig = pl.pseudodynamics(pdata, fields=["growth", "speed"], times=[0, 2, 5], show=False, return_fig=True)
    fig.savefig(out / "pd_fields.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    pl.population_fit(pdata, ax=ax, truth=pdata.uns["truth"]["N"], show=False)
    fig.tight_layout()
    fig.savefig(out / "pd_population.png", dpi=110)
    plt.close(fig)
    pdata.write_h5ad(out / "pseudodynamics_branching.h5ad")
    rows = "\n".join(f"| {name} | {value:.3f} |" for name, value in scores.items())
    return (
        "## Population dynamics (pseudodynamics+)\n\n"
        f"`wd.datasets.population_branching()` ({pdata.n_obs} cells, 6 days) then "
        f"`wd.tl.pseudodynamics(adata, time_key='day', state_key='X_state')` ({elapsed:.0f} s). "
        "Data: `pseudodynamics_branching.h5ad`.\n\n"
        "| score | value |\n|---|---|\n"
        f"{rows}\n\n"
        "![growth and speed](pd_fields.png)\n\n![population fit](pd_population.png)\n"
    )


SECTIONS: list[Callable[[AnnData, Path, dict[str, Any]], str]] = [
    _section_lsd,
    _section_downstream,
    _section_pseudodynamics,
]


def run_demo(
    out: str | Path = "waddington_demo",
    *,
    n_cells: int = 2000,
    n_epochs: int = 30,
    random_state: int = 0,
    progress_bar: bool = True,
) -> dict[str, Any]:
    """Run the demo: simulate the toggle switch, run every section, write ``demo.h5ad``, figures and ``report.md``.

    Parameters
    ----------
    out
        Output directory (created if needed).
    n_cells
        Cells of the simulated toggle switch.
    n_epochs
        LSD training epochs.
    random_state
        Seed of the simulation and the models.
    progress_bar
        Show training progress bars.

    Returns
    -------
    The scores of every section, as a dict.

    Examples
    --------
    >>> from waddington._demo import run_demo
    >>> scores = run_demo("waddington_demo", n_epochs=10)  # doctest: +SKIP
    """
    from . import datasets

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    adata = datasets.toggle_switch(n_cells=n_cells, random_state=random_state)
    state: dict[str, Any] = {
        "n_epochs": int(n_epochs),
        "random_state": int(random_state),
        "progress_bar": bool(progress_bar),
        "scores": {},
    }
    parts = [
        "# waddington demo\n\n"
        f"Simulated toggle switch (Gata1/Spi1): {adata.n_obs} cells × {adata.n_vars} genes, seed {random_state}. "
        "Scores are against the simulation's ground truth (`obs['true_time']`).\n"
    ]
    for section in SECTIONS:
        parts.append(section(adata, out, state))
    adata.write_h5ad(out / "demo.h5ad")
    parts.append(f"\nTotal time: {time.perf_counter() - t0:.0f} s. Data: `demo.h5ad`.\n")
    (out / "report.md").write_text("\n".join(parts))
    logger.info("wrote the demo to %s (report.md, demo.h5ad, figures)", out)
    return state["scores"]
