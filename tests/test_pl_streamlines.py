import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData
from matplotlib.collections import LineCollection, PathCollection
from sklearn.neighbors import NearestNeighbors

import waddington as wd
from waddington.pl._projection import project_transitions, smooth_on_grid, velocity_transitions
from waddington.pl._streamlines import embedding_arrows


def _knn(X, k=15):
    g = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors_graph(X, mode="connectivity")
    g = sp.csr_matrix(g)
    g.setdiag(0)
    g.eliminate_zeros()
    return g


def _biased(graph, X, direction, beta=5.0):
    A = graph.tocoo()
    w = np.exp(beta * (X[A.col] - X[A.row]) @ direction)
    P = sp.csr_matrix((w, (A.row, A.col)), shape=graph.shape)
    return sp.csr_matrix(sp.diags(1.0 / np.asarray(P.sum(1)).ravel()) @ P)


@pytest.fixture(scope="module")
def adata():
    rng = np.random.default_rng(0)
    n = 600
    X = rng.uniform(0, 10, size=(n, 2))
    graph = _knn(X)
    ad = AnnData(np.zeros((n, 3), dtype=np.float32))
    ad.obsm["X_umap"] = X
    ad.obsm["spatial"] = X * 100.0
    ad.obsp["connectivities"] = graph
    ad.obsp["lsd_transitions"] = _biased(graph, X, np.array([1.0, 0.0]))
    uniform = sp.csr_matrix(sp.diags(1.0 / np.asarray(graph.sum(1)).ravel()) @ graph)
    ad.obsp["uniform"] = uniform
    ad.obs["clusters"] = pd.Categorical(np.where(X[:, 0] < 5, "left", "right"))
    ad.uns["clusters_colors"] = ["#ff0000", "#0000ff"]
    ad.obs["time"] = X[:, 0]
    # pseudodynamics in a rotated 3-D state space: velocity along +y of the umap
    theta = np.pi / 2
    R = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    ad.obsm["X_state"] = np.column_stack([X @ R.T, rng.normal(size=n)])
    ad.obsm["pd_velocity"] = np.tile(np.r_[np.array([0.0, 1.0]) @ R.T, 0.0], (n, 1))
    ad.uns["pseudodynamics"] = {"params": {"state_key": "X_state", "n_dims": 2}}
    return ad


def _unit_mean(v):
    m = v.mean(axis=0)
    return m / np.linalg.norm(m)


def test_biased_transitions_project_to_their_direction(adata):
    arrows = project_transitions(
        adata.obsp["lsd_transitions"], adata.obsm["X_umap"], graph=adata.obsp["connectivities"]
    )
    assert arrows.shape == (adata.n_obs, 2)
    assert _unit_mean(arrows) @ np.array([1.0, 0.0]) > 0.99
    # most individual cells point the same way
    assert (arrows[:, 0] > 0).mean() > 0.95


def test_uniform_random_walk_projects_to_zero(adata):
    arrows = project_transitions(adata.obsp["uniform"], adata.obsm["X_umap"], graph=adata.obsp["connectivities"])
    np.testing.assert_allclose(arrows, 0.0, atol=1e-10)
    # a lazy walk (self-loops) is also unbiased, and absorbing cells get no arrow
    lazy = 0.5 * adata.obsp["uniform"] + 0.5 * sp.identity(adata.n_obs, format="csr")
    lazy = sp.csr_matrix(lazy)
    np.testing.assert_allclose(project_transitions(lazy, adata.obsm["X_umap"]), 0.0, atol=1e-10)


def test_velocity_kernel_follows_the_velocity(adata):
    X = adata.obsm["X_umap"]
    P, scale = velocity_transitions(X, np.tile([0.0, 1.0], (adata.n_obs, 1)), adata.obsp["connectivities"])
    assert scale > 0
    np.testing.assert_allclose(np.asarray(P.sum(1)).ravel(), 1.0)
    assert _unit_mean(project_transitions(P, X, graph=adata.obsp["connectivities"])) @ [0.0, 1.0] > 0.99


