import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import expm_multiply
from scipy.stats import spearmanr

import waddington as wd
from waddington.datasets._population_1d import fv_operator

SMALL_TOGGLE = {"n_cells": 400, "n_genes": 120, "n_trajectories": 100}


@pytest.fixture(scope="module")
def toggle():
    return wd.datasets.toggle_switch(**SMALL_TOGGLE, random_state=0)


@pytest.fixture(scope="module")
def toggle_raw():
    return wd.datasets.toggle_switch(n_cells=600, n_genes=100, n_trajectories=300, preprocess=False, random_state=3)


@pytest.fixture(scope="module")
def pop1d():
    return wd.datasets.population_1d(n_cells_per_time=300, random_state=0)


@pytest.fixture(scope="module")
def branching():
    return wd.datasets.population_branching(n_cells_per_time=300, random_state=0)


def _assert_same(a: ad.AnnData, b: ad.AnnData) -> None:
    pd.testing.assert_frame_equal(a.obs, b.obs)
    assert a.obsm.keys() == b.obsm.keys()
    for key in a.obsm:
        np.testing.assert_array_equal(a.obsm[key], b.obsm[key])
    for key in a.layers:
        assert (a.layers[key] != b.layers[key]).nnz == 0
    _assert_nested_equal(a.uns, b.uns)


def _assert_nested_equal(x, y) -> None:
    if isinstance(x, dict):
        assert set(x) == set(y)
        for key in x:
            _assert_nested_equal(x[key], y[key])
    elif sp.issparse(x):
        assert (x != y).nnz == 0
    elif isinstance(x, pd.DataFrame):
        pd.testing.assert_frame_equal(x, y)
    else:
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---------------------------------------------------------------------------------------------------------------
# toggle switch


def test_toggle_switch_is_bit_identical_for_a_seed(toggle_raw):
    again = wd.datasets.toggle_switch(n_cells=600, n_genes=100, n_trajectories=300, preprocess=False, random_state=3)
    _assert_same(toggle_raw, again)
    assert (toggle_raw.X != again.X).nnz == 0
    other = wd.datasets.toggle_switch(n_cells=600, n_genes=100, n_trajectories=300, preprocess=False, random_state=4)
    assert (toggle_raw.layers["raw"] != other.layers["raw"]).nnz > 0


def test_toggle_switch_preprocessing_is_bit_identical_for_a_seed(toggle):
    again = wd.datasets.toggle_switch(**SMALL_TOGGLE, random_state=0)
    _assert_same(toggle, again)
    for key in toggle.obsp:
        assert (toggle.obsp[key] != again.obsp[key]).nnz == 0


def test_toggle_switch_writes_every_slot(toggle):
    n = SMALL_TOGGLE["n_cells"]
    assert toggle.shape == (n, SMALL_TOGGLE["n_genes"])
    raw = toggle.layers["raw"]
    assert sp.isspmatrix_csr(raw) and np.issubdtype(raw.dtype, np.integer)
    np.testing.assert_array_equal(toggle.obs["librarysize"].to_numpy(), np.asarray(raw.sum(axis=1)).ravel())
    assert sp.isspmatrix_csr(toggle.X) and toggle.X.dtype == np.float32
    assert toggle.var_names[:2].tolist() == ["Gata1", "Spi1"]
    assert isinstance(toggle.obs["true_fate"].dtype, pd.CategoricalDtype)
    assert set(toggle.obs["true_fate"].cat.categories) == {"Ery", "Mye"}
    assert toggle.obs["true_time"].between(0, 10).all()
    assert toggle.obsm["X_pca"].shape[0] == n and toggle.obsm["X_umap"].shape == (n, 2)
    for key in ("connectivities", "distances"):
        assert toggle.obsp[key].shape == (n, n)
    assert isinstance(toggle.obs["clusters"].dtype, pd.CategoricalDtype)
    assert toggle.uns["iroot"] == int(np.argmin(toggle.obs["true_time"]))
    assert toggle.obs["dpt_pseudotime"].between(0, 1).all()
    truth = toggle.uns["truth"]
    for key in ("fate_fractions", "progenitor_time", "master_regulators", "target_genes", "params"):
        assert key in truth
    assert set(truth["fate_fractions"]) == {"wild_type", "Gata1_knockout", "Spi1_knockout"}


