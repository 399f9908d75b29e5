import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import waddington as wd
from waddington.models.lsd.transitions import smooth_on_graph
from waddington.tl._lsd import LSDModel, load_lsd_module

torch.set_num_threads(1)

TINY = {
    "z_dim": 4,
    "layer_dims": {
        "x_encoder": [32],
        "z_encoder": [8],
        "xl_encoder": [8],
        "B_decoder": [8],
        "z_decoder": [32],
        "potential": [8, 8],
    },
    "n_walks": 128,
    "walk_length": 5,
    "batch_size": 64,
    "n_epochs": 2,
    "progress_bar": False,
    "accelerator": "cpu",
}


def _branching(n=300, g=40, seed=0):
    """Progenitors (early) splitting into two fates; counts, log-normalised X, kNN graph and a noisy pseudotime."""
    import scanpy as sc

    rng = np.random.default_rng(seed)
    t = np.sort(rng.random(n))
    fate = rng.integers(0, 2, n)
    commit = 1 / (1 + np.exp(-(t - 0.35) * 12))
    a = rng.normal(0, 1.5, g)
    b = rng.normal(0, 2.0, (2, g)) * (rng.random((2, g)) < 0.4)
    logmu = rng.normal(-3.5, 0.7, g) + a * np.exp(-3 * t)[:, None] + commit[:, None] * b[fate]
    p = np.exp(logmu)
    p /= p.sum(1, keepdims=True)
    lib = np.exp(rng.normal(np.log(2000), 0.3, n))
    mu = p * lib[:, None]
    counts = rng.negative_binomial(5, 5 / (5 + mu))
    adata = ad.AnnData(sp.csr_matrix(counts.astype(np.float32)))
    adata.obs_names = [f"c{i}" for i in range(n)]
    adata.var_names = [f"g{i}" for i in range(g)]
    adata.layers["raw"] = sp.csr_matrix(counts)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=10, random_state=0)
    sc.pp.neighbors(adata, n_neighbors=10, random_state=0)
    adata.obs["true_time"] = t
    adata.obs["pseudotime"] = np.clip(t + rng.normal(0, 0.03, n), 0, None)
    adata.obs["clusters"] = pd.Categorical(np.where(commit < 0.5, "P", np.where(fate == 0, "A", "B")))
    wd.pp.lsd_prior(adata, "pseudotime")
    return adata


@pytest.fixture(scope="module")
def fitted():
    adata = _branching()
    model = wd.tl.lsd(adata, random_state=0, return_model=True, **TINY)
    return adata, model


def test_lsd_writes_every_slot(fitted):
    adata, _ = fitted
    n = adata.n_obs
    assert adata.obsm["X_lsd_cell_state"].shape == (n, 4)
    assert adata.obsm["X_lsd_diff_state"].shape == (n, 2)
    for key in ("lsd_potential", "lsd_pseudotime", "lsd_entropy"):
        assert np.isfinite(adata.obs[key]).all()
    pt = adata.obs["lsd_pseudotime"].to_numpy()
    assert pt.min() == pytest.approx(0.0) and pt.max() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(
        pt, (adata.obs.lsd_potential.max() - adata.obs.lsd_potential) / np.ptp(adata.obs.lsd_potential), atol=1e-9
    )
    ent = adata.obs["lsd_entropy"].to_numpy()
    assert (ent >= -1e-12).all() and (ent <= 1 + 1e-12).all()
    trans = adata.obsp["lsd_transitions"]
    assert sp.issparse(trans) and trans.format == "csr"
    np.testing.assert_allclose(np.asarray(trans.sum(1)).ravel(), 1.0, rtol=1e-10)
    # same sparsity pattern as the kNN graph (no self-loops needed: every cell has neighbours)
    conn = adata.obsp["connectivities"]
    assert ((trans != 0).astype(int) - (conn != 0).astype(int)).nnz == 0
    uns = adata.uns["lsd"]
    assert set(uns) >= {"params", "history", "model", "var_names"}
    assert len(uns["history"]["loss"]) == 2 and np.isfinite(uns["history"]["loss"]).all()
    assert "potential_metric" in uns["history"]
    assert uns["params"]["n_epochs"] == 2 and uns["params"]["layer_dims"]["x_encoder"] == [32]


def test_transitions_follow_boltzmann_formula(fitted):
    adata, _ = fitted
    v = adata.obs["lsd_potential"].to_numpy()
    beta = adata.uns["lsd"]["params"]["transition_beta"]
    a = (adata.obsp["connectivities"].toarray() > 0).astype(float)
    w = a * np.exp(-beta * (v[None, :] - v[:, None]) / np.ptp(v))
    np.testing.assert_allclose(adata.obsp["lsd_transitions"].toarray(), w / w.sum(1, keepdims=True), rtol=1e-6)


