"""Shared fixtures: tiny AnnData objects built in memory (no downloads)."""

import anndata as ad
import matplotlib
import numpy as np
import pytest
import scipy.sparse as sp


def pytest_configure(config):
    # Plots render off-screen on CI machines.
    matplotlib.use("Agg")


@pytest.fixture
def tiny_adata() -> ad.AnnData:
    """40 cells × 12 genes with integer counts in layers['raw'], log-normalised X, a kNN graph and a time column."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, size=(40, 12)).astype(np.float32)
    adata = ad.AnnData(X=sp.csr_matrix(np.log1p(counts)))
    adata.layers["raw"] = sp.csr_matrix(counts)
    adata.obs["time"] = np.linspace(0.0, 1.0, 40)
    adata.obsm["X_pca"] = rng.normal(size=(40, 3))
    rows = np.repeat(np.arange(40), 2)
    cols = np.stack([(np.arange(40) + 1) % 40, (np.arange(40) - 1) % 40], axis=1).ravel()
    adata.obsp["connectivities"] = sp.csr_matrix((np.ones(80), (rows, cols)), shape=(40, 40))
    return adata


SMALL = {
    "x_encoder": [64, 32],
    "z_decoder": [32, 64],
    "xl_encoder": [16],
    "z_encoder": [16],
    "B_decoder": [16],
    "potential": [16, 16],
}


def _toggle_lsd(n_cells=400, n_genes=100, n_epochs=10, n_walks=512, layer_dims=SMALL, umap=False, seed=0):
    """Toggle switch -> scanpy preprocessing -> LSD prior -> LSD; terminal clusters named by their true fate."""
    import scanpy as sc
    import torch

    import waddington as wd

    torch.set_num_threads(1)
    adata = wd.datasets.toggle_switch(
        n_cells=n_cells, n_genes=n_genes, n_trajectories=max(200, n_cells // 5), preprocess=False, random_state=seed
    )
    sc.pp.pca(adata, n_comps=15, random_state=seed)
    sc.pp.neighbors(adata, n_neighbors=15, random_state=seed)
    sc.tl.leiden(adata, flavor="igraph", n_iterations=2, key_added="clusters", random_state=seed, resolution=0.6)
    adata.uns["iroot"] = int(np.argmin(adata.obs["true_time"].to_numpy()))
    sc.tl.diffmap(adata, random_state=seed)
    sc.tl.dpt(adata)
    if umap:
        sc.tl.umap(adata, random_state=seed)
    wd.pp.lsd_prior(adata, "dpt_pseudotime")
    wd.tl.lsd(adata, n_epochs=n_epochs, n_walks=n_walks, layer_dims=layer_dims, progress_bar=False, accelerator="cpu")
    obs = adata.obs
    mean_t = obs.groupby("clusters", observed=True)["true_time"].mean()
    major = {c: obs.loc[obs["clusters"] == c, "true_fate"].value_counts().idxmax() for c in mean_t.index}
    terminal = {f: max((c for c in mean_t.index if major[c] == f), key=mean_t.get) for f in ("Ery", "Mye")}
    adata.obs["is_progenitor"] = (obs["true_time"] <= adata.uns["truth"]["progenitor_time"]).astype(str)
    return adata, terminal


@pytest.fixture(scope="session")
def toggle_lsd():
    """Train LSD on a (small by default) toggle switch: ``toggle_lsd(**options) -> (adata, {fate: cluster})``."""
    return _toggle_lsd