def test_toggle_switch_without_preprocessing_has_counts_and_truth_only(toggle_raw):
    assert "X_pca" not in toggle_raw.obsm and "connectivities" not in toggle_raw.obsp
    assert "dpt_pseudotime" not in toggle_raw.obs
    raw = toggle_raw.layers["raw"]
    expected = np.log1p(raw.toarray() / raw.sum(axis=1).A * np.median(raw.sum(axis=1).A))
    np.testing.assert_allclose(toggle_raw.X.toarray(), expected, rtol=1e-5, atol=1e-5)


def test_knockouts_move_fates_the_way_the_network_says(toggle_raw):
    fractions = toggle_raw.uns["truth"]["fate_fractions"]
    wt = fractions["wild_type"]
    assert 0.3 < wt["Ery"] < 0.7
    assert fractions["Gata1_knockout"]["Ery"] < wt["Ery"] - 0.3
    assert fractions["Spi1_knockout"]["Mye"] < wt["Mye"] - 0.3
    for fracs in fractions.values():
        assert sum(fracs.values()) == pytest.approx(1.0)


def test_fate_labels_match_final_regulator_levels(toggle_raw):
    levels = toggle_raw.uns["truth"]["regulator_levels"]
    late = toggle_raw.obs["true_time"].to_numpy() >= 9.0
    assert late.sum() > 20
    ery = (toggle_raw.obs["true_fate"] == "Ery").to_numpy()
    agree = (levels["Gata1"] > levels["Spi1"]) == ery
    assert agree[late].mean() > 0.97


def test_toggle_switch_regulators_carry_signal_at_sequencing_depth(toggle_raw):
    raw = toggle_raw.layers["raw"].tocsc()
    late = toggle_raw.obs["true_time"].to_numpy() > 7
    ery = (toggle_raw.obs["true_fate"] == "Ery").to_numpy()
    gata1 = raw[:, 0].toarray().ravel()
    spi1 = raw[:, 1].toarray().ravel()
    assert gata1[late & ery].mean() > 20 and spi1[late & ~ery].mean() > 20
    assert gata1[late & ery].mean() > 3 * gata1[late & ~ery].mean()
    targets = toggle_raw.uns["truth"]["target_genes"]["Ery"]
    idx = toggle_raw.var_names.get_indexer(targets)
    assert raw[:, idx][late & ery].mean() > 2 * raw[:, idx][late & ~ery].mean()


def test_toggle_switch_dpt_follows_true_time(toggle):
    rho = spearmanr(toggle.obs["dpt_pseudotime"], toggle.obs["true_time"])[0]
    assert rho > 0.8


def test_toggle_switch_rejects_too_few_genes():
    with pytest.raises(ValueError, match="n_genes"):
        wd.datasets.toggle_switch(n_cells=50, n_genes=20, preprocess=False)


# ---------------------------------------------------------------------------------------------------------------
# 1-D finite-volume model


def test_fv_operator_conserves_mass_without_growth():
    rng = np.random.default_rng(0)
    n, h = 99, 1 / 99
    a = fv_operator(rng.uniform(1e-4, 1e-2, n - 1), rng.uniform(0, 1, n - 1), np.zeros(n), h)
    np.testing.assert_allclose(np.asarray(a.sum(axis=0)).ravel(), 0.0, atol=1e-9)
    u0 = rng.uniform(0, 1, n)
    u1 = expm_multiply(a * 2.0, u0)
    assert u1.sum() * h == pytest.approx(u0.sum() * h, rel=1e-10)
    assert not np.allclose(u1, u0)  # it did move


