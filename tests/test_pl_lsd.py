import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from matplotlib.collections import PathCollection
from matplotlib.image import AxesImage

import waddington as wd
from waddington.pl._fates import fate_table


@pytest.fixture(scope="module")
def adata():
    """Synthetic LSD results: a two-well landscape over a 2-D differentiation state, fates A/B."""
    rng = np.random.default_rng(0)
    n = 300
    B = rng.normal(size=(n, 2))
    ad_ = AnnData(np.zeros((n, 4), dtype=np.float32))
    ad_.obsm["X_lsd_diff_state"] = B
    ad_.obsm["X_umap"] = B[:, ::-1] * 3.0
    ad_.obs["lsd_potential"] = (B[:, 0] ** 2 - 1.0) ** 2 + 0.5 * B[:, 1] ** 2
    clusters = np.where(B[:, 0] < -0.5, "A", np.where(B[:, 0] > 0.5, "B", "prog"))
    ad_.obs["clusters"] = pd.Categorical(clusters, categories=["prog", "A", "B"])
    ad_.uns["clusters_colors"] = ["#aaaaaa", "#ff0000", "#0000ff"]
    pA = 1.0 / (1.0 + np.exp(4.0 * B[:, 0]))
    ad_.obsm["lsd_fate_probabilities"] = pd.DataFrame({"A": pA, "B": 1 - pA}, index=ad_.obs_names)
    ad_.obs["lsd_fate"] = pd.Categorical(np.where(pA > 0.5, "A", "B"))
    ad_.uns["lsd"] = {
        "history": {
            "epoch": np.arange(20),
            "loss": np.exp(-np.arange(20) / 3.0) * 1e3,
            "potential_metric": np.linspace(0.5, 0.0, 20),
            "train_elbo": np.linspace(3, 1, 20),
            "val_elbo": np.linspace(3.2, 1.2, 20),
        }
    }
    ad_.uns["pseudodynamics"] = {"history": {"step": [0, 1, 2], "pde_loss": [3.0, 2.0, 1.0]}}
    rows = []
    for gene, eff in [("Gata1", -1.5), ("Spi1", 1.2), ("noise_1", 0.05)]:
        for fate, sign in [("A", 1), ("B", -1)]:
            rows.append({"gene": gene, "fate": fate, "log2fc": sign * eff, "pval_adj": 1e-6 if abs(eff) > 1 else 0.8})
    ad_.uns["lsd_perturb"] = {"results": pd.DataFrame(rows), "params": {"level": 0.0}}
    return ad_


def test_potential_contour_draws_landscape_and_cells(adata):
    ax = wd.pl.potential(adata, color="clusters", show=False)
    assert len(ax.collections) >= 2  # filled contours, contour lines, cells
    cells = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(cells) == 1 and cells[0].get_offsets().shape == (adata.n_obs, 2)
    assert ax.get_xlabel() == "lsd_diff_state1"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["prog", "A", "B"]
    plt.close("all")


def test_potential_grid_follows_the_cell_values(adata):
    from waddington.pl._projection import smooth_on_grid

    field = smooth_on_grid(adata.obsm["X_lsd_diff_state"], adata.obs["lsd_potential"].to_numpy(), n_grid=40, smooth=1.5)
    Z = field["values"]
    gx, gy = np.meshgrid(field["x"], field["y"])
    truth = (gx**2 - 1.0) ** 2 + 0.5 * gy**2
    near = np.isfinite(Z) & (np.abs(gx) < 1.5) & (np.abs(gy) < 1.5)
    assert near.sum() > 100
    assert np.corrcoef(Z[near], truth[near])[0, 1] > 0.9


def test_potential_surface_is_3d(adata):
    fig = wd.pl.potential(adata, kind="surface", color="lsd_potential", return_fig=True, show=False)
    ax3d = fig.axes[0]
    assert ax3d.name == "3d"
    assert ax3d.get_zlabel() == "lsd_potential"
    plt.close("all")


def test_potential_error_names_slot():
    bare = AnnData(np.zeros((3, 2), dtype=np.float32))
    with pytest.raises(KeyError, match="lsd_potential.*wd.tl.lsd"):
        wd.pl.potential(bare, show=False)


