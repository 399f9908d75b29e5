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
