"""wd.tl.pseudodynamics / pseudodynamics_predict: slots, signs, mass scaling, round trip, determinism, bad input."""

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import waddington as wd

FAST = {
    "max_epochs": 2,
    "steps_per_epoch": 3,
    "pretrain_steps": 30,
    "batch_size": 40,
    "hidden": (16, 16),
    "progress_bar": False,
}


def _small_1d(n=60, seed=0):
    """Cells drifting right and growing: two clouds per time point in 1-D, population doubling per day."""
    rng = np.random.default_rng(seed)
    times = np.array([0.0, 1.0, 2.0])
    X = np.concatenate([rng.normal(0.2 + 0.2 * t, 0.05, n) for t in times])[:, None]
    adata = ad.AnnData(np.zeros((X.shape[0], 1), dtype=np.float32))
    adata.obs["day"] = np.repeat(times, n)
    adata.obsm["X_state"] = X
    adata.uns["pop"] = {"t": times, "mean": 100.0 * 2.0**times, "std": 5.0 * np.ones(3), "n_lib": 3 * np.ones(3)}
    return adata


@pytest.fixture(scope="module")
def fitted():
    torch.set_num_threads(1)
    adata = _small_1d()
    wd.tl.pseudodynamics(adata, time_key="day", state_key="X_state", random_state=0, **FAST)
    return adata


def test_pseudodynamics_writes_every_slot(fitted):
    a = fitted
    n = a.n_obs
    for key in ("pd_growth", "pd_diffusion", "pd_density", "pd_divergence"):
        assert key in a.obs and np.isfinite(a.obs[key]).all(), key
    assert a.obsm["pd_velocity"].shape == (n, 1)
    for name in ("growth", "diffusion", "density", "speed", "divergence"):
        table = a.obsm[f"pd_{name}_by_time"]
        assert isinstance(table, pd.DataFrame) and table.shape == (n, 3)
        assert list(table.columns) == ["0", "1", "2"]
    assert set(a.obs["pd_split"].unique()) == {"train", "val"}
    uns = a.uns["pseudodynamics"]
    params = uns["params"]
    assert params["state_key"] == "X_state" and params["n_dims"] == 1 and params["time_key"] == "day"
    assert params["growth_loss_mode"] == "logratio" and params["residual_mode"] == "raw"
    assert {"architecture", "weights"} <= set(uns["model"])
    assert len(uns["history"]["train_loss"]) == 2 and len(uns["history"]["val_loss"]) == 2
    assert uns["population"]["fitted"].shape == (3,)
    # own-time columns equal the per-time table at each cell's time
    own = a.obsm["pd_growth_by_time"].to_numpy()[np.arange(n), np.repeat([0, 1, 2], 60)]
    np.testing.assert_allclose(a.obs["pd_growth"], own)


def test_growth_warm_start_gives_the_population_rate_and_diffusion_is_positive(fitted):
    # g starts at log(N_T/N_0)/(t_T - t_0) = log 2 per day; a few steps keep it near that value
    assert abs(np.median(fitted.obs["pd_growth"]) - np.log(2.0)) < 0.35
    assert (fitted.obs["pd_diffusion"] > 0).all()


def test_observed_density_is_scaled_to_the_population_size():
    from waddington.models.pseudodynamics import observed_log_density

    adata = _small_1d(n=200)
    X = adata.obsm["X_state"]
    ti = np.repeat([0, 1, 2], 200)
    pop = adata.uns["pop"]["mean"]
    grid = np.linspace(-0.5, 1.5, 4001)[:, None]
    log_u, _ = observed_log_density(np.r_[X, grid], np.r_[ti, -np.ones(len(grid), int)], pop)
    integral = np.trapezoid(np.exp(log_u[:, len(X) :]), grid[:, 0], axis=1)
    np.testing.assert_allclose(integral, pop, rtol=1e-3)


def test_fitted_density_at_cells_is_in_absolute_units(fitted):
    # pd_density integrates to N(t): at the first time point its cell average over p̂ is N_0 × E[p̂] — order 100s
    dens = fitted.obs["pd_density"][fitted.obs["day"] == 0].median()
    assert 100 < dens < 100 * 20


