"""Operators, densities, pairing and losses of the pseudodynamics model layer (torch only, no training)."""

import numpy as np
import pytest
import torch

from waddington.models.pseudodynamics import (
    PseudodynamicsNet,
    divergence,
    laplacian,
    observed_log_density,
    pde_terms,
    sample_pairs,
)
from waddington.models.pseudodynamics.losses import growth_loss, ode_consistency, weighted_log_mse


class _AnalyticNet(torch.nn.Module):
    """u = exp(-|s|²/2 + a t), g = 0.3 + s_0, v = s (radial), D = c0 + |s|²: everything in closed form."""

    def __init__(self, a=0.7, c0=0.5):
        super().__init__()
        self.a, self.c0 = a, c0

    def log_density(self, s, t):
        return -0.5 * (s**2).sum(-1) + self.a * t

    def growth(self, s, t):
        return 0.3 + s[:, 0]

    def velocity(self, s, t):
        return s.clone()

    def diffusion(self, s, t):
        return self.c0 + (s**2).sum(-1)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_pde_terms_match_closed_form_divergence_and_laplacian(d):
    torch.manual_seed(0)
    s = torch.randn(50, d, dtype=torch.float64)
    t = torch.rand(50, dtype=torch.float64)
    net = _AnalyticNet()
    terms = pde_terms(net, s, t, method="exact")
    r2 = (s**2).sum(-1)
    # ∇·(u v)/u = d - |s|²  for u = exp(-|s|²/2), v = s
    assert torch.allclose(terms["drift"], d - r2, atol=1e-10)
    # ∇·(D ∇u)/u = ∇D·∇ℓ + D(Δℓ + |∇ℓ|²) = -2|s|² + (c0 + |s|²)(|s|² - d)
    expected = -2 * r2 + (0.5 + r2) * (r2 - d)
    assert torch.allclose(terms["diffusion"], expected, atol=1e-10)
    assert torch.allclose(terms["div_v"], torch.full_like(r2, float(d)))
    assert torch.allclose(terms["dlogu_dt"], torch.full_like(r2, 0.7))
    rhs = 0.3 + s[:, 0] - (d - r2) + expected
    assert torch.allclose(terms["residual"], 0.7 - rhs, atol=1e-10)


def test_true_divergence_differs_from_reference_summed_operator_in_2d():
    # v = (x, 0): ∇·v = 1, while the reference's (1·∇)(1·v) = ∂x x + ∂y x = 1 too; use v = (y, 0): true 0, reference 1
    s = torch.randn(20, 2, dtype=torch.float64, requires_grad=True)
    v = torch.stack([s[:, 1], torch.zeros_like(s[:, 0])], -1)
    assert torch.allclose(divergence(v, s), torch.zeros(20, dtype=torch.float64))


@pytest.mark.parametrize("d", [2, 3])
def test_laplacian_and_hutchinson_estimator_are_unbiased(d):
    torch.manual_seed(1)
    s = torch.randn(64, d, dtype=torch.float64, requires_grad=True)
    f = torch.sin(s).sum(-1) * (s[:, 0] ** 2)
    exact = laplacian(f, s, method="exact")
    # closed form: f = x0² Σ sin(s_i); Δf = 2 Σ sin + 4 x0 cos(x0) - x0² Σ sin
    x0 = s[:, 0]
    closed = 2 * torch.sin(s).sum(-1) + 4 * x0 * torch.cos(x0) - x0**2 * torch.sin(s).sum(-1)
    assert torch.allclose(exact, closed, atol=1e-10)
    g = torch.Generator().manual_seed(0)
    est = laplacian(f, s, method="hutchinson", n_probes=1000, generator=g)
    assert torch.allclose(est, closed, atol=0.25 * closed.abs().max().item())
    assert abs((est - closed).mean().item()) < 0.05


def test_network_outputs_have_the_expected_shapes_signs_and_warm_start():
    net = PseudodynamicsNet(3, hidden=(16,), growth_init=0.4, diffusion_init=0.02, time_scale=2.0)
    s, t = torch.randn(10, 3), torch.rand(10)
    assert net.log_density(s, t).shape == (10,)
    assert net.velocity(s, t).shape == (10, 3)
    assert torch.allclose(net.growth(s, t), torch.full((10,), 0.4), atol=0.05)
    D = net.diffusion(s, t)
    assert (D > 0).all() and torch.allclose(D, torch.full((10,), 0.02), rtol=0.5)
    clipped = PseudodynamicsNet(2, hidden=(8,), diffusion_positive=False, diffusion_clip=(-0.01, 0.01))
    assert clipped.diffusion(torch.randn(5, 2), torch.rand(5)).abs().max() <= 0.01 + 1e-7