def test_fates_heatmap_matches_mean_probabilities(adata):
    table = fate_table(adata, "clusters")
    assert list(table.index) == ["prog", "A", "B"] and list(table.columns) == ["A", "B"]
    expected = adata.obsm["lsd_fate_probabilities"]["A"][adata.obs["clusters"] == "A"].mean()
    assert table.loc["A", "A"] == pytest.approx(expected)
    axes = wd.pl.fates(adata, cluster_key="clusters", show=False)
    hm, emb = axes
    img = [a for a in hm.get_images() if isinstance(a, AxesImage)][0]
    np.testing.assert_allclose(img.get_array(), table.to_numpy())
    assert [t.get_text() for t in hm.get_xticklabels()] == ["A", "B"]
    assert [t.get_text() for t in hm.get_yticklabels()] == ["prog", "A", "B"]
    assert len(hm.texts) == 6  # annotated values
    # fates named after clusters keep the clusters' colours
    colors = {tuple(np.round(c[:3], 3)) for c in emb.collections[0].get_facecolors()}
    assert colors == {(1.0, 0.0, 0.0), (0.0, 0.0, 1.0)}
    plt.close("all")


def test_fates_falls_back_to_label_fractions(adata):
    labels_only = adata.copy()
    del labels_only.obsm["lsd_fate_probabilities"]
    table = fate_table(labels_only, "clusters")
    np.testing.assert_allclose(table.sum(axis=1), 1.0)
    fig, ax = plt.subplots()
    assert wd.pl.fates(labels_only, cluster_key="clusters", ax=ax) is ax
    plt.close("all")


def test_perturbation_bars_and_significance(adata):
    ax = wd.pl.perturbation(adata, show=False)
    assert len(ax.patches) == 6  # 3 genes x 2 fates
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Gata1", "Spi1", "noise_1"]
    assert sum(t.get_text() == "*" for t in ax.texts) == 4  # Gata1 and Spi1, both fates
    ax2 = wd.pl.perturbation(adata.uns["lsd_perturb"]["results"], kind="heatmap", n_genes=2, show=False)
    assert [t.get_text() for t in ax2.get_yticklabels()] == ["Gata1", "Spi1"]
    assert sum(t.get_text() == "*" for t in ax2.texts) == 4
    plt.close("all")


def test_perturbation_results_survive_h5ad(adata, tmp_path):
    adata.write_h5ad(tmp_path / "p.h5ad")
    back = ad.read_h5ad(tmp_path / "p.h5ad")
    ax = wd.pl.perturbation(back, show=False)
    assert len(ax.patches) == 6
    plt.close("all")


def test_history_one_panel_per_metric_with_train_and_val_together(adata):
    axes = wd.pl.history(adata, "lsd", show=False)
    titles = [a.get_title() for a in axes]
    assert titles == ["loss", "potential_metric", "elbo"]
    assert [len(a.get_lines()) for a in axes] == [1, 1, 2]
    assert axes[0].get_yscale() == "log" and axes[1].get_yscale() == "linear"
    assert axes[0].get_xlabel() == "epoch"
    np.testing.assert_allclose(axes[0].get_lines()[0].get_xdata(), np.arange(20))


def test_history_for_pseudodynamics_and_plain_dict(adata):
    axes = wd.pl.history(adata, "pd", show=False)
    assert len(axes) == 1 and axes[0].get_xlabel() == "step"
    fig, ax = plt.subplots()
    wd.pl.history({"a": [1, 2, 3], "b": [3, 2, 1]}, ax=ax)
    assert len(ax.get_lines()) == 2 and ax.get_yscale() == "linear"
    fig, ax = plt.subplots()
    wd.pl.history({"a": [1, 2, 3], "b": [3, 2, 1]}, ax=ax, logy=True)
    assert ax.get_yscale() == "log"
    with pytest.raises(KeyError, match="history.*wd.tl.lsd"):
        wd.pl.history(AnnData(np.zeros((2, 2), dtype=np.float32)), "lsd", show=False)
    plt.close("all")