def test_pd_velocity_is_used_directly_in_its_state_space_and_projected_elsewhere(adata):
    _, direct = embedding_arrows(adata, "X_state", key="pd")
    np.testing.assert_allclose(direct, adata.obsm["pd_velocity"][:, :2])
    _, projected = embedding_arrows(adata, "umap", key="pd")
    assert _unit_mean(projected) @ [0.0, 1.0] > 0.95


def test_pd_velocity_under_another_key_added(adata):
    a = adata.copy()
    a.uns["pd2"] = a.uns["pseudodynamics"]
    a.obsm["pd2_velocity"] = -a.obsm["pd_velocity"]
    _, direct = embedding_arrows(a, "X_state", key="pd2")
    np.testing.assert_allclose(direct, -adata.obsm["pd_velocity"][:, :2])
    _, projected = embedding_arrows(a, "umap", key="pd2")
    assert _unit_mean(projected) @ [0.0, -1.0] > 0.95
    _, alias = embedding_arrows(a, "X_state", key="pseudodynamics")
    np.testing.assert_allclose(alias, adata.obsm["pd_velocity"][:, :2])


def test_grid_smoothing_recovers_a_constant_field_and_masks_empty_space():
    rng = np.random.default_rng(1)
    X = np.vstack([rng.uniform(0, 1, (300, 2)), rng.uniform(9, 10, (300, 2))])  # two blobs, empty middle
    field = smooth_on_grid(X, np.tile([2.0, -1.0], (600, 1)), n_grid=30)
    U, V = field["values"]
    assert U.shape == (30, 30) and field["mass"].shape == (30, 30)
    np.testing.assert_allclose(U[np.isfinite(U)], 2.0)
    np.testing.assert_allclose(V[np.isfinite(V)], -1.0)
    assert np.isnan(U[15, 15])  # centre of the empty gap is masked
    assert np.isfinite(U).sum() > 20
    scalar = smooth_on_grid(X, X[:, 0], n_grid=30)
    assert scalar["values"].shape == (30, 30)


def _has_streamlines(ax):
    return any(isinstance(c, LineCollection) for c in ax.collections)


def test_streamlines_render_with_categorical_palette(adata):
    ax = wd.pl.streamlines(adata, "umap", color="clusters", show=False)
    assert _has_streamlines(ax)
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(scatters) == 1 and scatters[0].get_offsets().shape == (adata.n_obs, 2)
    facecolors = scatters[0].get_facecolors()[:, :3]
    assert {tuple(np.round(c, 3)) for c in facecolors} == {(1.0, 0.0, 0.0), (0.0, 0.0, 1.0)}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["left", "right"]
    plt.close("all")


def test_streamlines_on_spatial_continuous_color_and_return_fig(adata, tmp_path):
    fig = wd.pl.streamlines(
        adata, "spatial", key="lsd", color="time", return_fig=True, show=False, save=str(tmp_path / "s.png")
    )
    assert (tmp_path / "s.png").exists()
    assert _has_streamlines(fig.axes[0])
    assert len(fig.axes) == 2  # plot + colour bar
    fig2, ax2 = plt.subplots()
    out = wd.pl.streamlines(adata, "umap", key="pd", ax=ax2)
    assert out is ax2 and _has_streamlines(ax2)
    plt.close("all")


def test_streamlines_errors_name_the_missing_slot(adata):
    with pytest.raises(KeyError, match="lsd_prior_transitions.*wd.pp.lsd_prior"):
        wd.pl.streamlines(adata, "umap", key="lsd_prior", show=False)
    with pytest.raises(KeyError, match="tsne.*adata.obsm.*X_tsne"):
        wd.pl.streamlines(adata, "tsne", show=False)
    bare = AnnData(np.zeros((5, 2), dtype=np.float32), obsm={"X_umap": np.zeros((5, 2))})
    with pytest.raises(KeyError, match="pseudodynamics.*wd.tl.pseudodynamics"):
        wd.pl.streamlines(bare, "umap", key="pd", show=False)
