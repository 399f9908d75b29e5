"""The LSD model layer's hand-written pieces against the autograd / Pyro computations they replace (torch only)."""

import copy

import numpy as np
import pyro.distributions as dist
import pytest
import scipy.sparse as sp
import torch
from scipy.special import gammaln

from waddington.models.lsd import likelihood
from waddington.models.lsd.likelihood import ZINBCounts, ZINBSoftmaxCounts, gamma_terms, log_factorial_sums
from waddington.models.lsd.networks import GaussianMLP, PotentialNet, PriorRNN
from waddington.models.lsd.training import WalkBatches


def _zinb_inputs(zero_fraction: float, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    n, g = 64, 30
    theta = (torch.rand(g, generator=gen, dtype=torch.float64) * 50 + 0.5).requires_grad_()
    mu = (torch.rand(n, g, generator=gen, dtype=torch.float64) * 20).requires_grad_()
    gate = torch.randn(n, g, generator=gen, dtype=torch.float64).requires_grad_()
    x = torch.poisson(mu.detach(), generator=gen)
    x[torch.rand(n, g, generator=gen) < zero_fraction] = 0
    return theta, mu, gate, x


@pytest.mark.parametrize("zero_fraction", [0.1, 0.6])
def test_zinb_matches_pyro_value_and_gradients(zero_fraction):
    theta, mu, gate, x = _zinb_inputs(zero_fraction)
    logits = torch.log(mu + 1e-3) - torch.log(theta + 1e-3)
    ref = dist.ZeroInflatedNegativeBinomial(total_count=theta, logits=logits, gate_logits=gate).to_event(1)
    want = ref.log_prob(x)
    got = ZINBCounts(theta, mu, gate, eps=1e-3).log_prob(x)
    assert got.shape == (x.shape[0],)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-8)
    g_want = torch.autograd.grad(want.sum(), [theta, mu, gate])
    g_got = torch.autograd.grad(got.sum(), [theta, mu, gate])
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)


def test_zinb_accepts_precomputed_count_terms():
    theta, mu, gate, x = _zinb_inputs(0.3)
    plain = ZINBCounts(theta, mu, gate).log_prob(x)
    given = ZINBCounts(theta, mu, gate, log_factorial=log_factorial_sums(x), gamma_term=gamma_terms(x, theta)).log_prob(
        x
    )
    torch.testing.assert_close(given, plain)
    np.testing.assert_allclose(log_factorial_sums(x).numpy(), gammaln(x.numpy() + 1).sum(1), rtol=1e-10)


def _softmax_zinb_inputs(seed: int = 0, n: int = 70, m: int = 25, g: int = 30):
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    theta = (torch.rand(g, generator=gen, dtype=f64) * 50 + 0.5).requires_grad_()
    lib = (torch.rand(n, 1, generator=gen, dtype=f64) * 100 + 5).requires_grad_()
    logits = torch.randn(n, 2 * g, generator=gen, dtype=f64).requires_grad_()
    rows = torch.randint(0, m, (n,), generator=gen)
    x = torch.poisson(torch.rand(m, g, generator=gen, dtype=f64) * 10, generator=gen)
    x[torch.rand(m, g, generator=gen) < 0.4] = 0
    return theta, lib, logits, rows, x


