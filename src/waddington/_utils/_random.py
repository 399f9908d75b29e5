"""Random-state handling.

Every stochastic public function takes ``random_state``; these helpers turn it into the generators that numpy,
numba and torch need, so the same seed gives the same result on CPU.
"""

from __future__ import annotations

import random

import numpy as np

RandomState = int | np.random.Generator | None


def get_rng(random_state: RandomState = 0) -> np.random.Generator:
    """Return a numpy :class:`~numpy.random.Generator` for ``random_state``.

    Parameters
    ----------
    random_state
        An integer seed, an existing generator (returned as is), or ``None`` for fresh OS entropy.

    Returns
    -------
    A :class:`numpy.random.Generator`.
    """
    if isinstance(random_state, np.random.Generator):
        return random_state
    if random_state is None:
        return np.random.default_rng()
    if isinstance(random_state, bool | float) or not isinstance(random_state, int | np.integer):
        raise TypeError(f"`random_state` must be an int, a numpy Generator or None, got {random_state!r}.")
    if random_state < 0:
        raise ValueError(f"`random_state` must be non-negative, got {random_state}.")
    return np.random.default_rng(int(random_state))


def resolve_seed(random_state: int | None) -> int:
    """The integer seed for ``random_state``: ``None`` draws one from OS entropy (so it can be stored with results)."""
    if random_state is None:
        random_state = int(np.random.default_rng().integers(0, 2**31 - 1))
    if isinstance(random_state, bool) or not isinstance(random_state, int | np.integer) or random_state < 0:
        raise ValueError(f"`random_state` must be a non-negative int or None, got {random_state!r}.")
    return int(random_state)


def seed_everything(random_state: int | None) -> int:
    """Seed Python, numpy and torch (CPU and CUDA) from one integer and return the seed used.

    ``None`` draws a seed from OS entropy and returns it, so that it can be stored with the results.
    """
    import torch

    seed = resolve_seed(random_state)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed
