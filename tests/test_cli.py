import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from waddington.cli import build_parser, main


def test_simulate_toggle_switch_writes_a_readable_file_with_every_slot(tmp_path):
    out = tmp_path / "x.h5ad"
    assert main(["-q", "simulate", "toggle-switch", "-o", str(out), "--n-cells", "300", "--n-genes", "100"]) == 0
    adata = ad.read_h5ad(out)
    assert adata.shape == (300, 100)
    for key in ("true_time", "true_fate", "librarysize", "clusters", "dpt_pseudotime"):
        assert key in adata.obs, key
    for key in ("X_pca", "X_umap"):
        assert key in adata.obsm, key
    assert {"connectivities", "distances"} <= set(adata.obsp.keys())
    assert sp.issparse(adata.layers["raw"])
    assert np.issubdtype(adata.layers["raw"].dtype, np.integer)
    assert "truth" in adata.uns


@pytest.mark.parametrize("model", ["population-1d", "population-branching"])
def test_simulate_population_models(tmp_path, model):
    out = tmp_path / "pop.h5ad"
    assert main(["-q", "simulate", model, "-o", str(out), "--n-cells-per-time", "50"]) == 0
    adata = ad.read_h5ad(out)
    assert {"day", "true_g", "true_D"} <= set(adata.obs.columns)
    assert {"X_state", "true_v"} <= set(adata.obsm.keys())
    assert set(adata.uns["pop"]) >= {"t", "mean", "std", "n_lib"}


def test_unwritable_output_gives_one_line_error(tmp_path, capsys):
    status = main(["simulate", "population-1d", "-o", str(tmp_path / "missing" / "x.h5ad")])
    err = capsys.readouterr().err
    assert status == 2
    assert "does not exist" in err and len(err.strip().splitlines()) == 1


def test_output_directory_is_rejected(tmp_path, capsys):
    assert main(["simulate", "population-1d", "-o", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_option_of_another_simulator_is_rejected(tmp_path, capsys):
    assert main(["simulate", "population-1d", "-o", str(tmp_path / "x.h5ad"), "--n-genes", "10"]) == 2
    assert "apply to toggle-switch" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "no-such-model", "-o", "x.h5ad"],
        ["simulate", "toggle-switch"],
        ["simulate", "toggle-switch", "-o", "x.h5ad", "--n-cells", "-3"],
        ["no-such-command"],
    ],
)
def test_bad_arguments_exit_non_zero(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_every_subcommand_has_help():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert "simulate" in commands
    for args in (["--help"], *([name, "--help"] for name in commands)):
        result = subprocess.run(
            [sys.executable, "-m", "waddington.cli", *args], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
        assert "usage: waddington" in result.stdout


def test_console_script_is_installed():
    result = subprocess.run(["waddington", "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.startswith("waddington ")
