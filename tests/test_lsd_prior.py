import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import waddington as wd
from waddington.models.lsd.transitions import boltzmann_transitions


def _chain(n=6, time=None):
    """A path graph 0-1-...-(n-1) with pseudotime increasing along it."""
    rows = np.r_[np.arange(n - 1), np.arange(1, n)]
    cols = np.r_[np.arange(1, n), np.arange(n - 1)]
    conn = sp.csr_matrix((np.full(rows.size, 0.5), (rows, cols)), shape=(n, n))
    adata = ad.AnnData(np.zeros((n, 3), dtype=np.float32))
    adata.obs_names = [f"c{i}" for i in range(n)]
    adata.obs["t"] = np.linspace(0, 1, n) if time is None else time
    adata.obs["clusters"] = pd.Categorical(["a", "a", "b", "b", "c", "c"][:n])
    adata.obsp["connectivities"] = conn
    return adata


def test_prior_matches_dense_boltzmann_formula():
    rng = np.random.default_rng(0)
    n = 40
    a = sp.random(n, n, density=0.2, random_state=1, format="csr")
    a = a + a.T
    adata = ad.AnnData(np.zeros((n, 2), dtype=np.float32))
    adata.obsp["connectivities"] = sp.csr_matrix(a)
    t = rng.random(n)
    adata.obs["t"] = t
    wd.pp.lsd_prior(adata, "t", beta=7.0)
    p = adata.obsp["lsd_prior_transitions"]
    assert sp.isspmatrix_csr(p) or isinstance(p, sp.csr_array)
    dense_a = (a.toarray() > 0).astype(float)
    w = dense_a * np.exp(7.0 * (t[None, :] - t[:, None]))
    has = w.sum(1) > 0
    expected = np.where(has[:, None], w / np.where(has, w.sum(1), 1)[:, None], np.eye(n))
    np.testing.assert_allclose(p.toarray(), expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(p.sum(1)).ravel(), 1.0, rtol=1e-12)
    assert adata.uns["lsd_prior"]["params"]["beta"] == 7.0


def test_prior_huge_beta_does_not_overflow():
    adata = _chain()
    wd.pp.lsd_prior(adata, "t", beta=1e6)
    p = adata.obsp["lsd_prior_transitions"].toarray()
    assert np.isfinite(p).all()
    # every interior cell moves forward with probability 1
    np.testing.assert_allclose(p[np.arange(5), np.arange(1, 6)], 1.0)


def test_prior_keeps_cells_without_successors(caplog):
    adata = _chain()
    conn = adata.obsp["connectivities"].tolil()
    conn[5, 4] = 0
    conn[4, 5] = 0
    adata.obsp["connectivities"] = conn.tocsr()
    with caplog.at_level(logging.WARNING, logger="waddington"):
        wd.pp.lsd_prior(adata, "t")
    assert "1 cell(s) have no outgoing transition" in caplog.text
    p = adata.obsp["lsd_prior_transitions"]
    assert p.shape == (6, 6)
    assert p[5, 5] == 1.0
    assert adata.uns["lsd_prior"]["n_absorbing"] == 1


def test_phylogeny_mask_allows_only_same_or_child_cluster():
    adata = _chain()
    # a -> b allowed, b -> c not listed: cells of b cannot enter c
    wd.pp.lsd_prior(adata, "t", phylogeny={"a": ["b"]}, cluster_key="clusters")
    p = adata.obsp["lsd_prior_transitions"].toarray()
    assert p[3, 4] == 0.0  # b -> c cut
    assert p[1, 2] > 0.5  # a -> b kept and favoured
    assert p[2, 1] == 0.0  # b -> a cut: a is not a child of b
    np.testing.assert_allclose(p.sum(1), 1.0)


def test_phylogeny_descendants_option():
    adata = _chain(6)
    adata.obs["clusters"] = pd.Categorical(["a", "b", "c", "c", "c", "c"])
    direct = wd.pp.lsd_prior(adata, "t", phylogeny={"a": ["b"], "b": ["c"]}, cluster_key="clusters", copy=True)
    assert direct.obsp["lsd_prior_transitions"][0, 1] == 1.0
    full = wd.pp.lsd_prior(
        adata, "t", phylogeny={"a": ["b"], "b": ["c"]}, cluster_key="clusters", descendants=True, copy=True
    )
    np.testing.assert_allclose(full.obsp["lsd_prior_transitions"].sum(1), 1.0)