def test_potential_smoothing_zero_stores_v_of_the_encoding():
    adata = _branching(n=150, g=20)
    model = wd.tl.lsd(adata, potential_smoothing=0, return_model=True, **{**TINY, "n_epochs": 1})
    np.testing.assert_allclose(model.potential(adata.obsm["X_lsd_cell_state"]), adata.obs["lsd_potential"], rtol=1e-5)
    with pytest.raises(ValueError, match="potential_smoothing"):
        wd.tl.lsd(adata, potential_smoothing=-1, **TINY)


def test_smoothing_averages_over_neighbours():
    g = sp.csr_matrix(np.array([[0, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=float))
    out = smooth_on_graph(g, np.array([0.0, 2.0, 4.0, 7.0]), 1)
    np.testing.assert_allclose(out, [3.0, 0.0, 0.0, 7.0])


def test_lr_schedule_is_stepped(fitted):
    adata, _ = fitted
    lr = adata.uns["lsd"]["history"]["lr"]
    assert lr[0] == pytest.approx(1e-3) and lr[1] < lr[0]


def test_h5ad_round_trip_keeps_the_model(fitted, tmp_path):
    adata, model = fitted
    path = tmp_path / "lsd.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    module = load_lsd_module(back)
    x = torch.from_numpy(back.X.toarray().astype(np.float32))
    with torch.no_grad():
        z, _ = module.encode(x)
        v = module.potential(z).numpy()
    np.testing.assert_allclose(z.numpy(), adata.obsm["X_lsd_cell_state"], rtol=1e-5, atol=1e-6)
    smoothed = smooth_on_graph(back.obsp["connectivities"], v, back.uns["lsd"]["params"]["potential_smoothing"])
    np.testing.assert_allclose(smoothed, adata.obs["lsd_potential"], rtol=1e-5, atol=1e-7)
    assert back.uns["lsd"]["params"]["n_epochs"] == 2 and list(back.uns["lsd"]["history"]["loss"]) == list(
        adata.uns["lsd"]["history"]["loss"]
    )
    m2 = LSDModel.from_adata(back)
    np.testing.assert_allclose(m2.encode(back), adata.obsm["X_lsd_cell_state"], rtol=1e-5, atol=1e-6)


def test_model_object_save_load_and_flow(fitted, tmp_path):
    adata, model = fitted
    assert isinstance(model, LSDModel)
    z = model.encode(adata)
    np.testing.assert_allclose(z, adata.obsm["X_lsd_cell_state"], rtol=1e-5, atol=1e-6)
    model.save(tmp_path / "m.pt")
    loaded = LSDModel.load(tmp_path / "m.pt")
    np.testing.assert_allclose(
        smooth_on_graph(adata.obsp["connectivities"], loaded.potential(z), 2), adata.obs["lsd_potential"], rtol=1e-5
    )
    traj = loaded.integrate(z[:20], np.linspace(0, 2, 5))
    assert traj.shape == (5, 20, 4)
    # the flow goes downhill
    v0, v1 = loaded.potential(traj[0]), loaded.potential(traj[-1])
    assert (v1 <= v0 + 1e-6).all()
    zt = torch.from_numpy(z[:5]).requires_grad_(True)
    (grad,) = torch.autograd.grad(loaded.module.potential(zt).sum(), zt)
    np.testing.assert_allclose(loaded.drift(z[:5]), -grad.numpy(), rtol=1e-4, atol=1e-7)
    assert loaded.diff_state(z[:3]).shape == (3, 2)


def test_same_seed_gives_bit_identical_outputs():
    a1, a2, a3 = _branching(n=150, g=20), _branching(n=150, g=20), _branching(n=150, g=20)
    kw = {**TINY, "n_epochs": 1}
    wd.tl.lsd(a1, random_state=7, **kw)
    wd.tl.lsd(a2, random_state=7, **kw)
    wd.tl.lsd(a3, random_state=8, **kw)
    np.testing.assert_array_equal(a1.obs["lsd_potential"], a2.obs["lsd_potential"])
    np.testing.assert_array_equal(a1.obsm["X_lsd_cell_state"], a2.obsm["X_lsd_cell_state"])
    np.testing.assert_array_equal(a1.obs["lsd_entropy"], a2.obs["lsd_entropy"])
    assert not np.array_equal(a1.obs["lsd_potential"], a3.obs["lsd_potential"])


def test_dense_x_and_view_and_copy_give_results():
    base = _branching(n=150, g=20)
    dense = base.copy()
    dense.X = dense.X.toarray()
    dense.layers["raw"] = dense.layers["raw"].toarray()
    kw = {**TINY, "n_epochs": 1}
    wd.tl.lsd(dense, random_state=1, **kw)
    sparse = base.copy()
    wd.tl.lsd(sparse, random_state=1, **kw)
    np.testing.assert_allclose(dense.obs["lsd_potential"], sparse.obs["lsd_potential"], rtol=1e-5, atol=1e-7)
    out = wd.tl.lsd(base, random_state=1, copy=True, **kw)
    assert "lsd_potential" in out.obs and "lsd_potential" not in base.obs
    big = ad.concat([base, base], index_unique="-")
    view = big[:150]
    view_obsp = base.copy()
    # a view of an AnnData with its own graph and prior
    holder = ad.concat([base, base], index_unique="-", pairwise=False)
    holder.obsp["connectivities"] = sp.block_diag([base.obsp["connectivities"]] * 2, format="csr")
    holder.obsp["lsd_prior_transitions"] = sp.block_diag([base.obsp["lsd_prior_transitions"]] * 2, format="csr")
    holder.uns["lsd_prior"] = dict(base.uns["lsd_prior"])
    holder.layers["raw"] = sp.vstack([base.layers["raw"]] * 2).tocsr()
    view = holder[:150]
    assert view.is_view
    wd.tl.lsd(view, random_state=1, **kw)
    np.testing.assert_allclose(view.obs["lsd_potential"], sparse.obs["lsd_potential"], rtol=1e-5, atol=1e-7)
    assert "lsd_potential" not in holder.obs
    del view_obsp, big


def test_library_size_from_counts_when_no_obs_key(caplog):
    adata = _branching(n=150, g=20)
    assert "librarysize" not in adata.obs
    wd.tl.lsd(adata, **{**TINY, "n_epochs": 1})
    assert adata.uns["lsd"]["params"]["library_key"] == "counts"
    lib = np.log(np.asarray(adata.layers["raw"].sum(1)).ravel())
    arch = adata.uns["lsd"]["model"]["architecture"]
    assert arch["library_loc"] == pytest.approx(lib.mean(), rel=1e-6)
    assert arch["library_scale"] == pytest.approx(lib.std(), rel=1e-6)


@pytest.fixture(scope="module")
def small():
    return _branching(n=120, g=15)


def _unchanged(adata, before):
    assert set(adata.obs) == set(before.obs)
    assert set(adata.obsm) == set(before.obsm)
    assert set(adata.obsp) == set(before.obsp)
    assert set(adata.uns) == set(before.uns)


def test_missing_raw_counts_names_the_layer(small):
    adata = small.copy()
    del adata.layers["raw"]
    before = adata.copy()
    with pytest.raises(KeyError, match=r"adata.layers\['raw'\]"):
        wd.tl.lsd(adata, **TINY)
    _unchanged(adata, before)


def test_non_integer_counts_rejected(small):
    adata = small.copy()
    adata.layers["raw"] = adata.X.copy()  # log-normalised, not counts
    with pytest.raises(ValueError, match="integer counts"):
        wd.tl.lsd(adata, **TINY)
    assert "lsd" not in adata.uns


def test_unknown_ode_method_rejected_before_anything_is_written(small):
    adata = small.copy()
    with pytest.raises(ValueError, match="ode_method"):
        wd.tl.lsd(adata, ode_method="euler", **TINY)
    assert "lsd" not in adata.uns and "lsd_potential" not in adata.obs


def test_missing_prior_and_graph_named(small):
    adata = small.copy()
    del adata.obsp["lsd_prior_transitions"]
    with pytest.raises(KeyError, match=r"lsd_prior_transitions.*wd.pp.lsd_prior"):
        wd.tl.lsd(adata, **TINY)
    adata = small.copy()
    del adata.obsp["connectivities"]
    with pytest.raises(KeyError, match=r"connectivities.*sc.pp.neighbors"):
        wd.tl.lsd(adata, **TINY)
    assert "lsd" not in adata.uns


def test_non_finite_expression_and_library_rejected(small):
    adata = small.copy()
    adata.X = adata.X.toarray()
    adata.X[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"adata.X.*non-finite"):
        wd.tl.lsd(adata, **TINY)
    adata = small.copy()
    adata.obs["librarysize"] = np.nan
    with pytest.raises(ValueError, match="librarysize.*non-finite"):
        wd.tl.lsd(adata, **TINY)
    assert "lsd" not in adata.uns


def test_cell_mismatch_in_prior_is_an_error(small):
    adata = small.copy()
    adata.uns["lsd_prior"] = dict(adata.uns["lsd_prior"])
    sub = adata[:100].copy()  # obsp is subset with the cells, so build a mismatching matrix by hand
    sub.obsp["lsd_prior_transitions"] = sp.csr_matrix(sub.obsp["lsd_prior_transitions"])
    with pytest.raises(ValueError, match="walk_length"):
        wd.tl.lsd(sub, **{**TINY, "walk_length": 1})
    model = LSDModel.from_adata(wd.tl.lsd(small.copy(), copy=True, **{**TINY, "n_epochs": 1}))
    with pytest.raises(ValueError, match="lacks 1 gene"):
        model.encode(small[:, 1:].copy())
    with pytest.raises(ValueError, match="genes as columns"):
        model.encode(np.zeros((3, 4)))


def test_prior_with_absorbing_cells_keeps_all_cells(small, caplog):
    adata = small.copy()
    conn = adata.obsp["connectivities"].tolil()
    conn[0, :] = 0
    conn[:, 0] = 0
    adata.obsp["connectivities"] = conn.tocsr()
    with caplog.at_level(logging.WARNING, logger="waddington"):
        wd.pp.lsd_prior(adata, "pseudotime")
    wd.tl.lsd(adata, **{**TINY, "n_epochs": 1})
    assert adata.obsp["lsd_transitions"].shape == (adata.n_obs, adata.n_obs)
    assert adata.obsp["lsd_transitions"][0, 0] == 1.0
    assert len(adata.obs["lsd_potential"]) == adata.n_obs


@pytest.mark.slow
def test_full_size_toggle_switch_targets():
    """Default toggle switch, default LSD settings: landscape ordered by true time, fate entropy falls with time."""
    from waddington._demo import lsd_scores

    adata = wd.datasets.toggle_switch(random_state=0)
    wd.pp.lsd_prior(adata, "dpt_pseudotime")
    wd.tl.lsd(adata, random_state=0, progress_bar=False, accelerator="cpu")
    s = lsd_scores(adata)
    assert s["spearman_potential_vs_-time"] >= 0.92
    assert s["spearman_pseudotime_vs_time"] >= 0.92
    assert s["frac_forward_transitions"] >= 0.74
    assert s["spearman_entropy_vs_time"] <= -0.5


def test_reduced_size_quality_and_plasticity():
    """A small toggle switch trained briefly already orders cells by true time and has falling fate entropy."""
    from waddington._demo import lsd_scores

    adata = wd.datasets.toggle_switch(n_cells=500, random_state=1)
    wd.pp.lsd_prior(adata, "dpt_pseudotime")
    wd.tl.lsd(
        adata,
        n_walks=512,
        batch_size=128,
        n_epochs=16,
        layer_dims={"x_encoder": [128, 64], "z_decoder": [64, 128]},
        random_state=0,
        progress_bar=False,
        accelerator="cpu",
    )
    s = lsd_scores(adata)
    assert s["spearman_potential_vs_-time"] >= 0.65
    assert s["spearman_entropy_vs_time"] <= -0.5
    assert s["frac_forward_transitions"] >= 0.6


def test_counts_in_x_are_flagged(small, caplog):
    adata = small.copy()
    adata.X = adata.layers["raw"].astype(np.float32)
    before = adata.copy()
    with caplog.at_level(logging.WARNING, logger="waddington"):
        wd.tl.lsd(adata, **{**TINY, "n_epochs": 1})
    assert "looks like raw counts" in caplog.text
    assert before.n_obs == adata.n_obs


def test_prior_of_a_subset_anndata_is_renormalised_with_a_warning(small, caplog):
    adata = small.copy()
    sub = adata[:90].copy()  # the prior was built on all 120 cells; obsp is cut with them
    with caplog.at_level(logging.WARNING, logger="waddington"):
        wd.tl.lsd(sub, **{**TINY, "n_epochs": 1})
    assert "lsd_prior_transitions" in caplog.text and "not row-stochastic" in caplog.text
    assert "wd.pp.lsd_prior" in caplog.text
    assert sub.obsp["lsd_transitions"].shape == (90, 90) and np.isfinite(sub.obs["lsd_potential"]).all()


def test_random_state_none_draws_and_records_a_seed_and_counts_source_is_recorded(small):
    a = wd.tl.lsd(small.copy(), copy=True, random_state=None, **{**TINY, "n_epochs": 1})
    params = a.uns["lsd"]["params"]
    assert isinstance(params["random_state"], int) and params["counts_source"] == "adata.layers['raw']"
    b = wd.tl.lsd(small.copy(), copy=True, random_state=params["random_state"], **{**TINY, "n_epochs": 1})
    np.testing.assert_array_equal(a.obs["lsd_potential"], b.obs["lsd_potential"])


def test_strategy_reaches_lightning_and_is_recorded(small):
    adata = small.copy()
    with pytest.raises(ValueError, match="invalid strategy name"):
        wd.tl.lsd(adata, strategy="bogus", **TINY)
    assert "lsd" not in adata.uns
    wd.tl.lsd(adata, strategy="single_device", **{**TINY, "n_epochs": 1, "accelerator": "cpu"})
    assert adata.uns["lsd"]["params"]["strategy"] == "single_device"