@pytest.mark.parametrize("estimator", ["kde", "gmm"])
def test_observed_density_integrates_to_population_size_1d(estimator):
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(0, 0.1, 300), rng.normal(0.5, 0.05, 300)][:, None]
    ti = np.r_[np.zeros(300, int), np.ones(300, int)]
    N = np.array([1500.0, 4200.0])
    grid = np.linspace(-1, 1.5, 5001)[:, None]
    log_u, _ = observed_log_density(np.r_[X, grid], np.r_[ti, np.full(len(grid), -1)], N, estimator=estimator)
    u_grid = np.exp(log_u[:, len(X) :])
    integral = np.trapezoid(u_grid, grid[:, 0], axis=1)
    np.testing.assert_allclose(integral, N, rtol=1e-3)


def test_observed_density_integrates_to_population_size_2d():
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(0, 0.2, (200, 2)), rng.normal(1.0, 0.3, (200, 2))]
    ti = np.r_[np.zeros(200, int), np.ones(200, int)]
    N = np.array([10.0, 37.0])
    xs = np.linspace(-1.5, 3.0, 301)
    G = np.stack(np.meshgrid(xs, xs, indexing="ij"), -1).reshape(-1, 2)
    log_u, _ = observed_log_density(np.r_[X, G], np.r_[ti, np.full(len(G), -1)], N, bw_method=0.5)
    u = np.exp(log_u[:, len(X) :]).reshape(2, 301, 301)
    integral = np.trapezoid(np.trapezoid(u, xs, axis=2), xs, axis=1)
    np.testing.assert_allclose(integral, N, rtol=2e-3)


@pytest.mark.parametrize("reg_m", [None, 1.0])
def test_ot_pairs_match_translated_clouds(reg_m):
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(60, 2))
    x1 = x0[rng.permutation(60)] + np.array([3.0, 0.0])
    i, j = sample_pairs(x0, x1, np.random.default_rng(1), unbalanced_reg_m=reg_m)
    disp = x1[j] - x0[i]
    assert disp[:, 0].mean() > 2.0 and abs(disp[:, 1].mean()) < 0.3
    if reg_m is None:  # exact OT of a translation is the translation itself
        assert np.allclose(disp, [3.0, 0.0], atol=1e-8)


def test_one_dimensional_ot_plan_is_the_network_simplex_plan():
    # 1-D states take POT's sorting solver; where the optimum is unique it must be the exact network-simplex plan
    import ot

    from waddington.models.pseudodynamics.pairing import ot_plan

    rng = np.random.default_rng(0)
    for n0, n1 in [(50, 50), (40, 70)]:
        x0 = rng.normal(size=(n0, 1))
        x1 = rng.normal(size=(n1, 1)) * 0.5 + 1.0
        plan = ot_plan(x0, x1)
        exact = ot.emd(np.full(n0, 1 / n0), np.full(n1, 1 / n1), ot.dist(x0, x1))
        np.testing.assert_allclose(plan, exact, atol=1e-12)
        # and the matching is monotone: sorted sources go to sorted targets
        i, j = np.nonzero(plan)
        order = np.lexsort((x1[j, 0], x0[i, 0]))
        assert np.all(np.diff(x1[j[order], 0]) >= 0)


def test_growth_losses_vanish_at_the_true_growth_and_legacy_flips_sign_when_shrinking():
    B = 400
    rng = np.random.default_rng(0)
    iw = torch.as_tensor(rng.uniform(0.5, 1.5, B))
    g_true = 0.3
    g = torch.full((B,), g_true, dtype=torch.float64, requires_grad=True)
    dt, relmass = 2.0, float(np.exp(g_true * 2.0))
    common = {"iw_k": iw, "iw_kp1": iw * relmass, "iw_int": iw * relmass, "growth_integral": g * iw * dt, "dt": dt}
    for mode in ("logratio", "massbalance"):
        loss = growth_loss(mode, g_k=g, g_kp1=g, relmass=relmass, pop_ref="popmean", **common)
        assert loss.item() < (1e-12 if mode == "logratio" else 5e-2)
    # a shrinking population: the legacy form's signed division makes the loss negative (reference §9-6)
    shrink = growth_loss("legacy", g_k=g, g_kp1=g, relmass=0.5, pop_ref="popmean", **common)
    assert shrink.item() < 0