def test_same_seed_is_bit_identical_and_predict_survives_h5ad_round_trip(fitted, tmp_path):
    again = _small_1d()
    wd.tl.pseudodynamics(again, time_key="day", state_key="X_state", random_state=0, **FAST)
    np.testing.assert_array_equal(again.obs["pd_growth"].to_numpy(), fitted.obs["pd_growth"].to_numpy())
    np.testing.assert_array_equal(again.obsm["pd_velocity"], fitted.obsm["pd_velocity"])
    path = tmp_path / "pd.h5ad"
    fitted.write_h5ad(path)
    back = ad.read_h5ad(path)
    pred = wd.tl.pseudodynamics_predict(back, times=[0.0, 0.5, 2.0])
    assert pred["growth"].shape == (back.n_obs, 3) and pred["velocity"].shape == (back.n_obs, 3, 1)
    np.testing.assert_allclose(pred["growth"][:, 0], fitted.obsm["pd_growth_by_time"]["0"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred["density"][:, 2], fitted.obsm["pd_density_by_time"]["2"], rtol=1e-4)
    states = np.array([[0.1], [0.5]])
    assert wd.tl.pseudodynamics_predict(back, times=[1.0], states=states)["speed"].shape == (2, 1)


def test_split_is_reused_and_copy_leaves_input_untouched(fitted):
    a = _small_1d()
    a.obs["pd_split"] = fitted.obs["pd_split"].to_numpy()
    out = wd.tl.pseudodynamics(a, time_key="day", state_key="X_state", copy=True, **FAST)
    assert "pd_growth" not in a.obs and "pseudodynamics" not in a.uns
    assert (out.obs["pd_split"].astype(str) == fitted.obs["pd_split"].astype(str)).all()


@pytest.mark.parametrize(
    "options",
    [
        {
            "residual_mode": "ginv",
            "growth_loss_mode": "massbalance",
            "growth_pop_ref": "cellsum",
            "density_estimator": "gmm",
        },
        {
            "residual_mode": "rcg",
            "rcg_warmup_steps": 2,
            "cfm_unbalanced_reg_m": 1.0,
            "d_penalty_mode": "legacy",
            "d_var_weight": 0.1,
            "ode_form": "linear",
            "growth_loss_mode": "legacy",
            "g_init_rate": None,
        },
        {
            "cfm_weight": 0.0,
            "time_dependent": False,
            "d_positive": False,
            "d_clip": (-0.01, 0.01),
            "divergence": "hutchinson",
            "cfm_loops": 2,
            "bw": 0.5,
            "zero_growth": True,
        },
    ],
)
def test_every_training_option_runs_and_is_stored(options):
    a = _small_1d(n=40)
    wd.tl.pseudodynamics(a, time_key="day", state_key="X_state", **{**FAST, "max_epochs": 1}, **options)
    params = a.uns["pseudodynamics"]["params"]
    for key, value in options.items():
        stored = params[key]
        expected = "None" if value is None else (list(value) if isinstance(value, tuple) else value)
        assert (list(stored) if isinstance(stored, np.ndarray) else stored) == expected, key
    assert np.isfinite(a.obs["pd_growth"]).all()
    if options.get("zero_growth"):
        assert (a.obs["pd_growth"] == 0).all()


def test_config_object_is_accepted_and_keywords_override_it():
    from waddington.models.pseudodynamics import PseudodynamicsConfig

    a = _small_1d(n=40)
    cfg = PseudodynamicsConfig(
        residual_mode="ginv", max_epochs=1, steps_per_epoch=2, pretrain_steps=5, batch_size=40, hidden=(8,)
    )
    wd.tl.pseudodynamics(a, time_key="day", state_key="X_state", config=cfg, growth_weight=3.0, progress_bar=False)
    params = a.uns["pseudodynamics"]["params"]
    assert params["residual_mode"] == "ginv" and params["growth_weight"] == 3.0 and list(params["hidden"]) == [8]


def test_displacement_points_to_later_cells():
    from waddington.tl._pseudodynamics import _knn_graph, knn_displacement, smoothed_time_pseudotime

    a = _small_1d(n=80)
    X = a.obsm["X_state"]
    graph = _knn_graph(X, 10)
    pt = smoothed_time_pseudotime(graph, a.obs["day"].to_numpy())
    dx = knn_displacement(X, graph, pt)
    assert (dx[:, 0] >= 0).mean() > 0.9


# ------------------------------------------------------------------------------------------------ bad input
def _call(a, **kw):
    wd.tl.pseudodynamics(a, time_key="day", state_key="X_state", **{**FAST, **kw})


def _unchanged(a, ref):
    assert set(a.obs.columns) == set(ref.obs.columns) and set(a.obsm) == set(ref.obsm) and set(a.uns) == set(ref.uns)


def test_missing_population_table_names_the_slot():
    a = _small_1d(n=20)
    del a.uns["pop"]
    ref = a.copy()
    with pytest.raises(KeyError, match=r"uns.*'pop'.*population=None"):
        _call(a)
    _unchanged(a, ref)


def test_population_table_with_unequal_lengths_or_missing_mean_is_rejected():
    a = _small_1d(n=20)
    a.uns["pop"] = {"t": [0.0, 1.0, 2.0], "mean": [1.0, 2.0]}
    with pytest.raises(ValueError, match="equal length"):
        _call(a)
    a.uns["pop"] = {"t": [0.0, 1.0, 2.0], "std": [1.0, 2.0, 3.0]}
    with pytest.raises(KeyError, match="'mean'"):
        _call(a)
    assert "pd_growth" not in a.obs


def test_time_not_in_population_table_is_rejected():
    a = _small_1d(n=20)
    a.uns["pop"] = pd.DataFrame({"t": [0.0, 1.0], "mean": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"time point\(s\) \[2.0\].*not in adata.uns\['pop'\]\['t'\]"):
        _call(a)
    assert "pd_split" not in a.obs


def test_single_time_point_is_rejected():
    a = _small_1d(n=20)
    a = a[a.obs["day"] == 0].copy()
    with pytest.raises(ValueError, match="single time point"):
        _call(a)


def test_nan_states_are_rejected():
    a = _small_1d(n=20)
    a.obsm["X_state"][3, 0] = np.nan
    with pytest.raises(ValueError, match=r"obsm\['X_state'\].*non-finite"):
        _call(a)
    assert "pd_split" not in a.obs


def test_n_dims_larger_than_embedding_is_rejected():
    a = _small_1d(n=20)
    with pytest.raises(ValueError, match=r"n_dims=3.*1 column"):
        _call(a, n_dims=3)


def test_population_none_falls_back_to_cell_numbers(caplog):
    a = _small_1d(n=30)
    del a.uns["pop"]
    with caplog.at_level("WARNING", logger="waddington"):
        _call(a, population=None, max_epochs=1)
    assert "sequenced cells" in caplog.text
    assert "pd_growth" in a.obs


def test_dataframe_population_table_without_times_is_refused_not_matched_by_row():
    # a read_csv table: a default 0, 1, 2 index that must not be taken for the times
    a = _small_1d(n=20)
    a.uns["pop"] = pd.DataFrame({"day_label": ["d2", "d1", "d0"], "mean": [400.0, 200.0, 100.0]})
    ref = a.copy()
    with pytest.raises(KeyError, match=r"without a 't' column.*set_index"):
        _call(a)
    _unchanged(a, ref)


@pytest.mark.parametrize("layout", ["time_key column", "named index"])
def test_population_table_times_from_a_time_key_column_or_index(layout):
    a = _small_1d(n=20)
    df = pd.DataFrame({"day": [2.0, 1.0, 0.0], "mean": [400.0, 200.0, 100.0]})
    a.uns["pop"] = df if layout == "time_key column" else df.set_index("day")
    _call(a, max_epochs=1)
    pop = a.uns["pseudodynamics"]["population"]
    np.testing.assert_array_equal(pop["t"], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(pop["observed_mean"], [100.0, 200.0, 400.0])


def test_float32_times_match_a_float64_table():
    a = _small_1d(n=20)
    times = np.array([0.0, 1.1, 2.3])
    a.obs["day"] = np.repeat(times, 20).astype(np.float32)
    a.uns["pop"] = {"t": times, "mean": [100.0, 210.0, 460.0]}
    _call(a, max_epochs=1)
    np.testing.assert_array_equal(a.uns["pseudodynamics"]["params"]["times"], times)


@pytest.mark.parametrize("kind", ["categorical numbers", "strings of numbers"])
def test_categorical_or_string_times_of_numbers_are_accepted(kind):
    a = _small_1d(n=20)
    day = a.obs["day"].astype(int).astype(str)
    a.obs["day"] = pd.Categorical(a.obs["day"].astype(int)) if kind == "categorical numbers" else day.to_numpy()
    _call(a, max_epochs=1)
    assert a.obs["pd_growth"].notna().all()
    np.testing.assert_array_equal(a.uns["pseudodynamics"]["params"]["times"], [0.0, 1.0, 2.0])


def test_time_labels_that_are_not_numbers_get_an_error_with_the_fix():
    a = _small_1d(n=20)
    a.obs["day"] = pd.Categorical("day" + a.obs["day"].astype(int).astype(str))
    ref = a.copy()
    with pytest.raises(TypeError, match=r"obs\['day'\] must hold numeric times, found 'day0'.*str.extract"):
        _call(a)
    _unchanged(a, ref)


def test_constant_state_column_is_named():
    a = _small_1d(n=20)
    a.obsm["X_state"] = np.c_[a.obsm["X_state"], np.ones(a.n_obs)]
    with pytest.raises(ValueError, match=r"obsm\['X_state'\] column\(s\) \[1\] are constant"):
        _call(a)


def test_non_finite_dpt_used_by_default_names_the_way_out():
    a = _small_1d(n=20)
    a.obs["dpt_pseudotime"] = np.linspace(0, 1, a.n_obs)
    a.obs.loc[a.obs_names[0], "dpt_pseudotime"] = np.inf  # scanpy's value for a disconnected cell
    with pytest.raises(ValueError, match=r"dpt_pseudotime.*non-finite.*pseudotime_key=.*deltax_weight=0"):
        _call(a)


def test_random_state_none_draws_and_records_a_seed():
    a = _small_1d(n=20)
    _call(a, max_epochs=1, random_state=None)
    seed = a.uns["pseudodynamics"]["params"]["random_state"]
    b = _small_1d(n=20)
    _call(b, max_epochs=1, random_state=int(seed))
    np.testing.assert_array_equal(a.obs["pd_growth"], b.obs["pd_growth"])


def test_stored_params_can_be_passed_back_as_config(tmp_path):
    a = _small_1d(n=20)
    _call(a, max_epochs=1, d_clip=(1e-3, 1.0), residual_mode="ginv", cfm_unbalanced_reg_m=None)
    a.write_h5ad(tmp_path / "a.h5ad")
    params = ad.read_h5ad(tmp_path / "a.h5ad").uns["pseudodynamics"]["params"]
    b = _small_1d(n=20)
    wd.tl.pseudodynamics(b, time_key="day", state_key="X_state", config=params)
    np.testing.assert_array_equal(a.obs["pd_growth"], b.obs["pd_growth"])
    assert b.uns["pseudodynamics"]["params"]["residual_mode"] == "ginv"


def test_per_time_tables_keep_close_time_points_apart():
    from waddington.tl._pseudodynamics import _time_labels

    assert _time_labels(np.array([0.0, 1.0, 2.5])) == ["0", "1", "2.5"]
    labels = _time_labels(np.array([1_000_000.0, 1_000_001.0]))
    assert labels == ["1000000", "1000001"]


def test_strategy_reaches_lightning_and_is_recorded():
    a = _small_1d(n=20)
    with pytest.raises(ValueError, match="invalid strategy name"):
        _call(a, strategy="bogus")
    assert "pd_split" not in a.obs and "pseudodynamics" not in a.uns
    _call(a, max_epochs=1, strategy="single_device", accelerator="cpu")
    assert a.uns["pseudodynamics"]["params"]["strategy"] == "single_device"


def test_scanpy_diffmap_steady_state_column_gets_a_warning(caplog):
    import scanpy as sc

    a = _small_1d(n=30)
    rng = np.random.default_rng(0)
    a.obsm["X_pca"] = np.c_[np.sort(rng.uniform(0, 1, a.n_obs)), rng.normal(0, 0.01, a.n_obs)]  # one connected chain
    sc.pp.neighbors(a, n_neighbors=10, use_rep="X_pca")
    sc.tl.diffmap(a, n_comps=4)
    assert a.obsm["X_diffmap"][:, 0].std() < 0.2 * a.obsm["X_diffmap"][:, 1].std()
    with caplog.at_level("WARNING", logger="waddington"):
        wd.tl.pseudodynamics(a, time_key="day", state_key="X_diffmap", n_dims=2, **{**FAST, "max_epochs": 1})
    assert "steady-state component" in caplog.text and "[:, 1:3]" in caplog.text
    caplog.clear()
    a.obsm["X_dm"] = a.obsm["X_diffmap"][:, 1:3]
    with caplog.at_level("WARNING", logger="waddington"):
        wd.tl.pseudodynamics(a, time_key="day", state_key="X_dm", **{**FAST, "max_epochs": 1})
    assert "steady-state" not in caplog.text


def test_compile_with_hutchinson_traces_is_refused_before_anything_is_written():
    a = _small_1d(n=20)
    with pytest.raises(ValueError, match="compile=True.*exact"):
        _call(a, compile=True, divergence="hutchinson")
    assert "pd_split" not in a.obs and "pseudodynamics" not in a.uns


def test_compile_without_a_compiler_warns_and_trains_uncompiled(monkeypatch, caplog):
    from waddington.models.pseudodynamics import training

    monkeypatch.setattr(training, "_has_compiler", lambda: False)
    a, b = _small_1d(n=30), _small_1d(n=30)
    with caplog.at_level("WARNING", logger="waddington"):
        _call(a, compile=True, max_epochs=1)
    assert "C++ compiler" in caplog.text
    _call(b, max_epochs=1)
    # the uncompiled fallback is the default path: the same numbers
    np.testing.assert_array_equal(a.obs["pd_growth"], b.obs["pd_growth"])
    assert bool(a.uns["pseudodynamics"]["params"]["compile"])


def test_compiled_training_matches_uncompiled_and_is_reproducible():
    # torch.compile fuses the loss and its backward: float32 rounding differs, the fit must not (about 15 s to
    # compile on 2 cores; the second compiled fit reuses the compiled step)
    runs = []
    for compile_ in (True, True, False):
        a = _small_1d(n=40)
        _call(a, compile=compile_, max_epochs=3)
        runs.append(a.obs["pd_growth"].to_numpy())
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_allclose(runs[0], runs[2], rtol=1e-3, atol=1e-4)


def test_compiled_module_pickles_for_spawned_processes():
    import pickle

    from waddington.models.pseudodynamics import PseudodynamicsConfig, PseudodynamicsModule, PseudodynamicsNet

    module = PseudodynamicsModule(PseudodynamicsNet(1, hidden=(8,)), PseudodynamicsConfig(compile=True), 2)
    module._compiled_terms = torch.compile(module._terms, dynamic=False)  # as after the first step
    copy_ = pickle.loads(pickle.dumps(module))
    assert copy_._compiled_terms is None and copy_.cfg.compile
    assert module._compiled_terms is not None


@pytest.mark.slow
def test_compile_failure_falls_back_to_uncompiled_training(tmp_path):
    # a compiler that exists for the quick check but cannot build: the first step fails inside torch, training
    # goes on uncompiled (a fresh process and cache, so nothing compiled earlier is reused)
    import subprocess
    import sys
    import textwrap

    fake = tmp_path / "g++"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    script = textwrap.dedent(
        """
        import logging
        import waddington as wd
        from test_pd_tl import FAST, _small_1d
        logging.basicConfig(level=logging.WARNING)
        a = _small_1d(n=30)
        wd.tl.pseudodynamics(a, time_key="day", state_key="X_state", compile=True, **{**FAST, "max_epochs": 1})
        print("pd_growth" in a.obs)
        """
    )
    tests_dir = str(Path(__file__).parent)
    path = os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, CXX=str(fake), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=path)
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("True")
    assert "torch.compile failed" in res.stderr and "training continues uncompiled" in res.stderr