@pytest.mark.parametrize("chunk", [1 << 17, 64])
def test_fused_softmax_zinb_equals_the_unfused_density_with_gradients(monkeypatch, chunk):
    # 64 elements: two rows per slice, so the slicing itself is exercised
    monkeypatch.setattr(likelihood, "_CHUNK_ELEMENTS", chunk)
    theta, lib, logits, rows, x = _softmax_zinb_inputs()
    g = theta.shape[0]
    got = ZINBSoftmaxCounts(theta, lib, logits, rows=rows).log_prob(x)
    want = ZINBCounts(theta, lib * torch.softmax(logits[:, g:], -1), logits[:, :g]).log_prob(x[rows])
    assert got.shape == (logits.shape[0],)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-9)
    weights = torch.randn(got.shape[0], dtype=got.dtype)  # unequal row weights reach θ's gradient correctly
    g_got = torch.autograd.grad((got * weights).sum(), [theta, lib, logits])
    g_want = torch.autograd.grad((want * weights).sum(), [theta, lib, logits])
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)
    # the same without ``rows`` (one observed row per parameter row), with precomputed count terms
    xr = x[rows]
    plain = ZINBSoftmaxCounts(
        theta, lib, logits, log_factorial=log_factorial_sums(xr), gamma_term=gamma_terms(xr, theta)
    ).log_prob(xr)
    torch.testing.assert_close(plain, want, rtol=1e-10, atol=1e-9)


def test_fused_softmax_zinb_passes_gradcheck_and_skips_unneeded_gradients():
    theta, lib, logits, rows, x = _softmax_zinb_inputs(seed=1, n=12, m=5, g=7)
    fused = likelihood._FusedZINBSoftmax.apply
    assert torch.autograd.gradcheck(lambda a, b, c: fused(a, b, c, x, rows, 1e-3), (logits, lib, theta))
    # an observed library (no gradient) and evaluation without autograd give the same values
    with torch.no_grad():
        values = fused(logits, lib, theta, x, rows, 1e-3)
    torch.testing.assert_close(fused(logits, lib.detach(), theta, x, rows, 1e-3).detach(), values)
    with pytest.raises(ValueError, match="2 \\* genes"):
        ZINBSoftmaxCounts(theta, lib, logits[:, :-1])
    # a plate over its own rows leaves it as it is; other shapes expand only without ``rows``
    d = ZINBSoftmaxCounts(theta, lib, logits, rows=rows)
    assert d.expand(d.batch_shape) is d
    with pytest.raises(ValueError, match="rows=None"):
        d.expand((3, *d.batch_shape))
    plain = ZINBSoftmaxCounts(theta, lib, logits).expand((3, logits.shape[0]))
    assert plain.batch_shape == (3, logits.shape[0])
    torch.testing.assert_close(
        plain.log_prob(x[rows]), values.expand(3, -1) + (gamma_terms(x, theta) - log_factorial_sums(x))[rows]
    )


def test_prior_rnn_gathers_projected_cells_like_nn_rnn_on_every_walk_position():
    torch.manual_seed(0)
    net = PriorRNN(40, 2).double()
    with torch.no_grad():
        net.h0.normal_()
    x = torch.rand(15, 40, dtype=torch.float64)
    rows = torch.randint(0, 15, (6 * 4,))
    h0 = net.h0.expand(-1, 6, -1).contiguous()
    want, _ = net.rnn(x[rows].view(6, 4, 40), h0)
    got = net(x, 6, 4, rows)
    torch.testing.assert_close(got, want.reshape(-1, 2))
    torch.testing.assert_close(net(x[rows], 6, 4), got)


def test_zinb_samples_are_non_negative_counts_with_inflated_zeros():
    theta = torch.full((200,), 5.0)
    mu = torch.full((300, 200), 50.0)
    sparse = ZINBCounts(theta, mu, torch.full((300, 200), 2.0)).sample()
    dense = ZINBCounts(theta, mu, torch.full((300, 200), -5.0)).sample()
    assert sparse.shape == (300, 200) and (sparse >= 0).all() and torch.equal(sparse, sparse.round())
    assert (sparse == 0).float().mean() > 0.8 > 0.1 > (dense == 0).float().mean()


