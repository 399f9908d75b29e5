import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from waddington.cli import main


@pytest.fixture(scope="module")
def small_h5ad(tmp_path_factory):
    import scanpy as sc

    rng = np.random.default_rng(0)
    n, g = 120, 15
    t = np.sort(rng.random(n))
    logmu = rng.normal(-2.5, 0.5, g) + np.outer(t, rng.normal(0, 2, g))
    p = np.exp(logmu)
    p /= p.sum(1, keepdims=True)
    counts = rng.poisson(p * 1000)
    adata = ad.AnnData(sp.csr_matrix(counts.astype(np.float32)))
    adata.layers["raw"] = sp.csr_matrix(counts)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=5)
    sc.pp.neighbors(adata, n_neighbors=8)
    adata.obs["pt"] = t
    path = tmp_path_factory.mktemp("cli") / "in.h5ad"
    adata.write_h5ad(path)
    return path


def test_lsd_help_lists_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["lsd", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--time-key", "--epochs", "--walks", "--transition-beta", "-o"):
        assert opt in text


def test_lsd_command_writes_landscape(small_h5ad, tmp_path):
    out = tmp_path / "out.h5ad"
    args = [str(small_h5ad), "-o", str(out), "--time-key", "pt", "--epochs", "1", "--walks", "64"]
    rc = main(["-q", "lsd", *args, "--walk-length", "4", "--batch-size", "32", "--z-dim", "3", "--no-progress"])
    assert rc == 0
    res = ad.read_h5ad(out)
    assert res.obsm["X_lsd_cell_state"].shape == (120, 3)
    assert "lsd_potential" in res.obs and "lsd_transitions" in res.obsp and "lsd_prior_transitions" in res.obsp
    assert res.uns["lsd"]["params"]["n_walks"] == 64
    # any other keyword of wd.tl.lsd through --set; an unknown one is a one-line error
    rc = main(["-q", "lsd", *args, "--walk-length", "4", "--no-progress", "--set", "entropy_n_states=3"])
    assert rc == 0 and ad.read_h5ad(out).uns["lsd"]["params"]["entropy_n_states"] == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["missing.h5ad", "-o", "x.h5ad", "--time-key", "pt"], "does not exist"),
        (["IN", "-o", "x.h5ad"], "--time-key"),
        (["IN", "-o", "x.h5ad", "--time-key", "nope"], "'nope'"),
        (["IN", "-o", "nodir/x.h5ad", "--time-key", "pt"], "does not exist"),
        (["IN", "-o", "x.h5ad", "--time-key", "pt", "--layer", "counts"], "counts"),
        (["IN", "-o", "x.h5ad", "--time-key", "pt", "--set", "n_epoch=2"], "no such option"),
    ],
)
def test_lsd_command_bad_input_is_one_line_error(small_h5ad, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    argv = [str(small_h5ad) if a == "IN" else a for a in argv]
    rc = main(["-q", "lsd", *argv, "--epochs", "1", "--walks", "32", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("waddington lsd: error:") and message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "x.h5ad").exists()


def test_lsd_command_rejects_bad_numbers(small_h5ad, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["lsd", str(small_h5ad), "-o", "x.h5ad", "--epochs", "0"])
    assert exc.value.code == 2
    assert "positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["lsd", str(small_h5ad), "-o", "x.h5ad", "--time-key", "pt", "--phylogeny", "{Prog: Ery"])
    assert exc.value.code == 2
    assert "expected JSON" in capsys.readouterr().err


def test_lsd_command_phylogeny_builds_a_masked_prior(small_h5ad, tmp_path):
    src, out = tmp_path / "in.h5ad", tmp_path / "out.h5ad"
    a = ad.read_h5ad(small_h5ad)
    a.obs["stage"] = np.where(a.obs["pt"] < 0.5, "early", "late")
    a.write_h5ad(src)
    args = [str(src), "-o", str(out), "--time-key", "pt", "--epochs", "1", "--walks", "32", "--walk-length", "3"]
    phylogeny = '{"early": ["late"], "late": []}'
    rc = main(["-q", "lsd", *args, "--cluster-key", "stage", "--phylogeny", phylogeny, "--transition-beta", "0"])
    assert rc == 0
    res = ad.read_h5ad(out)
    prior = res.obsp["lsd_prior_transitions"].tocoo()
    late = res.obs["stage"].to_numpy() == "late"
    assert not (late[prior.row] & ~late[prior.col] & (prior.data > 0)).any()  # no step from late back to early
    assert res.uns["lsd"]["params"]["transition_beta"] == 0.0


def test_demo_writes_report_figures_and_data(tmp_path):
    out = tmp_path / "demo"
    rc = main(["-q", "demo", "--out", str(out), "--n-cells", "200", "--epochs", "1", "--no-progress"])
    assert rc == 0
    figures = ["lsd_umap", "lsd_history", "lsd_streamlines", "lsd_landscape", "lsd_fates", "lsd_perturbation"]
    for name in ["report.md", "demo.h5ad", *(f"{f}.png" for f in figures)]:
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "Spearman(potential, −true time)" in report
    assert "fate accuracy, all cells" in report
    for gene in ("Gata1", "Spi1"):
        assert f"| {gene} |" in report
    res = ad.read_h5ad(out / "demo.h5ad")
    assert "lsd_potential" in res.obs
    assert "lsd_fate" in res.obs and "lsd_fate_probabilities" in res.obsm
    ko = res.uns["lsd_perturb"]["results"]
    assert {"Gata1", "Spi1"} <= set(ko["gene"])


def test_demo_bad_out_is_an_error(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["demo", "--out", str(f)]) == 2
    assert "not a directory" in capsys.readouterr().err