def test_log_ode_consistency_is_exact_for_a_consistent_surrogate():
    # ℓ(t) = ℓ0 + a t with RHS/u = a: the integrated log density equals the target, loss zero
    a, dt = 0.8, 1.5
    l0 = torch.linspace(-3, 0, 20)
    nodes = torch.tensor([0.1127, 0.5, 0.8873])
    w = torch.tensor([5 / 18, 8 / 18, 5 / 18])
    ln = l0[None] + a * nodes[:, None] * dt
    loss, l_int = ode_consistency(l0, l0 + a * dt, ln, torch.full((3, 20), a), w, dt, torch.tensor(-30.0), 1.0)
    assert loss.item() < 1e-10
    assert torch.allclose(l_int, l0 + a * dt, atol=1e-5)
    lin, _ = ode_consistency(
        l0, l0 + a * dt, ln, torch.full((3, 20), a), w, dt, torch.tensor(-30.0), 1.0, form="linear"
    )
    assert lin.item() < 1e-3


def test_weighted_log_mse_gives_floor_cells_a_small_weight():
    target = torch.tensor([0.0, -30.0])
    floor = torch.tensor(-23.0)
    # prediction far above the floor where the data is at the floor is penalised
    assert weighted_log_mse(target, torch.tensor([0.0, 0.0]), floor, 1.0).item() > 0


def test_weighted_log_mse_rows_are_independent_fits():
    # the pre-training fits every time point in one (T, n) call: each row must be the 1-D loss with its own floor
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(4, 30, generator=gen, dtype=torch.float64) * 5
    pred = torch.randn(4, 30, generator=gen, dtype=torch.float64) * 5
    floors = torch.tensor([-3.0, -1.0, 0.0, -10.0], dtype=torch.float64)
    rows = weighted_log_mse(target, pred, floors[:, None], 2.0)
    assert rows.shape == (4,)
    for k in range(4):
        assert torch.allclose(rows[k], weighted_log_mse(target[k], pred[k], floors[k], 2.0), rtol=1e-12)
    assert weighted_log_mse(target[0], pred[0], floors[0], 2.0).dim() == 0


def test_pair_batches_differ_between_devices_and_rank_zero_keeps_the_single_device_stream():
    from waddington.models.pseudodynamics import PseudodynamicsConfig, TrainingData
    from waddington.models.pseudodynamics.training import PairBatches

    rng = np.random.default_rng(0)
    states = rng.normal(size=(60, 1)).astype(np.float32)
    data = TrainingData(states, np.repeat([0, 1], 30), np.array([0.0, 1.0]), np.zeros((2, 60)), np.zeros(2))

    def first(rank=None):
        batches = PairBatches(data, np.arange(60), PseudodynamicsConfig(batch_size=10), n_batches=1, seed=3)
        if rank is not None:
            batches.use_rank(rank)
        return next(iter(batches))["s"].numpy().ravel().tolist()

    assert first() == first(0)
    assert first(1) != first(0) and first(1) != first(2)


@pytest.mark.parametrize("activation", ["tanh", "softplus", "silu", "elu", "mish"])
@pytest.mark.parametrize("d", [1, 3])
def test_jet_terms_equal_nested_autograd(activation, d):
    # the forward-mode jets used for training must give the PDE terms of nested autograd, every field included
    torch.manual_seed(3)
    net = PseudodynamicsNet(
        d, hidden=(16, 12), activation=activation, state_scale=[1.5] * d, time_scale=2.0, time_center=1.0
    ).double()
    s = torch.randn(40, d, dtype=torch.float64)
    t = torch.rand(40, dtype=torch.float64) * 3
    jet = pde_terms(net, s, t, engine="jet")
    ref = pde_terms(net, s, t, engine="autograd")
    for key in ref:
        assert torch.allclose(jet[key], ref[key], rtol=1e-10, atol=1e-12), key
    # and so must the parameter gradients of a loss built from them
    loss_jet = (jet["residual"] ** 2).mean() + jet["D"].mean() + jet["log_u"].mean() + jet["g"].mean()
    loss_ref = (ref["residual"] ** 2).mean() + ref["D"].mean() + ref["log_u"].mean() + ref["g"].mean()
    grads_jet = torch.autograd.grad(loss_jet, list(net.parameters()))
    grads_ref = torch.autograd.grad(loss_ref, list(net.parameters()))
    for a, b in zip(grads_jet, grads_ref, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "options",
    [
        {"time_dependent": False},
        {"zero_growth": True},
        {"diffusion_positive": False},
        {"diffusion_clip": (0.02, 0.05)},
    ],
)
def test_jet_terms_equal_nested_autograd_for_field_options(options):
    torch.manual_seed(4)
    net = PseudodynamicsNet(2, hidden=(8,), state_scale=[0.5, 2.0], **options).double()
    s = torch.randn(30, 2, dtype=torch.float64)
    t = torch.rand(30, dtype=torch.float64)
    jet = pde_terms(net, s, t, engine="jet")
    ref = pde_terms(net, s, t, engine="autograd")
    for key in ref:
        assert torch.allclose(jet[key], ref[key], rtol=1e-10, atol=1e-12), key