@pytest.mark.parametrize("activation", ["logcosh", "softplus", "tanh", "relu", "identity"])
def test_potential_gradient_matches_autograd(activation):
    torch.manual_seed(0)
    net = PotentialNet(4, [6, 5], activation).double()
    with torch.no_grad():
        net.g.fill_(0.3)
    z = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    z_ref = z.detach().clone().requires_grad_()
    want = torch.autograd.grad(net(z_ref).sum(), z_ref, create_graph=True)[0]
    got = net.grad(z)
    torch.testing.assert_close(got, want)
    # first derivatives of a loss on the gradient (Hessian-vector product and parameter gradients)
    u = torch.randn_like(got)
    params = list(net.parameters())
    g_got = torch.autograd.grad((got * u).sum(), [z, *params], allow_unused=True)
    g_want = torch.autograd.grad((want * u).sum(), [z_ref, *params], allow_unused=True)
    for a, b, p in zip(g_got, g_want, [z, *params], strict=True):
        # with a linear potential the gradient does not depend on z (autograd reports it as unused)
        zero = torch.zeros_like(p)
        torch.testing.assert_close(zero if a is None else a, zero if b is None else b)


def test_potential_gradient_passes_gradcheck():
    torch.manual_seed(1)
    net = PotentialNet(3, [4], "logcosh").double()
    z = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    params = list(net.parameters())
    assert torch.autograd.gradcheck(lambda zz, *ps: net.grad(zz), (z, *params))


def test_encoding_distinct_cells_with_multiplicities_equals_encoding_every_copy():
    torch.manual_seed(0)
    enc = GaussianMLP(20, [16, 8], 3, batch_norm=True).double()
    enc_rep = copy.deepcopy(enc)
    x = torch.randn(30, 20, dtype=torch.float64)
    rows = torch.cat([torch.arange(30), torch.randint(0, 30, (70,))])
    counts = torch.bincount(rows, minlength=30)
    loc, scale = enc(x, counts)
    loc, scale = loc[rows], scale[rows]
    loc_rep, scale_rep = enc_rep(x[rows])
    torch.testing.assert_close(loc, loc_rep)
    torch.testing.assert_close(scale, scale_rep)
    (loc.sum() + (scale**2).sum()).backward()
    (loc_rep.sum() + (scale_rep**2).sum()).backward()
    for p, q in zip(enc.parameters(), enc_rep.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    for b, c in zip(enc.buffers(), enc_rep.buffers(), strict=True):
        torch.testing.assert_close(b, c)


def test_walk_batches_hold_each_cell_once_and_map_walk_positions_back():
    rng = np.random.default_rng(0)
    n, g = 50, 8
    counts = sp.csr_matrix(rng.poisson(2.0, size=(n, g)).astype(np.float32))
    x_log = counts.copy()
    x_log.data = np.log1p(x_log.data)
    prior = sp.csr_matrix(sp.random(n, n, density=0.2, random_state=0, format="csr") + sp.eye(n, format="csr"))
    data = WalkBatches(x_log, counts, prior, n_walks=40, length=5, batch_size=16, seed=0)
    dense_counts = counts.toarray()
    seen = 0
    for batch in data:
        walks, rows = batch["walks"].numpy(), batch["rows"].numpy()
        cells = walks.reshape(-1)
        assert len(np.unique(cells)) == batch["x"].shape[0] == batch["x_raw"].shape[0]
        np.testing.assert_array_equal(batch["x_raw"].numpy()[rows], dense_counts[cells])
        np.testing.assert_allclose(batch["x"].numpy()[rows], np.log1p(dense_counts[cells]), rtol=1e-6)
        np.testing.assert_allclose(
            batch["log_factorial"].numpy()[rows], gammaln(dense_counts[cells] + 1).sum(1), rtol=1e-5
        )
        seen += walks.shape[0]
    assert seen == 40


def test_elbo_of_distinct_rows_equals_elbo_of_every_walk_position():
    # the whole loss, with the fused likelihood, the gathered prior RNN and the weighted BatchNorm, is that of the
    # batch written out position by position; so are the gradients
    from pyro.infer import Trace_ELBO

    from waddington.models.lsd.model import LSDModule

    rng = np.random.default_rng(0)
    n_cells, genes, n_walks, length = 40, 12, 6, 5
    counts = rng.poisson(3.0, size=(n_cells, genes)).astype(np.float64)
    walks = rng.integers(0, n_cells, size=(n_walks, length))
    cells, rows = np.unique(walks.reshape(-1), return_inverse=True)
    x_raw = torch.as_tensor(counts[cells])
    x = torch.log1p(x_raw)
    rows = torch.as_tensor(rows)
    lf = torch.as_tensor(gammaln(counts[cells] + 1).sum(1))
    torch.manual_seed(0)
    dims = {"x_encoder": [16], "z_encoder": [8], "xl_encoder": [8], "B_decoder": [8], "z_decoder": [16]}
    module = LSDModule(genes, z_dim=3, layer_dims=dims).double()
    expanded = copy.deepcopy(module)
    losses, grads = [], []
    for m, args in (
        (module, (x_raw, x, n_walks, length, None, 1.0, 1e-3, 0.01, rows, lf)),
        (expanded, (x_raw[rows], x[rows], n_walks, length, None, 1.0, 1e-3, 0.01, None, lf[rows])),
    ):
        torch.manual_seed(1)
        loss = Trace_ELBO().differentiable_loss(m.model, m.guide, *args)
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, list(m.parameters()), allow_unused=True))
    torch.testing.assert_close(losses[0], losses[1])
    for a, b in zip(*grads, strict=True):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b)


