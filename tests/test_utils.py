import numpy as np
import pytest
import scipy.sparse as sp
import torch

from waddington._utils import (
    check_counts,
    check_graph,
    check_layer,
    check_obs,
    check_obsm,
    check_obsp,
    check_uns,
    get_counts,
    get_rng,
    resolve_accelerator,
    resolve_device,
    seed_everything,
)


def test_missing_obs_key_names_slot_and_fix(tiny_adata):
    with pytest.raises(KeyError, match=r"'dpt_pseudotime' in adata.obs; run `sc.tl.dpt\(adata\)` first"):
        check_obs(tiny_adata, "dpt_pseudotime", fix="run `sc.tl.dpt(adata)` first")


def test_non_finite_obs_values_are_reported_with_the_cell(tiny_adata):
    tiny_adata.obs.loc[tiny_adata.obs_names[3], "time"] = np.nan
    with pytest.raises(ValueError, match=r"adata.obs\['time'\] has 1 non-finite value.*'3'"):
        check_obs(tiny_adata, "time", finite=True)


def test_non_numeric_obs_is_rejected(tiny_adata):
    tiny_adata.obs["label"] = ["a"] * tiny_adata.n_obs
    with pytest.raises(TypeError, match=r"adata.obs\['label'\] must be numeric"):
        check_obs(tiny_adata, "label", numeric=True)


def test_obsm_missing_lists_available_keys(tiny_adata):
    with pytest.raises(KeyError, match=r"'X_diffmap' in adata.obsm \(available: 'X_pca'\); run `sc.tl.diffmap"):
        check_obsm(tiny_adata, "X_diffmap", fix="run `sc.tl.diffmap(adata)` first")


def test_obsm_nan_is_rejected(tiny_adata):
    tiny_adata.obsm["X_pca"][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"adata.obsm\['X_pca'\] has 1 non-finite"):
        check_obsm(tiny_adata, "X_pca")


def test_missing_graph_names_neighbors_call(tiny_adata):
    del tiny_adata.obsp["connectivities"]
    with pytest.raises(KeyError, match=r"run `sc.pp.neighbors\(adata\)` first"):
        check_obsp(tiny_adata, "connectivities", fix="run `sc.pp.neighbors(adata)` first")


def test_graph_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match=r"has shape \(5, 5\) but the AnnData has 6 cells"):
        check_graph(sp.eye(5), 6, where="adata.obsp['connectivities']")
    with pytest.raises(ValueError, match="must be square"):
        check_graph(np.ones((3, 4)), 3)


def test_graph_negative_or_nan_weights_are_rejected():
    with pytest.raises(ValueError, match="negative entries"):
        check_graph(sp.csr_matrix(-np.eye(3)), 3)
    bad = np.eye(3)
    bad[0, 1] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        check_graph(bad, 3)


def test_graph_is_returned_as_float_csr():
    graph = check_graph(np.eye(4, dtype=int), 4)
    assert sp.isspmatrix_csr(graph) and graph.dtype == np.float64 and graph.nnz == 4


def test_missing_uns_and_layer(tiny_adata):
    with pytest.raises(KeyError, match=r"'lsd' in adata.uns; run `wd.tl.lsd\(adata\)` first"):
        check_uns(tiny_adata, "lsd", fix="run `wd.tl.lsd(adata)` first")
    with pytest.raises(KeyError, match=r"'counts' in adata.layers \(available: 'raw'\)"):
        check_layer(tiny_adata, "counts")


def test_non_integer_counts_are_rejected():
    with pytest.raises(ValueError, match="non-integer values"):
        check_counts(sp.csr_matrix(np.array([[0.5, 1.0]])), "adata.layers['raw']")
    with pytest.raises(ValueError, match="negative values"):
        check_counts(np.array([[-1.0, 1.0]]), "adata.X")
    check_counts(np.array([[0, 3]]), "adata.X")


def test_get_counts_reads_layer_as_csr(tiny_adata):
    counts = get_counts(tiny_adata, layer="raw")
    assert sp.isspmatrix_csr(counts) and counts.dtype == np.float32
    np.testing.assert_array_equal(counts.toarray(), tiny_adata.layers["raw"].toarray())


def test_get_counts_falls_back_to_raw_then_integer_x(tiny_adata, caplog):
    counts = tiny_adata.layers["raw"].copy()
    del tiny_adata.layers["raw"]
    with pytest.raises(KeyError, match=r"Unable to find raw counts in adata.layers\['raw'\], adata.raw or adata.X"):
        get_counts(tiny_adata)
    tiny_adata.X = counts
    with caplog.at_level("INFO", logger="waddington"):
        out = get_counts(tiny_adata)
    assert "integer counts from adata.X" in caplog.text
    np.testing.assert_array_equal(out.toarray(), counts.toarray())


def test_get_counts_rejects_log_normalised_layer(tiny_adata):
    tiny_adata.layers["raw"] = tiny_adata.X.copy()
    with pytest.raises(ValueError, match=r"adata.layers\['raw'\] must hold raw integer counts"):
        get_counts(tiny_adata)


def test_get_rng_is_reproducible_and_validates():
    assert get_rng(3).integers(0, 1000, 5).tolist() == get_rng(3).integers(0, 1000, 5).tolist()
    gen = np.random.default_rng(1)
    assert get_rng(gen) is gen
    with pytest.raises(ValueError, match="non-negative"):
        get_rng(-1)
    with pytest.raises(TypeError, match="random_state"):
        get_rng(1.5)


def test_seed_everything_makes_torch_reproducible():
    seed_everything(7)
    a = torch.randn(4)
    seed_everything(7)
    assert torch.equal(a, torch.randn(4))
    assert isinstance(seed_everything(None), int)


def test_device_selection_on_cpu():
    expected = "gpu" if torch.cuda.is_available() else "cpu"
    assert resolve_accelerator("auto") == expected
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_accelerator("gpu")
    with pytest.raises(ValueError, match="accelerator"):
        resolve_accelerator("tpu")


def test_get_counts_takes_the_var_names_columns_of_a_larger_raw(tiny_adata):
    # the usual layout after highly-variable-gene selection: raw keeps every gene, X a subset in another order
    full = tiny_adata.copy()
    full.X = full.layers["raw"].copy()
    sub = tiny_adata[:, [5, 2, 9]].copy()
    sub.raw = full
    del sub.layers["raw"]
    counts = get_counts(sub)
    np.testing.assert_array_equal(counts.toarray(), tiny_adata.layers["raw"][:, [5, 2, 9]].toarray())
    sub.var_names = ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"adata.raw lacks 3 of the genes in adata.var_names \(e.g. 'a'\)"):
        get_counts(sub)
