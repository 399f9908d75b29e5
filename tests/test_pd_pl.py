"""wd.pl.pseudodynamics / pseudodynamics_fields / population_fit draw what the slots hold (Agg backend)."""

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest

import waddington as wd


@pytest.fixture(scope="module")
def fitted2d():
    rng = np.random.default_rng(0)
    times = np.array([0.0, 1.0, 2.0])
    n = 40
    X = np.concatenate([rng.normal([0.5 * t, 0.1 * t], 0.2, (n, 2)) for t in times])
    a = ad.AnnData(np.zeros((X.shape[0], 1), dtype=np.float32))
    a.obs["day"] = np.repeat(times, n)
    a.obs["pt"] = X[:, 0]
    a.obs["true_g"] = 0.5
    a.obsm["X_state"] = X
    a.obsm["X_umap"] = X[:, ::-1]
    a.uns["pop"] = {"t": times, "mean": [100.0, 160.0, 250.0], "std": [5.0, 6.0, 7.0], "n_lib": [3, 3, 3]}
    wd.tl.pseudodynamics(
        a,
        time_key="day",
        state_key="X_state",
        max_epochs=1,
        steps_per_epoch=2,
        pretrain_steps=5,
        batch_size=40,
        hidden=(8,),
        progress_bar=False,
    )
    return a


def test_fields_on_embedding_one_panel_per_field_and_time(fitted2d):
    fig = wd.pl.pseudodynamics(fitted2d, fields=["growth", "speed"], times=[0, 2], show=False, return_fig=True)
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(axes) == 4
    assert axes[0].get_title() == "growth g at 0" and axes[3].get_title() == "|v| at 2"
    # the coloured layer of panel (growth, t=0) holds the day-0 cells with their growth at day 0
    coloured = axes[0].collections[1]
    values = fitted2d.obsm["pd_growth_by_time"]["0"].to_numpy()[fitted2d.obs["day"].to_numpy() == 0]
    np.testing.assert_allclose(np.asarray(coloured.get_array()), values)
    plt.close(fig)
    fig = wd.pl.pseudodynamics(fitted2d, basis="umap", fields=["diffusion"], show=False, return_fig=True)
    assert len([ax for ax in fig.axes if ax.get_label() != "<colorbar>"]) == 3
    plt.close(fig)
    with pytest.raises(ValueError, match="was not fitted"):
        wd.pl.pseudodynamics(fitted2d, times=[7], show=False)


def test_fields_along_pseudotime_draw_median_band_and_truth(fitted2d):
    fig = wd.pl.pseudodynamics_fields(
        fitted2d, "pt", fields=["growth", "speed"], n_bins=5, truth={"growth": "true_g"}, show=False, return_fig=True
    )
    ax_g, ax_v = fig.axes
    median_line, truth_line = ax_g.lines
    assert len(median_line.get_xdata()) == 5
    np.testing.assert_allclose(truth_line.get_ydata(), 0.5)
    assert len(ax_g.collections) == 1  # the quantile band
    speed = np.linalg.norm(fitted2d.obsm["pd_velocity"], axis=1)
    assert ax_v.lines[0].get_ydata().max() <= speed.max() + 1e-12
    plt.close(fig)
    with pytest.raises(KeyError, match="nope"):
        wd.pl.pseudodynamics_fields(fitted2d, "nope", show=False)


def test_population_fit_draws_observed_fitted_and_implied(fitted2d):
    fig, ax = plt.subplots()
    out = wd.pl.population_fit(fitted2d, ax=ax, truth=[100.0, 160.0, 250.0], show=False)
    assert out is ax
    pop = fitted2d.uns["pseudodynamics"]["population"]
    labels = [line.get_label() for line in ax.lines]
    assert "fitted ∫u ds" in labels and "implied by g" in labels and "truth" in labels
    fitted_line = ax.lines[labels.index("fitted ∫u ds")]
    np.testing.assert_allclose(fitted_line.get_ydata(), pop["fitted_grid"])
    assert ax.get_yscale() == "log"
    plt.close(fig)


def test_plots_without_results_name_the_missing_slot():
    a = ad.AnnData(np.zeros((3, 1), dtype=np.float32))
    with pytest.raises(KeyError, match="wd.tl.pseudodynamics"):
        wd.pl.population_fit(a, show=False)
    with pytest.raises(KeyError, match="wd.tl.pseudodynamics"):
        wd.pl.pseudodynamics(a, show=False)