def test_user_transitions_validated_and_normalised():
    adata = _chain()
    m = np.ones((6, 6))
    m[2] = 0
    out = wd.pp.lsd_prior(adata, transitions=m, copy=True)
    p = out.obsp["lsd_prior_transitions"].toarray()
    np.testing.assert_allclose(p.sum(1), 1.0)
    assert p[2, 2] == 1.0
    with pytest.raises(ValueError, match="square"):
        wd.pp.lsd_prior(adata, transitions=np.ones((6, 5)))
    with pytest.raises(ValueError, match="negative"):
        wd.pp.lsd_prior(adata, transitions=-np.ones((6, 6)))
    bad = np.ones((6, 6))
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        wd.pp.lsd_prior(adata, transitions=bad)
    with pytest.raises(ValueError, match="6 cells"):
        wd.pp.lsd_prior(adata, transitions=np.ones((5, 5)))
    assert "lsd_prior_transitions" not in adata.obsp


def test_prior_bad_input_names_slot_and_leaves_adata_unchanged():
    adata = _chain()
    before = adata.copy()
    with pytest.raises(KeyError, match="'missing'.*adata.obs.*sc.tl.dpt"):
        wd.pp.lsd_prior(adata, "missing")
    adata.obs["bad"] = [0.0, np.nan, 0.2, 0.3, 0.4, 0.5]
    with pytest.raises(ValueError, match="'bad'.*non-finite") as err:
        wd.pp.lsd_prior(adata, "bad")
    assert "sc.tl.dpt" not in str(err.value)  # the DPT hint is for +inf only
    adata.obs["dpt_pseudotime"] = [0.0, 0.1, 0.2, np.inf, np.inf, 0.5]  # scanpy's value for disconnected cells
    with pytest.raises(ValueError, match=r"2 non-finite.*all \+inf.*sc.tl.dpt.*sc.pp.neighbors"):
        wd.pp.lsd_prior(adata, "dpt_pseudotime")
    del adata.obs["dpt_pseudotime"]
    with pytest.raises(KeyError, match="'nope'.*adata.obsp.*sc.pp.neighbors"):
        wd.pp.lsd_prior(adata, "t", graph_key="nope")
    with pytest.raises(ValueError, match="time_key"):
        wd.pp.lsd_prior(adata)
    with pytest.raises(ValueError, match="cluster_key"):
        wd.pp.lsd_prior(adata, "t", phylogeny={"a": ["b"]})
    with pytest.raises(ValueError, match="'zz'"):
        wd.pp.lsd_prior(adata, "t", phylogeny={"a": ["zz"]}, cluster_key="clusters")
    assert set(adata.obsp) == set(before.obsp) and "lsd_prior" not in adata.uns


def test_prior_copy_and_view():
    adata = _chain()
    out = wd.pp.lsd_prior(adata, "t", copy=True)
    assert "lsd_prior_transitions" in out.obsp and "lsd_prior_transitions" not in adata.obsp
    big = ad.concat([adata, adata], index_unique="-")
    big.obsp["connectivities"] = sp.block_diag([adata.obsp["connectivities"]] * 2, format="csr")
    view = big[:6]
    assert view.is_view
    wd.pp.lsd_prior(view, "t")
    assert not view.is_view
    np.testing.assert_allclose(
        view.obsp["lsd_prior_transitions"].toarray(), out.obsp["lsd_prior_transitions"].toarray()
    )
    assert "lsd_prior_transitions" not in big.obsp


def test_boltzmann_memory_is_edge_sparse():
    n = 20000
    rng = np.random.default_rng(0)
    rows = np.repeat(np.arange(n), 10)
    cols = rng.integers(0, n, rows.size)
    g = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n))
    p, absorbing = boltzmann_transitions(g, rng.random(n), 50.0)
    assert p.nnz <= rows.size + absorbing.size
    np.testing.assert_allclose(np.asarray(p.sum(1)).ravel(), 1.0)
