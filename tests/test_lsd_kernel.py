import numpy as np
import pytest
import scipy.sparse as sp

import waddington as wd

cr = pytest.importorskip("cellrank")


@pytest.fixture(scope="module")
def toggle():
    adata = wd.datasets.toggle_switch(n_cells=600, random_state=0)
    # a potential that decreases with true time stands in for a trained LSD potential
    rng = np.random.default_rng(0)
    adata.obs["lsd_potential"] = 1.0 - adata.obs["true_time"].to_numpy() / adata.obs["true_time"].max()
    adata.obs["lsd_potential"] += rng.normal(0, 0.01, adata.n_obs)
    return adata


def test_kernel_matches_the_boltzmann_formula(toggle):
    k = wd.kernels.LSDKernel(toggle).compute_transition_matrix(beta=20.0)
    assert isinstance(k, cr.kernels.Kernel)
    t = k.transition_matrix
    v = toggle.obs["lsd_potential"].to_numpy()
    a = (toggle.obsp["connectivities"].toarray() > 0).astype(float)
    w = a * np.exp(-20.0 * (v[None] - v[:, None]) / np.ptp(v))
    np.testing.assert_allclose(t.toarray(), w / w.sum(1, keepdims=True), rtol=1e-8, atol=1e-12)
    assert k.params["beta"] == 20.0
    # downhill: the expected potential after one step is lower for most cells
    assert ((t @ v - v) < 0).mean() > 0.8


def test_kernel_weighted_and_zero_beta(toggle):
    k0 = wd.kernels.LSDKernel(toggle).compute_transition_matrix(beta=0.0)
    a = (toggle.obsp["connectivities"] > 0).astype(float)
    np.testing.assert_allclose(
        k0.transition_matrix.toarray(), (a.multiply(1 / a.sum(1))).toarray(), rtol=1e-10, atol=1e-14
    )
    kw = wd.kernels.LSDKernel(toggle).compute_transition_matrix(beta=10.0, weighted=True)
    np.testing.assert_allclose(np.asarray(kw.transition_matrix.sum(1)).ravel(), 1.0)


def test_backward_kernel_walks_uphill_and_inverts(toggle):
    v = toggle.obs["lsd_potential"].to_numpy()
    kb = wd.kernels.LSDKernel(toggle, backward=True).compute_transition_matrix(beta=20.0)
    assert kb.backward is True
    a = (toggle.obsp["connectivities"].toarray() > 0).astype(float)
    w = a * np.exp(20.0 * (v[None] - v[:, None]) / np.ptp(v))
    np.testing.assert_allclose(kb.transition_matrix.toarray(), w / w.sum(1, keepdims=True), rtol=1e-8, atol=1e-12)
    assert ((kb.transition_matrix @ v - v) > 0).mean() > 0.8
    kf = wd.kernels.LSDKernel(toggle).compute_transition_matrix(beta=20.0)
    inv = (~kf).compute_transition_matrix(beta=20.0)
    assert inv.backward is True and kf.backward is False
    np.testing.assert_allclose(inv.transition_matrix.toarray(), kb.transition_matrix.toarray())
    # CellRank names the written matrix by direction
    b = toggle.copy()
    wd.kernels.LSDKernel(b, backward=True).compute_transition_matrix(beta=20.0).write_to_adata()
    assert "T_bwd" in b.obsp and "T_fwd" not in b.obsp


def test_weighted_kernel_makes_rows_of_stored_zeros_absorbing(toggle):
    a = toggle.copy()
    g = a.obsp["connectivities"].copy().tocsr()
    g.data[g.indptr[3] : g.indptr[4]] = 0.0  # cell 3 keeps its pattern but every weight is a stored zero
    a.obsp["connectivities"] = g
    t = wd.kernels.LSDKernel(a).compute_transition_matrix(weighted=True).transition_matrix
    np.testing.assert_allclose(np.asarray(t.sum(1)).ravel(), 1.0)
    assert t[3, 3] == 1.0 and t[3].nnz == 1


def test_kernel_through_gpcca_to_fate_probabilities(toggle):
    k = wd.kernels.LSDKernel(toggle).compute_transition_matrix(beta=50.0)
    g = cr.estimators.GPCCA(k)
    g.compute_schur(n_components=8, method="brandts")
    g.compute_macrostates(n_states=3, cluster_key="true_fate")
    g.predict_terminal_states(method="top_n", n_states=2)
    terminal = set(g.terminal_states.cat.categories)
    assert len(terminal) == 2
    names = {str(n).split("_")[0] for n in terminal}
    assert names == {"Ery", "Mye"}
    g.compute_fate_probabilities(use_petsc=False)
    probs = g.fate_probabilities
    assert probs.shape == (toggle.n_obs, 2)
    np.testing.assert_allclose(np.asarray(probs.X).sum(1), 1.0, atol=1e-4)
    # late cells are assigned to their own fate
    late = toggle.obs["true_time"].to_numpy() > np.quantile(toggle.obs["true_time"], 0.8)
    fate = toggle.obs["true_fate"].astype(str).to_numpy()
    col = {str(n).split("_")[0]: i for i, n in enumerate(probs.names)}
    hit = [np.asarray(probs.X)[i, col[fate[i]]] > 0.5 for i in np.flatnonzero(late) if fate[i] in col]
    assert np.mean(hit) > 0.8


def test_kernel_combines_with_other_kernels(toggle):
    k1 = wd.kernels.LSDKernel(toggle).compute_transition_matrix()
    k2 = cr.kernels.ConnectivityKernel(toggle).compute_transition_matrix()
    combined = 0.8 * k1 + 0.2 * k2
    combined.compute_transition_matrix()
    t = combined.transition_matrix
    expected = 0.8 * k1.transition_matrix + 0.2 * k2.transition_matrix
    np.testing.assert_allclose(sp.csr_matrix(t).toarray(), sp.csr_matrix(expected).toarray(), atol=1e-10)


def test_kernel_errors_name_the_slot(toggle):
    adata = toggle.copy()
    del adata.obs["lsd_potential"]
    with pytest.raises(KeyError, match=r"'lsd_potential'.*wd.tl.lsd"):
        wd.kernels.LSDKernel(adata)
    adata.obs["lsd_potential"] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        wd.kernels.LSDKernel(adata)
    with pytest.raises(ValueError, match="beta"):
        wd.kernels.LSDKernel(toggle).compute_transition_matrix(beta=-1.0)


def test_import_is_light_and_kernels_load_on_first_access():
    import subprocess
    import sys

    code = (
        "import sys, waddington as wd; assert 'cellrank' not in sys.modules, 'cellrank imported eagerly'; "
        "k = wd.kernels.LSDKernel; from waddington.kernels import LSDKernel; assert k is LSDKernel; "
        "assert 'cellrank' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