def test_fv_total_grows_with_a_constant_rate_exactly():
    n, h = 99, 1 / 99
    a = fv_operator(np.full(n - 1, 1e-3), np.full(n - 1, 0.5), np.full(n, 0.3), h)
    u0 = np.ones(n)
    u1 = expm_multiply(a * 2.0, u0)
    assert u1.sum() / u0.sum() == pytest.approx(np.exp(0.6), rel=1e-10)


def test_population_1d_total_matches_integrated_growth(pop1d):
    truth = pop1d.uns["truth"]
    h = np.diff(truth["grid"])[0]
    np.testing.assert_allclose(truth["N"], truth["density"].sum(axis=1) * h)
    # dN/dt = sum(g u h): integrate the growth over a fine time grid between the first two sampling times
    p = truth["params"]
    fine = wd.datasets.population_1d(
        n_cells_per_time=10,
        times=np.linspace(0, 1, 201),
        theta_D=p["theta_D"],
        theta_v=p["theta_v"],
        growth=p["growth"],
    ).uns["truth"]
    rate = fine["density"] @ fine["g"] * h
    integrated = fine["N"][0] + np.trapezoid(rate, fine["t"])
    assert fine["N"][-1] == pytest.approx(integrated, rel=1e-4)
    assert fine["N"][-1] == pytest.approx(truth["N"][1], rel=1e-8)


def test_population_1d_toy_grows_like_the_reference(pop1d):
    ratio = pop1d.uns["truth"]["N"] / pop1d.uns["truth"]["N"][0]
    assert ratio[0] == 1.0 and np.all(np.diff(ratio) > 0)
    assert ratio[-1] == pytest.approx(17.8, rel=0.05)
    assert pop1d.uns["truth"]["N"][0] == pytest.approx(15000, rel=0.02)


def test_population_1d_slots_and_sampling(pop1d):
    n_t = 6
    assert pop1d.n_obs == 300 * n_t
    assert pop1d.obsm["X_state"].shape == (pop1d.n_obs, 1) and pop1d.obsm["true_v"].shape == (pop1d.n_obs, 1)
    np.testing.assert_array_equal(pop1d.obsm["X_state"][:, 0], pop1d.obs["state"].to_numpy())
    pop = pop1d.uns["pop"]
    assert {"t", "mean", "std", "n_lib"} <= set(pop)
    np.testing.assert_array_equal(pop["t"], np.unique(pop1d.obs["day"]))
    np.testing.assert_allclose(pop["mean"], pop1d.uns["truth"]["N"], rtol=0.05)
    truth = pop1d.uns["truth"]
    assert truth["density"].shape == (n_t, 299) and np.all(truth["density"] >= 0)
    assert (pop1d.obs["true_density"] > 0).all() and (pop1d.obs["true_D"] > 0).all()
    assert pop1d.obs["state"].between(0, 1).all()
    # the sampled states follow the density: compare the mean state with the density's mean at each time
    centres, h = truth["centres"], np.diff(truth["grid"])[0]
    for k, t in enumerate(pop["t"]):
        dens = truth["density"][k] * h
        mean = (dens * centres).sum() / dens.sum()
        sd = np.sqrt((dens * (centres - mean) ** 2).sum() / dens.sum())
        cells = pop1d.obs.loc[pop1d.obs["day"] == t, "state"]
        assert abs(cells.mean() - mean) < 4 * sd / np.sqrt(len(cells))
    # the velocity is tapered to zero at the right end
    assert truth["v_faces"][-1] == 0.0 and truth["v_faces"][-30:].max() < truth["v_faces"][-31] + 1e-12


def test_population_1d_is_bit_identical_for_a_seed(pop1d):
    _assert_same(pop1d, wd.datasets.population_1d(n_cells_per_time=300, random_state=0))


# ---------------------------------------------------------------------------------------------------------------
# 2-D branching particle model


def test_particle_counts_match_integrated_growth(branching):
    truth = branching.uns["truth"]
    dt = truth["params"]["dt"]
    steps = np.round(truth["t"] / dt).astype(int)
    np.testing.assert_array_equal(truth["N"], truth["N_grid"][steps])
    for a, b in zip(steps[:-1], steps[1:], strict=True):
        observed = np.log(truth["N_grid"][b] / truth["N_grid"][a])
        expected = truth["mean_g_grid"][a:b].sum() * dt
        assert observed == pytest.approx(expected, abs=0.06)


