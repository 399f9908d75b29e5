"""In-silico knockouts on a trained LSD landscape, checked against the toggle switch's simulated knockouts."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import waddington as wd


def shift(df, gene, fate_cluster):
    row = df[(df["gene"] == gene) & (df["fate"] == fate_cluster)].iloc[0]
    return row["delta_fraction"], bool(row["significant"]), row["pval_adj"]


def true_shift(adata, knockout, fate):
    ff = adata.uns["truth"]["fate_fractions"]
    return ff[f"{knockout}_knockout"][fate] - ff["wild_type"][fate]


@pytest.fixture(scope="module")
def screen(toggle_lsd):
    adata, terminal = toggle_lsd()
    genes = ["Gata1", "Spi1", "Noise_1", "Noise_2"]
    df = wd.tl.lsd_perturb(
        adata, genes, cluster_key="clusters", terminal_states=list(terminal.values()), groups=["True"],
        group_key="is_progenitor", progress_bar=False,
    )  # fmt: skip
    return adata, terminal, df


def test_results_table_is_tidy_and_stored(screen):
    adata, terminal, df = screen
    assert len(df) == 4 * 2
    assert {"gene", "fate", "count_perturbed", "count_unperturbed", "fraction_perturbed", "fraction_unperturbed",
            "log2fc", "pval", "pval_adj", "significant"} <= set(df.columns)  # fmt: skip
    n_prog = int((adata.obs["is_progenitor"] == "True").sum())
    assert (df["n_cells"] == n_prog).all()
    # every start cell ends in exactly one fate in each arm
    for _, g in df.groupby("gene"):
        assert g["count_perturbed"].sum() == n_prog and g["count_unperturbed"].sum() == n_prog
    row = df.iloc[0]
    assert row["log2fc"] == pytest.approx(np.log2((row["count_perturbed"] + 1) / (row["count_unperturbed"] + 1)))
    assert ((df["pval_adj"] >= df["pval"]) & (df["pval_adj"] <= 1)).all()
    stored = adata.uns["lsd_perturb"]
    pd.testing.assert_frame_equal(stored["results"], df)
    assert stored["params"]["genes"] == ["Gata1", "Spi1", "Noise_1", "Noise_2"]


def test_gata1_knockout_shifts_towards_myeloid_and_noise_does_not(screen):
    adata, terminal, df = screen
    d_mye, sig, _ = shift(df, "Gata1", terminal["Mye"])
    assert d_mye > 0 and sig
    assert d_mye >= 0.25 * true_shift(adata, "Gata1", "Mye")
    d_spi, _, _ = shift(df, "Spi1", terminal["Ery"])
    assert d_spi >= 0  # the small model under-fits Spi1; the full-size test asks for half the true shift
    for noise in ("Noise_1", "Noise_2"):
        assert not shift(df, noise, terminal["Ery"])[1]


def test_results_survive_h5ad_and_plot(screen, tmp_path):
    import matplotlib.pyplot as plt

    adata, _, df = screen
    adata.write_h5ad(tmp_path / "p.h5ad")
    back = ad.read_h5ad(tmp_path / "p.h5ad")
    pd.testing.assert_frame_equal(back.uns["lsd_perturb"]["results"], df, check_dtype=False)
    ax = wd.pl.perturbation(back, show=False)
    assert len(ax.patches) == 8
    plt.close("all")


def test_same_seed_same_result_and_start_groups(screen):
    adata, terminal, _ = screen
    kw = {"cluster_key": "clusters", "terminal_states": list(terminal.values()), "progress_bar": False}
    a = wd.tl.lsd_perturb(adata, "Gata1", stochastic=True, n_samples=3, n_rounds=3, random_state=1, key_added="a", **kw)
    uns_before = set(adata.uns)
    b = wd.tl.lsd_perturb(
        adata, "Gata1", stochastic=True, n_samples=3, n_rounds=3, random_state=1, key_added="b", inplace=False, **kw
    )
    pd.testing.assert_frame_equal(a, b)
    assert set(adata.uns) == uns_before  # inplace=False returns the table only
    one = wd.tl.lsd_perturb(adata, "Gata1", groups=[terminal["Ery"]], n_rounds=3, key_added="c", **kw)
    assert one["n_cells"].iloc[0] == int((adata.obs["clusters"] == terminal["Ery"]).sum())


def test_errors_name_the_problem(screen):
    adata, terminal, _ = screen
    with pytest.raises(KeyError, match="NotAGene"):
        wd.tl.lsd_perturb(adata, "NotAGene", cluster_key="clusters", progress_bar=False)
    with pytest.raises(ValueError, match="groups"):
        wd.tl.lsd_perturb(adata, "Gata1", cluster_key="clusters", groups=["nope"], progress_bar=False)
    with pytest.raises(ValueError, match="duplicates"):
        wd.tl.lsd_perturb(adata, ["Gata1", "Gata1"], cluster_key="clusters", progress_bar=False)


@pytest.mark.slow
def test_knockout_targets_full_size(toggle_lsd):
    """Toggle-switch defaults: each master regulator's knockout shifts fates by >= half the true shift."""
    medium = {"x_encoder": [128, 64], "z_decoder": [64, 128], "xl_encoder": [32], "z_encoder": [32], "B_decoder": [32]}
    adata, terminal = toggle_lsd(n_cells=2000, n_genes=500, n_epochs=30, n_walks=2048, layer_dims=medium)
    noise = list(adata.uns["truth"]["noise_genes"][:20])
    df = wd.tl.lsd_perturb(
        adata, ["Gata1", "Spi1", *noise], cluster_key="clusters", terminal_states=list(terminal.values()),
        groups=["True"], group_key="is_progenitor", progress_bar=False,
    )  # fmt: skip
    for gene, fate in (("Gata1", "Mye"), ("Spi1", "Ery")):
        d, sig, _ = shift(df, gene, terminal[fate])
        assert sig and d >= 0.5 * true_shift(adata, gene, fate), (gene, d)
    # uninformative genes: most are not significant
    sig_noise = df[df["gene"].isin(noise) & (df["fate"] == terminal["Ery"])]["significant"]
    assert sig_noise.mean() <= 0.25
