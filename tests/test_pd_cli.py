"""`waddington pseudodynamics` reads an h5ad, fits, writes every slot; bad input gives a one-line error."""

import anndata as ad
import numpy as np

from waddington.cli import main


def _write_small(path, with_pop=True):
    rng = np.random.default_rng(0)
    times = np.array([0.0, 1.0, 2.0])
    X = np.concatenate([rng.normal([0.3 * t, 0.0], 0.2, (30, 2)) for t in times])
    a = ad.AnnData(np.zeros((90, 1), dtype=np.float32))
    a.obs["day"] = np.repeat(times, 30)
    a.obsm["X_diffmap"] = X
    if with_pop:
        a.uns["pop"] = {"t": times, "mean": np.array([100.0, 150.0, 220.0]), "std": np.ones(3), "n_lib": np.ones(3)}
    a.write_h5ad(path)


def test_pseudodynamics_command_writes_the_results(tmp_path):
    src, out = tmp_path / "in.h5ad", tmp_path / "out.h5ad"
    _write_small(src)
    status = main(
        [
            "-q",
            "pseudodynamics",
            str(src),
            "-o",
            str(out),
            "--time-key",
            "day",
            "--state-key",
            "X_diffmap",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "2",
            "--batch-size",
            "30",
            "--no-progress",
            "--residual-mode",
            "ginv",
        ]
    )
    assert status == 0
    back = ad.read_h5ad(out)
    assert back.obsm["pd_velocity"].shape == (90, 2)
    assert back.uns["pseudodynamics"]["params"]["residual_mode"] == "ginv"


def test_pseudodynamics_command_reports_missing_population_in_one_line(tmp_path, capsys):
    src = tmp_path / "in.h5ad"
    _write_small(src, with_pop=False)
    status = main(
        ["pseudodynamics", str(src), "-o", str(tmp_path / "o.h5ad"), "--time-key", "day", "--state-key", "X_diffmap"]
    )
    err = capsys.readouterr().err
    assert status == 2 and "uns" in err and "'pop'" in err and len(err.strip().splitlines()) == 1


def test_pseudodynamics_command_passes_any_keyword_with_set(tmp_path, capsys):
    src, out = tmp_path / "in.h5ad", tmp_path / "out.h5ad"
    _write_small(src)
    base = ["-q", "pseudodynamics", str(src), "-o", str(out), "--time-key", "day", "--state-key", "X_diffmap"]
    fast = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "30", "--no-progress"]
    status = main(
        [*base, *fast, "--pretrain-steps", "7", "--key-added", "pd_run", "--set", "hidden=(8,)"]
        + ["--set", "d_clip=(0.001, 1.0)", "--set", "d_penalty_mode=legacy"]
    )
    assert status == 0
    params = ad.read_h5ad(out).uns["pd_run"]["params"]
    assert params["pretrain_steps"] == 7 and list(params["hidden"]) == [8]
    assert list(params["d_clip"]) == [0.001, 1.0] and params["d_penalty_mode"] == "legacy"
    status = main([*base, *fast, "--set", "epochs=3"])
    err = capsys.readouterr().err
    assert status == 2 and "--set epochs" in err and "max_epochs" in err and len(err.strip().splitlines()) == 1
    status = main([*base, *fast, "--set", "hidden"])
    assert status == 2 and "NAME=VALUE" in capsys.readouterr().err