def test_branching_truth_matches_the_fields(branching):
    fields = wd.datasets.branching_fields(branching.obsm["X_state"], branching.uns["truth"]["params"])
    np.testing.assert_allclose(branching.obsm["true_v"], fields["v"])
    np.testing.assert_allclose(branching.obs["true_g"], fields["g"])
    assert branching.obs["true_g"].std() > 0.1  # growth varies noticeably
    assert (branching.obs["true_g"] < 0).any() and (branching.obs["true_g"] > 0.5).any()
    late = branching.obsm["X_state"][branching.obs["day"] == 5]
    assert (late[:, 1] > 0.5).any() and (late[:, 1] < -0.5).any()  # two branches


def test_branching_slots(branching):
    pop = branching.uns["pop"]
    assert {"t", "mean", "std", "n_lib"} <= set(pop)
    np.testing.assert_array_equal(pop["mean"], branching.uns["truth"]["N"])
    np.testing.assert_allclose(pop["std"], 0.01 * pop["mean"])
    counts = branching.obs["day"].value_counts().sort_index().to_numpy()
    np.testing.assert_array_equal(counts, np.minimum(300, pop["mean"]).astype(int))
    assert branching.obsm["X_state"].shape == (branching.n_obs, 2)
    assert branching.obsm["true_v"].shape == (branching.n_obs, 2)
    assert (branching.obs["true_D"] == 0.01).all()


def test_branching_is_bit_identical_for_a_seed(branching):
    _assert_same(branching, wd.datasets.population_branching(n_cells_per_time=300, random_state=0))


# ---------------------------------------------------------------------------------------------------------------
# h5ad


@pytest.mark.parametrize("name", ["toggle", "pop1d", "branching"])
def test_every_slot_survives_an_h5ad_round_trip(name, request, tmp_path):
    adata = request.getfixturevalue(name)
    path = tmp_path / f"{name}.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    _assert_same(adata, back)
    assert set(adata.obsp) == set(back.obsp)
    for key in adata.obsp:
        assert (adata.obsp[key] != back.obsp[key]).nnz == 0
    if adata.n_vars:
        assert (adata.X != back.X).nnz == 0


# ---------------------------------------------------------------------------------------------------------------
# full size (slow)


@pytest.mark.slow
def test_default_sizes_run_in_under_30_seconds():
    for fn in (wd.datasets.toggle_switch, wd.datasets.population_1d, wd.datasets.population_branching):
        start = time.perf_counter()
        fn()
        assert time.perf_counter() - start < 30, fn.__name__


@pytest.mark.slow
def test_toggle_switch_meets_the_downstream_targets():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    adata = wd.datasets.toggle_switch()
    t = adata.obs["true_time"].to_numpy()
    dpt = adata.obs["dpt_pseudotime"].to_numpy()
    assert 0.88 < spearmanr(t, dpt)[0] < 0.98
    a = (adata.obsp["connectivities"] > 0).astype(float).tocoo()
    p = sp.csr_matrix((np.exp(50 * (dpt[a.col] - dpt[a.row])), (a.row, a.col)), shape=a.shape)
    p = sp.diags(1 / np.asarray(p.sum(axis=1)).ravel()) @ p
    assert 0.7 < np.mean(p @ t - t > 0) < 0.9
    y = (adata.obs["true_fate"] == "Ery").to_numpy()
    x = adata.obsm["X_pca"]
    clf = LogisticRegression(max_iter=2000)
    early = t < t.max() / 2
    assert 0.9 < cross_val_score(clf, x, y, cv=5).mean() < 0.98
    assert 0.8 < cross_val_score(clf, x[early], y[early], cv=5).mean() < 0.95
    fractions = adata.uns["truth"]["fate_fractions"]
    assert fractions["Gata1_knockout"]["Mye"] > 0.9 and fractions["Spi1_knockout"]["Ery"] > 0.9
