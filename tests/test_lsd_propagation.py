"""The flow/snap/clamp machinery of fates and perturbations against an analytic double-well landscape."""

import numpy as np
import pytest
import torch
from torch import nn

from waddington.models.lsd.propagation import Snapper, flow, propagate_fates, propagate_perturbation


class DoubleWell(nn.Module):
    """V(z) = (z0² − 1)² + z1²: wells at z0 = ±1. The 'encoder' reads z from the first two genes."""

    z_dim = 2

    def __init__(self, scale=0.05):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.scale = scale

    def encode(self, x):
        return x[:, :2], torch.full_like(x[:, :2], self.scale)

    def drift(self, z):
        return torch.stack([-4 * z[:, 0] * (z[:, 0] ** 2 - 1), -2 * z[:, 1]], dim=1)

    def integrate(self, z0, t, substeps=1):
        out, z = [z0], z0
        for k in range(len(t) - 1):
            h = t[k + 1] - t[k]
            k1 = self.drift(z)
            k2 = self.drift(z + 0.5 * h * k1)
            k3 = self.drift(z + 0.5 * h * k2)
            k4 = self.drift(z + h * k3)
            z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            out.append(z)
        return torch.stack(out)


@pytest.fixture(scope="module")
def landscape():
    rng = np.random.default_rng(0)
    z = np.column_stack([rng.uniform(-1.3, 1.3, 400), rng.normal(0, 0.2, 400)])
    X = np.column_stack([z, rng.normal(size=(400, 3))]).astype(np.float32)
    labels = np.where(z[:, 0] < -0.7, "L", np.where(z[:, 0] > 0.7, "R", "mid"))
    return DoubleWell(), X, z, labels


def test_flow_reaches_the_nearest_well(landscape):
    module, X, z, _ = landscape
    end = flow(module, torch.from_numpy(X[:, :2]), t_end=5.0, n_steps=50).numpy()
    np.testing.assert_allclose(np.abs(end[:, 0]), 1.0, atol=1e-3)
    assert np.all(np.sign(end[:, 0]) == np.sign(z[:, 0]))


def test_fates_snap_to_the_right_well_and_are_batch_independent(landscape):
    module, X, z, labels = landscape
    fate_cells = np.flatnonzero(labels != "mid")
    res = propagate_fates(module, X, Snapper(z, fate_cells), t_end=5.0, n_steps=50, n_samples=20, batch_size=64)
    assert res["end"].shape == (400,) and res["samples"].shape == (400, 20)
    np.testing.assert_array_equal(labels[res["end"]], np.where(z[:, 0] < 0, "L", "R"))
    p_left = (labels[res["samples"]] == "L").mean(axis=1)
    assert np.all(p_left[z[:, 0] < -0.3] == 1.0) and np.all(p_left[z[:, 0] > 0.3] == 0.0)
    # cells on the watershed are split by the posterior noise (scale 0.05)
    middle = np.abs(z[:, 0]) < 0.01
    assert middle.any() and np.all((p_left[middle] > 0.1) & (p_left[middle] < 0.9))
    again = propagate_fates(module, X, Snapper(z, fate_cells), t_end=5.0, n_steps=50, n_samples=20, batch_size=400)
    np.testing.assert_array_equal(res["samples"], again["samples"])


def test_paths_are_snapped_per_time_point(landscape):
    module, X, z, _ = landscape
    res = propagate_fates(module, X, Snapper(z), t_end=2.0, n_steps=20, cells=np.arange(10), return_paths=True)
    assert res["paths"].shape == (21, 10)
    np.testing.assert_array_equal(res["paths"][-1], res["end"])


def test_diverging_flow_raises(landscape):
    module, X, z, _ = landscape
    with pytest.raises(FloatingPointError, match="n_steps"):
        flow(module, torch.full((3, 2), 5.0), t_end=10.0, n_steps=2)


def test_clamped_gene_holds_for_the_whole_propagation(landscape):
    module, X, z, labels = landscape
    snap, fate_snap = Snapper(z), Snapper(z, np.flatnonzero(labels != "mid"))
    right = np.flatnonzero(z[:, 0] > 0.5)
    kw = {"t_end": 4.0, "n_rounds": 4, "n_steps": 10, "final_snapper": fate_snap}
    control = propagate_perturbation(module, X, snap, right, **kw)
    assert np.all(labels[control] == "R")
    # clamping gene 0 (the first state coordinate) to -1 pushes every cell into the left well
    pushed = propagate_perturbation(module, X, snap, right, genes=0, level=-1.0, **kw)
    assert pushed.shape == (right.size, 1) and np.all(labels[pushed] == "L")
    # clamping an unused gene changes nothing; stochastic arms share their draws
    same = propagate_perturbation(module, X, snap, right, genes=3, level=0.0, **kw)
    np.testing.assert_array_equal(same, control)
    mid = np.flatnonzero(np.abs(z[:, 0]) < 0.05)
    kw["final_snapper"] = snap
    a = propagate_perturbation(module, X, snap, mid, n_samples=8, stochastic=True, seed=1, **kw)
    b = propagate_perturbation(module, X, snap, mid, genes=3, n_samples=8, stochastic=True, seed=1, **kw)
    np.testing.assert_array_equal(a, b)
    c = propagate_perturbation(module, X, snap, mid, n_samples=8, stochastic=True, seed=1, stream=1, **kw)
    assert not np.array_equal(a, c)
