"""Full-size recovery targets of wd.tl.pseudodynamics on the ground-truth simulators (slow: `pytest -m slow`)."""

import numpy as np
import pytest
import torch

import waddington as wd


def _rel(x, y):
    return np.linalg.norm(x - y) / np.linalg.norm(y)


@pytest.fixture(scope="module")
def one_d():
    torch.set_num_threads(2)
    adata = wd.datasets.population_1d(random_state=0)
    wd.tl.pseudodynamics(adata, time_key="day", state_key="X_state", progress_bar=False, accelerator="cpu")
    return adata


@pytest.fixture(scope="module")
def branching():
    torch.set_num_threads(2)
    adata = wd.datasets.population_branching(random_state=0)
    wd.tl.pseudodynamics(adata, time_key="day", state_key="X_state", progress_bar=False, accelerator="cpu")
    return adata


@pytest.mark.slow
def test_population_1d_growth_recovered_with_sign_and_scale(one_d):
    g, tg = one_d.obs["pd_growth"].to_numpy(), one_d.obs["true_g"].to_numpy()
    assert np.corrcoef(g, tg)[0, 1] >= 0.9
    assert _rel(g, tg) <= 0.25


@pytest.mark.slow
def test_population_1d_velocity_recovered_with_sign_and_scale(one_d):
    v, tv = one_d.obsm["pd_velocity"][:, 0], one_d.obsm["true_v"][:, 0]
    assert np.corrcoef(v, tv)[0, 1] >= 0.9
    assert _rel(v, tv) <= 0.3


@pytest.mark.slow
def test_population_1d_diffusion_within_factor_two(one_d):
    ratio = np.median(one_d.obs["pd_diffusion"] / one_d.obs["true_D"])
    assert 0.5 <= ratio <= 2.0


@pytest.mark.slow
def test_population_1d_population_curves_within_five_percent(one_d):
    pop = one_d.uns["pseudodynamics"]["population"]
    n_true = np.asarray(one_d.uns["truth"]["N"], dtype=float)
    np.testing.assert_allclose(pop["fitted"], n_true, rtol=0.05)
    np.testing.assert_allclose(pop["implied"], n_true, rtol=0.05)


@pytest.mark.slow
def test_population_branching_drift_direction_and_growth(branching):
    v, tv = np.asarray(branching.obsm["pd_velocity"]), np.asarray(branching.obsm["true_v"])
    cos = (v * tv).sum(1) / (np.linalg.norm(v, axis=1) * np.linalg.norm(tv, axis=1))
    assert cos.mean() >= 0.8
    g, tg = branching.obs["pd_growth"].to_numpy(), branching.obs["true_g"].to_numpy()
    assert np.corrcoef(g, tg)[0, 1] >= 0.8