def test_midpoint_flow_stays_close_to_accurate_rk4_and_methods_are_validated():
    from waddington.models.lsd.model import LSDModule

    torch.manual_seed(0)
    module = LSDModule(20, ode_method="midpoint")
    with torch.no_grad():  # a potential steep enough to move the states by O(1), as a trained one does
        module.potential_net.g.fill_(4.0)
        for p in module.potential_net.net.parameters():
            p.mul_(2.0)
    z0 = torch.randn(64, module.z_dim)
    t = torch.linspace(0.0, 1.0, 10)
    with torch.no_grad():
        accurate = module._flow(z0, t, create_graph=False, substeps=32, method="rk4")
        midpoint = module._flow(z0, t, create_graph=False)
        rk4 = module._flow(z0, t, create_graph=False, method="rk4")
    moved = (accurate[-1] - accurate[0]).norm(dim=-1).median()
    assert moved > 0.1  # the flow does move the states
    assert (midpoint - accurate).norm(dim=-1).max() < 0.01 * moved
    assert (rk4 - accurate).norm(dim=-1).max() < (midpoint - accurate).norm(dim=-1).max()
    # integrate() (used after training) always takes classical RK4 steps
    np.testing.assert_allclose(module.integrate(z0, t).numpy(), rk4.numpy(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="ode_method"):
        LSDModule(20, ode_method="euler")
    # files written before the option existed were trained with RK4
    arch = {k: v for k, v in module.arch.items() if k != "ode_method"}
    assert LSDModule.from_state(arch, module.state_arrays()).ode_method == "rk4"


def test_retain_freed_memory_keeps_pages_mapped_and_can_be_switched_off(monkeypatch):
    import resource

    from waddington.models import _malloc

    if _malloc._glibc() is None:
        pytest.skip("needs glibc")

    def faults_per_round(rounds=4):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(rounds):
            blocks = [np.ones(2_500_000, dtype=np.float32) for _ in range(12)]  # 12 × 10 MB, written
            del blocks
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / rounds

    with _malloc.retain_freed_memory():
        faults_per_round(1)  # the first round maps the pages
        inside = faults_per_round()
    assert inside < 2_000  # 120 MB written per round is about 29,000 pages when they are returned each time
    monkeypatch.setenv("WADDINGTON_NO_MALLOPT", "1")
    assert _malloc._glibc() is None

    def must_not_be_called(*args):
        raise AssertionError("mallopt called although WADDINGTON_NO_MALLOPT is set")

    monkeypatch.setattr(_malloc, "_set", must_not_be_called)
    with _malloc.retain_freed_memory():  # a no-op that still works as a context manager
        blocks = [np.ones(1000) for _ in range(3)]
    assert len(blocks) == 3