def test_jet_engine_refuses_hutchinson_traces():
    net = PseudodynamicsNet(2, hidden=(8,))
    with pytest.raises(ValueError, match="exact"):
        pde_terms(net, torch.randn(5, 2), torch.rand(5), method="hutchinson", engine="jet")


def test_velocity_cosine_averages_over_cells_that_moved_only():
    from waddington.models.pseudodynamics.losses import velocity_cosine

    deltax = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    v = torch.tensor([[2.0, 0.0], [5.0, 5.0], [1.0, 1.0]], requires_grad=True)
    # cells 0 and 2 moved: cos = 1 and 1/√2; cell 1 has no displacement and does not count
    assert torch.isclose(velocity_cosine(deltax, v), torch.tensor(-(1 + 2**-0.5) / 2))
    still = velocity_cosine(torch.zeros(3, 2), v)
    (grad,) = torch.autograd.grad(still, v)
    assert float(still.detach()) == 0.0 and torch.equal(grad, torch.zeros_like(v))


def test_jet_terms_cast_float32_inputs_like_the_network_and_accept_one_time():
    net = PseudodynamicsNet(2, hidden=(8,)).double()
    s, t = torch.randn(6, 2), torch.rand(6)
    jet = pde_terms(net, s, t)  # float32 states into a float64 network: promoted as in the forward pass
    ref = pde_terms(net, s, t, engine="autograd")
    assert jet["residual"].dtype == torch.float64
    assert torch.allclose(jet["residual"], ref["residual"], atol=1e-12)
    one = pde_terms(net, s.double(), torch.tensor([0.3], dtype=torch.float64))
    per_cell = pde_terms(net, s.double(), torch.full((6,), 0.3, dtype=torch.float64), engine="autograd")
    for key in ("dlogu_dt", "residual"):
        assert one[key].shape == (6,) and torch.allclose(one[key], per_cell[key], atol=1e-12), key


def test_jets_leave_the_inputs_out_of_the_graph_and_respect_subclass_overrides():
    net = PseudodynamicsNet(1, hidden=(8,))
    s = torch.randn(5, 1, requires_grad=True)
    terms = pde_terms(net, s, torch.rand(5))
    (grad,) = torch.autograd.grad(terms["residual"].sum(), s, allow_unused=True)
    assert grad is None

    class Faster(PseudodynamicsNet):
        def velocity(self, s, t):
            return 2.0 * super().velocity(s, t)

    fast = Faster(1, hidden=(8,))
    fast.load_state_dict(net.state_dict())
    x, t = torch.randn(5, 1), torch.rand(5)
    assert torch.allclose(pde_terms(fast, x, t)["v"], 2 * net.velocity(x, t))


def test_softplus_jet_is_linear_above_torch_threshold():
    net = PseudodynamicsNet(1, hidden=(4,), activation="softplus").double()
    with torch.no_grad():
        net.u[0].weight.fill_(30.0)  # pre-activations far above softplus' threshold of 20
        net.D[-1].bias.fill_(40.0)
    s, t = torch.rand(8, 1, dtype=torch.float64) + 1, torch.rand(8, dtype=torch.float64)
    jet, ref = pde_terms(net, s, t, engine="jet"), pde_terms(net, s, t, engine="autograd")
    for key in ref:
        assert torch.allclose(jet[key], ref[key], rtol=1e-12, atol=1e-12), key
