import numpy as np
import pytest
import scipy.sparse as sp

from waddington.models.lsd.walks import WalkSampler, sample_walks


def _random_stochastic(n=50, seed=0):
    rng = np.random.default_rng(seed)
    a = sp.random(n, n, density=0.15, random_state=seed, format="csr") + sp.eye(n)
    a.data = rng.random(a.nnz) + 0.01
    s = np.asarray(a.sum(1)).ravel()
    return sp.csr_matrix(sp.diags(1 / s) @ a)


def test_walks_reproducible_for_a_seed():
    p = _random_stochastic()
    w1 = sample_walks(p, 200, 10, random_state=3)
    w2 = sample_walks(p, 200, 10, random_state=3)
    w3 = sample_walks(p, 200, 10, random_state=4)
    assert w1.shape == (200, 10) and w1.dtype == np.int64
    np.testing.assert_array_equal(w1, w2)
    assert not np.array_equal(w1, w3)


def test_walks_only_follow_edges():
    p = _random_stochastic()
    w = sample_walks(p, 500, 12, random_state=0)
    dense = p.toarray()
    assert (dense[w[:, :-1], w[:, 1:]] > 0).all()


def test_walk_step_frequencies_match_probabilities():
    p = sp.csr_matrix(np.array([[0.0, 0.1, 0.2, 0.3, 0.4]] + [[1.0, 0, 0, 0, 0]] * 4))
    w = WalkSampler(p).sample(100_000, 2, np.random.default_rng(0), starts=np.zeros(100_000, dtype=np.int64))
    freq = np.bincount(w[:, 1], minlength=5) / 100_000
    np.testing.assert_allclose(freq, [0.0, 0.1, 0.2, 0.3, 0.4], atol=0.01)


def test_absorbing_self_loop_stays():
    p = sp.csr_matrix(np.array([[0.0, 1.0], [0.0, 1.0]]))
    w = sample_walks(p, 10, 5, random_state=0)
    assert (w[:, 1:] == 1).all()


def test_sampler_rejects_empty_rows_and_negative_weights():
    with pytest.raises(ValueError, match="no outgoing transition"):
        WalkSampler(sp.csr_matrix(np.array([[0.0, 1.0], [0.0, 0.0]])))
    with pytest.raises(ValueError, match="non-negative"):
        WalkSampler(sp.csr_matrix(np.array([[0.0, -1.0], [1.0, 0.0]])))
    with pytest.raises(ValueError, match="square"):
        WalkSampler(sp.csr_matrix(np.ones((2, 3))))


def test_sampler_is_fast_on_a_large_graph():
    import time

    n, k = 50_000, 15
    rng = np.random.default_rng(0)
    rows = np.repeat(np.arange(n), k)
    g = sp.csr_matrix((rng.random(rows.size), (rows, rng.integers(0, n, rows.size))), shape=(n, n))
    s = WalkSampler(g)
    s.sample(10, 3, rng)  # compile
    t0 = time.perf_counter()
    w = s.sample(20_000, 10, rng)
    assert w.shape == (20_000, 10)
    assert time.perf_counter() - t0 < 2.0
