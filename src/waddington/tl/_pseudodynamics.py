"""AnnData adapter of pseudodynamics+: validate, pull arrays, train, write every slot in one place."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from waddington._utils import (
    check_finite_obs,
    check_obs,
    check_obsm,
    check_uns,
    get_rng,
    logger,
    resolve_accelerator,
    resolve_seed,
    seed_everything,
)

_FIELDS_DOC = "run `wd.tl.pseudodynamics(adata, time_key=..., state_key=...)` first"


# ----------------------------------------------------------------------------------------------- input helpers
def _numeric_time(adata: AnnData, time_key: str) -> np.ndarray:
    """``adata.obs[time_key]`` as float64: numeric columns, and categorical or string columns of numbers."""
    col = check_obs(adata, time_key, fix="store the experimental time of each cell there")
    if pd.api.types.is_bool_dtype(col):
        raise TypeError(f"adata.obs[{time_key!r}] must hold numeric times, found booleans.")
    if isinstance(col.dtype, pd.CategoricalDtype):
        col = col.astype(col.cat.categories.dtype) if len(col.cat.categories) else col.astype(object)
    if not pd.api.types.is_numeric_dtype(col):
        converted = pd.to_numeric(col.astype(object), errors="coerce")
        bad = converted.isna() & col.notna()
        if bad.any():
            example = col[bad].iloc[0]
            raise TypeError(
                f"adata.obs[{time_key!r}] must hold numeric times, found {example!r}; store them as numbers, e.g. "
                f"`adata.obs['time'] = adata.obs[{time_key!r}].astype(str).str.extract(r'([-+]?[0-9]*[.]?[0-9]+)')"
                "[0].astype(float)`, and pass `time_key='time'`."
            )
        col = converted
    return check_finite_obs(adata, time_key, col.to_numpy(dtype=np.float64, na_value=np.nan))


def _population_table(adata: AnnData, population, time_key: str) -> pd.DataFrame:
    """Return the population table (columns t, mean, std, n_lib) from ``adata.uns[population]``.

    The times are the ``t`` column (or entry), else a column named like ``time_key``, else a *named* or non-default
    index of a DataFrame; a DataFrame with neither is refused rather than matched by row position.
    """
    where = f"adata.uns[{population!r}]"
    fix = (
        "store the population sizes per time point as "
        "`adata.uns['pop'] = {'t': [...], 'mean': [...], 'std': [...], 'n_lib': [...]}` "
        "(or pass `population=None` to use the numbers of sequenced cells, which gives relative growth only)"
    )
    table = check_uns(adata, population, fix=fix)
    if isinstance(table, pd.DataFrame):
        df = table.copy()
        if "t" not in df.columns:
            if time_key in df.columns:
                df = df.rename(columns={time_key: "t"})
            elif df.index.name is not None or not isinstance(df.index, pd.RangeIndex):
                df = df.reset_index().rename(columns={df.index.name or "index": "t"})
            else:
                raise KeyError(
                    f"{where} is a DataFrame without a 't' column, a {time_key!r} column or an index of time points "
                    f"(found columns {sorted(map(str, df.columns))} and a default 0, 1, 2, ... index); name the "
                    f"column of times 't' or set it as the index, e.g. `adata.uns[{population!r}] = "
                    f"df.set_index('day')`."
                )
    elif isinstance(table, dict):
        try:
            df = pd.DataFrame({k: np.asarray(v).reshape(-1) for k, v in table.items()})
        except ValueError as err:
            raise ValueError(f"{where} must hold arrays of equal length (one entry per time point); {fix}.") from err
        if "t" not in df.columns and time_key in df.columns:
            df = df.rename(columns={time_key: "t"})
    else:
        raise TypeError(f"{where} must be a dict or a DataFrame, got {type(table).__name__}; {fix}.")
    for key in ("t", "mean"):
        if key not in df.columns:
            raise KeyError(f"{where} has no {key!r} entry (found {sorted(map(str, df.columns))}); {fix}.")
    if "std" not in df.columns:
        df["std"] = 0.0
    if "n_lib" not in df.columns:
        df["n_lib"] = 1
    try:
        df = df[["t", "mean", "std", "n_lib"]].apply(pd.to_numeric).astype(float)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{where} must hold numbers in 't', 'mean', 'std' and 'n_lib' ({err}); {fix}.") from err
    if not np.isfinite(df[["t", "mean"]].to_numpy()).all():
        raise ValueError(f"{where} has non-finite 't' or 'mean' values; {fix}.")
    if (df["mean"] <= 0).any():
        raise ValueError(f"{where}['mean'] must be positive population sizes; {fix}.")
    if df["t"].duplicated().any():
        raise ValueError(f"{where}['t'] has duplicated time points; {fix}.")
    return df.sort_values("t").reset_index(drop=True)


def _match_times(obs_t: np.ndarray, table_t: np.ndarray, time_key: str, population: str) -> np.ndarray:
    """Index of every cell's time in the table, with a clear error for times missing from it."""
    idx = np.searchsorted(table_t, obs_t).clip(0, len(table_t) - 1)
    idx_lo = (idx - 1).clip(0)
    pick = np.where(np.abs(table_t[idx_lo] - obs_t) < np.abs(table_t[idx] - obs_t), idx_lo, idx)
    # float32 precision: a time column stored as float32 (e.g. 1.1 → 1.100000023841858) still matches the table
    ok = np.isclose(table_t[pick], obs_t, rtol=1e-6, atol=1e-9)
    if not ok.all():
        missing = np.unique(obs_t[~ok])
        raise ValueError(
            f"adata.obs[{time_key!r}] has time point(s) {missing.tolist()} that are not in adata.uns[{population!r}]['t'] "
            f"({table_t.tolist()}); add their population sizes to the table or remove those cells."
        )
    return pick


def _knn_graph(states: np.ndarray, n_neighbors: int) -> sp.csr_matrix:
    from sklearn.neighbors import NearestNeighbors

    k = min(int(n_neighbors) + 1, states.shape[0])
    nn = NearestNeighbors(n_neighbors=k).fit(states)
    ind = nn.kneighbors(states, return_distance=False)[:, 1:]
    rows = np.repeat(np.arange(states.shape[0]), ind.shape[1])
    return sp.csr_matrix((np.ones(rows.size), (rows, ind.ravel())), shape=(states.shape[0],) * 2)


def smoothed_time_pseudotime(graph: sp.csr_matrix, time: np.ndarray, n_iter: int = 10) -> np.ndarray:
    """A pseudotime from the experimental time, averaged over kNN neighbourhoods ``n_iter`` times.

    Used to orient the kNN displacement when no pseudotime is given: within a time point, cells whose
    neighbourhood holds later cells are further along.
    """
    w = sp.csr_matrix(graph, dtype=np.float64)
    w = w + sp.identity(w.shape[0], format="csr")
    deg = np.asarray(w.sum(1)).ravel()
    w = sp.diags(1.0 / deg) @ w
    pt = np.asarray(time, dtype=np.float64)
    for _ in range(int(n_iter)):
        pt = w @ pt
    return pt


def knn_displacement(states: np.ndarray, graph: sp.csr_matrix, pseudotime: np.ndarray) -> np.ndarray:
    """Expected displacement to the later kNN neighbours (reference's ``Delta_DM``, §3.8).

    For every cell, the connectivity-weighted mean of ``x_j - x_i`` over neighbours ``j`` with a larger
    pseudotime (zero when there are none). This is the expectation of the reference's sampled displacement
    (``repeat`` draws ∝ connectivity), so it needs no random numbers.
    """
    g = sp.csr_matrix(graph, dtype=np.float64)
    g.setdiag(0)
    g.eliminate_zeros()
    rows = np.repeat(np.arange(g.shape[0]), np.diff(g.indptr))
    later = pseudotime[g.indices] > pseudotime[rows]
    w = sp.csr_matrix((g.data * later, g.indices, g.indptr), shape=g.shape)
    w.eliminate_zeros()
    total = np.asarray(w.sum(1)).ravel()
    mean_x = w @ states
    out = np.zeros_like(states)
    has = total > 0
    out[has] = mean_x[has] / total[has, None] - states[has]
    return out


@contextlib.contextmanager
def _quiet_lightning():
    names = ["lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric"]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# ----------------------------------------------------------------------------------------------- public API
def pseudodynamics(
    adata: AnnData,
    *,
    time_key: str,
    state_key: str,
    n_dims: int | None = None,
    population: str | None = "pop",
    split_key: str = "pd_split",
    val_fraction: float = 0.1,
    deltax_key: str | None = None,
    pseudotime_key: str | None = None,
    graph_key: str | None = "connectivities",
    n_neighbors: int = 15,
    config=None,
    hidden: Sequence[int] = (64, 64),
    activation: str = "tanh",
    time_dependent: bool = True,
    zero_growth: bool = False,
    d_positive: bool = True,
    d_clip: Sequence[float] | None = None,
    density_estimator: str = "kde",
    bw: float | str | None = None,
    gmm_k_max: int = 5,
    weight_intensity: float = 1.0,
    mass_weight: float = 10.0,
    neuralode_weight: float = 2.0,
    n_quadrature: int = 3,
    ode_form: str = "log",
    residual_mode: str = "raw",
    residual_weight: float = 5.0,
    ema_decay: float = 0.95,
    rcg_warmup_steps: int = 300,
    rcg_clip_pct: float = 0.02,
    rcg_u_net_raw_weight: float = 0.05,
    growth_weight: float = 10.0,
    growth_loss_mode: str = "logratio",
    growth_pop_ref: str = "popmean",
    g_init_rate: float | str | None = "auto",
    d_penalty: float = 0.1,
    d_penalty_mode: str = "mean",
    d_var_weight: float = 0.0,
    cfm_weight: float = 1.0,
    cfm_unbalanced_reg_m: float | None = None,
    cfm_loops: int = 1,
    deltax_weight: float = 0.01,
    divergence: str = "auto",
    n_probes: int = 1,
    lr: float = 3e-3,
    lr_schedule: str = "cosine",
    pretrain_steps: int = 2000,
    freeze_surrogate_epochs: int = 0,
    batch_size: int = 200,
    max_epochs: int = 100,
    steps_per_epoch: int | None = None,
    early_stopping_patience: int = 20,
    compile: bool = False,
    accelerator: str = "auto",
    devices="auto",
    strategy="auto",
    progress_bar: bool = True,
    random_state: int | None = 0,
    key_added: str = "pseudodynamics",
    copy: bool = False,
) -> AnnData | None:
    r"""Fit pseudodynamics+ — a PINN for the population balance PDE — to a single-cell time course.

    The density of cells over states ``s`` (an embedding in ``obsm``) and time ``t`` obeys

    .. math:: \partial_t u = g\,u - \nabla\cdot(u\,v) + \nabla\cdot(D\,\nabla u),

    with net growth ``g(s, t)``, drift ``v(s, t)`` and isotropic diffusion ``D(s, t)``. A density surrogate
    ``u = exp(net(s, t))`` and three field networks are trained jointly (Zheng et al. 2025, reference §0–3) on:
    the log-density fit at both time points of a sampled pair, the neural-ODE consistency of the surrogate's
    right-hand side (a Gauss–Legendre quadrature here — the reference's adaptive "ODE" integrated a right-hand
    side that does not depend on its state), the PDE residual, the population (growth) loss, the diffusion
    penalty, the kNN-displacement velocity supervision and conditional flow matching. Differences from the
    reference: the true divergence ``∇·(u v)`` and Laplacian ``∇·(D∇u)`` in ``d`` dimensions; the observed density
    of time point ``k`` is ``N_k p̂_k`` so that its integral over state space is the population size ``N_k``
    (the reference normalises by a sum over pooled cells, so the mass its PDE sees is not ``N(t)``); one time
    unit — that of ``obs[time_key]`` — in every loss and output; an explicit, stored train/validation split.

    Parameters
    ----------
    adata
        Annotated data matrix.
    time_key
        Experimental time in :attr:`~anndata.AnnData.obs` (e.g. ``"day"``): numbers, or a categorical or string
        column of numbers (``"3"``, not ``"day3"``). Every rate is per unit of it.
    state_key
        State space in :attr:`~anndata.AnnData.obsm` (diffusion map, PCA, any embedding).
    n_dims
        Use the first ``n_dims`` columns of ``obsm[state_key]`` (default: all).
    population
        Key of the population table in :attr:`~anndata.AnnData.uns`: a dict or DataFrame with ``t`` (the values
        of ``obs[time_key]``; a column named like ``time_key`` or a DataFrame's index of times also works),
        ``mean`` (population size), and optionally ``std`` and ``n_lib``. ``None`` uses the
        numbers of sequenced cells per time point with a warning (growth is then relative to sampling).
    split_key
        Column of :attr:`~anndata.AnnData.obs` with ``"train"``/``"val"``; reused when present, otherwise created
        (stratified by time point, ``val_fraction`` of each) and written there.
    val_fraction
        Fraction of each time point's cells held out for validation (early stopping, best weights).
    deltax_key
        ``obsm`` key of a per-cell displacement for velocity supervision (the reference's ``Delta_DM``). Default:
        computed as the mean displacement to the later kNN neighbours in the state space.
    pseudotime_key
        ``obs`` key of a pseudotime that orients the displacement. Default: ``"dpt_pseudotime"`` when present,
        otherwise the experimental time smoothed over the kNN graph.
    graph_key
        ``obsp`` key of the kNN graph for the displacement; when missing, a kNN graph on the states is built.
    n_neighbors
        Neighbours of that graph when it is built here.
    config
        A :class:`~waddington.models.pseudodynamics.PseudodynamicsConfig` (or dict); its values replace the
        keyword defaults below, and keywords that differ from their defaults replace the config's. The
        ``uns[key_added]['params']`` of an earlier run (also after an h5ad round trip) can be passed as is to
        repeat its options; the data entries it also records (``time_key``, ``state_key``, ``times``, ...) are
        ignored there and stay keywords.
    hidden, activation
        Hidden widths and activation of the four MLPs (the reference's ``--channels``, Tanh).
    time_dependent
        Whether ``g``, ``v``, ``D`` take time as input (the reference's ``--time_sensitive``).
    zero_growth
        Ablation with ``g ≡ 0``.
    d_positive
        ``D = softplus(·)`` (default; the reference's D is an unconstrained linear output and was negative for
        most cells on the 1-D ground truth).
    d_clip
        Optional ``(lo, hi)`` clamp of ``D`` (the reference's ``D_clip``).
    density_estimator, bw, gmm_k_max
        Per-time densities: ``"kde"`` (Gaussian KDE with full covariance, bandwidth factor ``bw``: ``None`` =
        Scott) or ``"gmm"`` (Gaussian mixture with up to ``gmm_k_max`` components chosen by BIC).
    weight_intensity
        Exponent ``α`` of the density-fit weights ``(log u - floor)^α``.
    mass_weight
        Weight of ``(log ∫u(s, t_k) ds - log N_k)²`` (importance-sampled over the batch), which keeps the
        surrogate's mass on the population table; not in the reference.
    neuralode_weight, n_quadrature, ode_form
        Weight of the neural-ODE consistency loss (reference default 2), Gauss–Legendre nodes per interval, and
        whether it integrates ``d log u/dt`` (``"log"``, default) or ``du/dt`` with the reference's ``relu``
        (``"linear"``, parity).
    residual_mode
        ``"raw"`` (squared PDE residual ``∂_t log u - RHS/u``, all networks), ``"ginv"`` (regress ``g`` on the
        growth the residual implies) or ``"rcg"`` (residual-centred growth: implied growth re-centred by a per-
        interval EMA onto the population ratio; raw residual during warm-up).
    residual_weight
        Weight of the residual term (the reference's ``R_weight``).
    ema_decay, rcg_warmup_steps, rcg_clip_pct, rcg_u_net_raw_weight
        RCG options: EMA decay (one EMA per time interval), warm-up steps with a ramped raw residual, quantile
        clipping of the implied growth, and weight of the raw residual after warm-up.
    growth_weight
        Weight of the population loss.
    growth_loss_mode
        ``"logratio"`` (default): ``½(E_{p_k}[g] + E_{p_{k+1}}[g]) Δt = log N_{k+1}/N_k``; ``"massbalance"``;
        ``"legacy"`` (reference parity only: its signed division flips the gradient when the population shrinks).
    growth_pop_ref
        ``"popmean"`` (default; the population table) or ``"cellsum"`` (the batch's importance-weighted estimate).
    g_init_rate
        Growth warm start: ``"auto"`` (default) sets ``g ≈ log(N_last/N_first)/(t_last - t_first)`` at start,
        a float sets that rate, ``None`` leaves the default initialisation.
    d_penalty, d_penalty_mode
        Diffusion penalty weight (the reference's ``D_penalty``) and form: ``"mean"`` = ``mean(D²)`` (default,
        batch-size invariant) or ``"legacy"`` = ``‖D‖₂`` over the batch.
    d_var_weight
        Weight of the reference's diffusion variance + entropy correlation losses.
    cfm_weight
        Weight of conditional flow matching on optimal-transport pairs of consecutive time points.
    cfm_unbalanced_reg_m
        ``None``: balanced exact OT pairing; a float: unbalanced entropic OT with this marginal relaxation.
    cfm_loops
        Independent pairings per step (the reference used 10 in ``main_train``, 1 in ``main_train_rcg``).
    deltax_weight
        Weight of ``-cos(Δx, v)`` (velocity direction supervision).
    divergence, n_probes
        ``"exact"`` traces (forward-mode derivative jets through the networks: the exact values of nested
        autograd, with ``d + 1`` tangent directions), ``"hutchinson"`` (``n_probes`` Rademacher probes, unbiased,
        nested autograd) or ``"auto"`` (exact up to 5 dimensions).
    lr_schedule
        ``"cosine"`` (default: decay to ``lr/20`` over ``max_epochs``) or ``"constant"`` (the reference configured a
        cyclic schedule but never stepped it).
    pretrain_steps
        Adam steps that fit the density surrogate alone before the joint training (forward passes only).
    freeze_surrogate_epochs
        Epochs of joint training during which the surrogate is frozen, so that the fields first learn its PDE.
    lr, batch_size, max_epochs, steps_per_epoch, early_stopping_patience
        Adam learning rate, cells per step (half from each time point of the pair), epochs, steps per epoch
        (default ``n_train_cells // batch_size`` within [25, 100]) and patience of early stopping on the
        validation loss.
    compile
        Compile each training step's loss and its backward with :func:`torch.compile` (needs a C++ compiler on
        CPU, ``$CXX`` or ``g++``; without one, or if compiling fails, a warning is logged and training runs
        uncompiled). Compiling takes 25–30 s the first
        time; later calls in the same process with the same network and options reuse the compiled step, and
        torch's on-disk inductor cache shortens it in a new process. A step of 200 cells then costs 8.4–9.6 ms
        against 14.0 ms uncompiled in 1-D, and 10.5–11.0 against 16.0–18.0 ms in 2-D, one thread
        (``benchmarks/results/pseudodynamics.txt``). A single cold-cache fit on the simulators' defaults (~3,000
        steps) is therefore slower (70 s against 49 s), hence off by default. Each distinct set of options is
        compiled separately, up to torch's limit of 8 per process (then uncompiled). Needs exact
        divergences (up to 5 dimensions with ``divergence="auto"``); the results equal the uncompiled ones to
        float32 rounding, not bit for bit, and are reproducible for a seed.
    accelerator, devices, strategy
        Passed to :class:`lightning.pytorch.Trainer` (each process of a multi-device run draws its own batches).
    progress_bar
        Show the training progress bar.
    random_state
        Seed (split, batches, initialisation); the same seed gives bit-identical results on CPU. ``None`` draws
        a seed, which is stored in ``uns[key_added]['params']['random_state']``.
    key_added
        Key in :attr:`~anndata.AnnData.uns`; per-cell outputs are prefixed ``pd_`` (or ``{key_added}_`` when it
        is not the default).
    copy
        Return a new AnnData instead of writing to ``adata``.

    Returns
    -------
    AnnData or None
        A new AnnData with ``copy=True``, otherwise ``None``. Writes, at each cell's own time point:

        - ``obs['pd_growth']``, ``obs['pd_diffusion']``, ``obs['pd_density']`` (cells per unit state volume; its
          integral is ``N(t)``), ``obs['pd_divergence']`` (``∇·v``), ``obsm['pd_velocity']`` (n × n_dims, in the
          state space used);
        - ``obsm['pd_{growth,diffusion,density,speed,divergence}_by_time']``: DataFrames cells × time points;
        - ``obs[split_key]``;
        - ``uns[key_added]``: ``params`` (every option, ``time_key``, ``state_key``, ``n_dims``), ``history``,
          ``training`` (best epoch, seconds, …), ``model`` (weights as arrays + architecture, see
          :func:`pseudodynamics_predict`), ``population``
          (observed, fitted ``∫u ds`` and growth-implied ``N(t)`` on the time points and on a fine grid).

    Notes
    -----
    Defaults were chosen on the ground-truth simulators (``wd.datasets.population_1d`` and
    ``population_branching``; ``benchmarks/pseudodynamics.py``, results in ``benchmarks/results/``):

    - ``growth_loss_mode="logratio"``, ``growth_pop_ref="popmean"``, ``growth_weight=10``: the population table
      pins ``E_p[g]`` to ``d log N/dt``. The reference's default weight 0 leaves the level of ``g`` to the density
      scaling alone; with weight 1 the growth of day-0 cells of ``population_1d`` stayed 20% low (Pearson 0.83),
      with 10 it is within 12% (Pearson 0.97). ``legacy`` is for parity only.
    - ``residual_weight=5`` (reference 1, its RCG script 3): Pearson(g) 0.83 → 0.97 on ``population_1d``.
    - ``mass_weight=10`` and ``pretrain_steps=2000``: the surrogate's ``∫u ds`` stays within 2% of ``N(t)``.
    - ``lr=3e-3`` with a cosine decay: constant-rate runs were still improving at the last epoch; the decay
      brought ``v`` (relative L2 0.34 → 0.29) and ``D`` (median ratio 0.6 → 0.9) into range.
    - ``cfm_weight=1`` with balanced OT (as the reference's RCG script): fixes the speed of ``v`` where the
      cosine supervision fixes only its direction (and nothing in 1-D).
    - ``g_init_rate="auto"``: starting ``g`` at the mean population growth rate removes a slow first phase.
    - ``d_positive=True``: ``D = softplus(·)``; the reference's signed ``D`` was negative for most cells.
    - ``time_dependent=True``, ``hidden=(64, 64)``, Tanh, ``d_penalty=0.1`` (``mean``), ``deltax_weight=0.01``,
      ``neuralode_weight=2``: as the reference.

    Examples
    --------
    >>> import waddington as wd
    >>> adata = wd.datasets.population_1d()
    >>> wd.tl.pseudodynamics(adata, time_key="day", state_key="X_state")  # doctest: +SKIP
    >>> adata.obs[["pd_growth", "true_g"]].corr()  # doctest: +SKIP
    """
    from waddington.models.pseudodynamics import (
        PseudodynamicsConfig,
        PseudodynamicsNet,
        TrainingData,
        fit,
        log_sampling_density,
        observed_log_density,
        population_curves,
    )

    # ---- options
    local = dict(locals())
    cfg_fields = [f.name for f in dataclasses.fields(PseudodynamicsConfig)]
    defaults = {f.name: f.default for f in dataclasses.fields(PseudodynamicsConfig)}
    values = {}
    if config is not None:
        base = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else _options_from_record(config)
        unknown = set(base) - set(cfg_fields)
        if unknown:
            raise TypeError(f"unknown pseudodynamics option(s) in `config`: {sorted(unknown)}.")
        values.update(base)
    for name in cfg_fields:
        value = local[name]
        if config is None or _differs(value, defaults[name]):
            values[name] = value
    values["hidden"] = tuple(int(h) for h in values["hidden"])
    if values["d_clip"] is not None:
        values["d_clip"] = (float(values["d_clip"][0]), float(values["d_clip"][1]))
    cfg = PseudodynamicsConfig(**values)
    cfg.validate()
    if not 0 < val_fraction < 1:
        raise ValueError(f"`val_fraction` must be in (0, 1), got {val_fraction}.")
    acc = resolve_accelerator(accelerator)

    # ---- read and validate (nothing is written before training succeeded)
    random_state = resolve_seed(random_state)
    time = _numeric_time(adata, time_key)
    states_all = check_obsm(adata, state_key, fix="compute an embedding first, e.g. `sc.tl.diffmap(adata)`")
    if n_dims is None:
        n_dims = states_all.shape[1]
    if not isinstance(n_dims, int | np.integer) or n_dims < 1:
        raise ValueError(f"`n_dims` must be a positive integer, got {n_dims!r}.")
    if n_dims > states_all.shape[1]:
        raise ValueError(
            f"`n_dims={n_dims}` is larger than adata.obsm[{state_key!r}], which has {states_all.shape[1]} "
            f"column(s); pass `n_dims<={states_all.shape[1]}` or a larger embedding."
        )
    states = np.ascontiguousarray(states_all[:, :n_dims])
    spread = states_all.std(0)
    if state_key == "X_diffmap" and spread.size > 1 and spread[0] < 0.2 * spread[1]:
        # scanpy's diffusion map keeps the stationary eigenvector as column 0 (nearly constant)
        logger.warning(
            "adata.obsm['X_diffmap'] column 0 is scanpy's steady-state component, which carries no information on "
            "the cell state; to leave it out, store `adata.obsm['X_dm'] = adata.obsm['X_diffmap'][:, 1:%d]` and pass "
            "`state_key='X_dm'`",
            n_dims + 1,
        )
    if population is None:
        t_u, counts = np.unique(time, return_counts=True)
        table = pd.DataFrame({"t": t_u, "mean": counts.astype(float), "std": 0.0, "n_lib": 1.0})
        logger.warning(
            "population=None: using the number of sequenced cells per time point as population size; "
            "growth rates are then relative to sampling, not absolute."
        )
    else:
        table = _population_table(adata, population, time_key)
    table_t = table["t"].to_numpy()
    t_index_table = _match_times(time, table_t, time_key, str(population))
    used = np.unique(t_index_table)
    if used.size < 2:
        raise ValueError(
            f"adata.obs[{time_key!r}] has a single time point ({table_t[used].tolist()}); pseudodynamics needs "
            "cells from at least two time points."
        )
    table = table.iloc[used].reset_index(drop=True)
    times = table["t"].to_numpy()
    time_index = np.searchsorted(used, t_index_table)
    n_times = times.size
    counts = np.bincount(time_index, minlength=n_times)
    if counts.min() < n_dims + 2:
        k = int(np.argmin(counts))
        raise ValueError(
            f"time point {times[k]} has only {counts[k]} cell(s) in adata.obs[{time_key!r}]; a density in "
            f"{n_dims} dimension(s) needs at least {n_dims + 2}. Reduce `n_dims` or remove that time point."
        )

    rng = get_rng(random_state)
    split = _read_or_make_split(adata, split_key, time_index, val_fraction, rng)
    train_cells = np.flatnonzero(split == "train")
    val_cells = np.flatnonzero(split == "val")

    if deltax_key is not None:
        deltax = check_obsm(adata, deltax_key, fix="pass `deltax_key=None` to compute it from the kNN graph")
        if deltax.shape[1] < n_dims:
            raise ValueError(f"adata.obsm[{deltax_key!r}] has {deltax.shape[1]} columns, fewer than n_dims={n_dims}.")
        deltax = deltax[:, :n_dims]
        pt_used = "given"
    elif cfg.deltax_weight > 0:
        if graph_key is not None and graph_key in adata.obsp and adata.obsp[graph_key].shape[0] == adata.n_obs:
            graph = sp.csr_matrix(adata.obsp[graph_key])
        else:
            graph = _knn_graph(states, n_neighbors)
        auto_pt = pseudotime_key is None and "dpt_pseudotime" in adata.obs
        if auto_pt:
            pseudotime_key = "dpt_pseudotime"
        if pseudotime_key is not None:
            try:
                pt = check_obs(adata, pseudotime_key, fix="run `sc.tl.dpt(adata)` first", finite=True)
            except (TypeError, ValueError) as err:
                if not auto_pt:
                    raise
                raise type(err)(
                    f"{err} (adata.obs['dpt_pseudotime'] orients the kNN displacement of the velocity supervision "
                    "because it is present; pass `pseudotime_key=` naming another column, `deltax_key=` naming a "
                    "displacement in obsm, or `deltax_weight=0`)"
                ) from err
            pt = pt.to_numpy(float)
            pt_used = pseudotime_key
        else:
            pt = smoothed_time_pseudotime(graph, time)
            pt_used = "smoothed time"
        deltax = knn_displacement(states, graph, pt)
    else:
        deltax, pt_used = None, "None"

    # ---- densities: u_k = N_k p̂_k (model unit: N of the first time point)
    n_ref = float(table["mean"].iloc[0])
    pop_rel = table["mean"].to_numpy() / n_ref
    constant = np.flatnonzero(states.std(0) == 0)
    if constant.size:
        raise ValueError(
            f"adata.obsm[{state_key!r}] column(s) {constant.tolist()} are constant over all cells, so the state "
            "density has no spread along them; drop them (or pass a smaller `n_dims`) or use another embedding."
        )
    try:
        log_u, estimators = observed_log_density(
            states,
            time_index,
            pop_rel,
            estimator=cfg.density_estimator,
            bw_method=cfg.bw,
            gmm_k_max=cfg.gmm_k_max,
            random_state=int(random_state),
        )
    except np.linalg.LinAlgError as err:
        raise ValueError(
            f"the {cfg.density_estimator.upper()} density of adata.obsm[{state_key!r}] is singular at some time point "
            f"({err}): its cells lie on a lower-dimensional subspace there; pass a smaller `n_dims`, another "
            "embedding, or `density_estimator='gmm'`."
        ) from err
    log_p = log_u - np.log(pop_rel)[:, None]
    log_q_pooled = log_sampling_density(log_p, counts)

    # ---- network and training
    seed = seed_everything(int(random_state))
    g_init = cfg.g_init_rate
    if g_init == "auto":
        g_init = float(np.log(pop_rel[-1] / pop_rel[0]) / (times[-1] - times[0]))
    center = states.mean(0)
    scale = states.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    t_center = 0.5 * (times[0] + times[-1])
    t_scale = max(0.5 * (times[-1] - times[0]), 1e-12)
    own_log_u = log_u[time_index, np.arange(adata.n_obs)]
    net = PseudodynamicsNet(
        n_dims,
        hidden=cfg.hidden,
        activation=cfg.activation,
        time_dependent=cfg.time_dependent,
        state_center=center,
        state_scale=scale,
        time_center=t_center,
        time_scale=t_scale,
        log_density_offset=float(np.median(own_log_u)),
        growth_init=g_init,
        diffusion_positive=cfg.d_positive,
        diffusion_clip=cfg.d_clip,
        zero_growth=cfg.zero_growth,
    )
    data = TrainingData(states, time_index, times, log_u, np.log(pop_rel), deltax=deltax)
    with _quiet_lightning():
        net, history, info = fit(
            net,
            data,
            train_cells,
            val_cells,
            cfg,
            seed=seed,
            accelerator=acc,
            devices=devices,
            strategy=strategy,
            progress_bar=progress_bar,
        )

    # ---- outputs
    fields = _fields_by_time(net, states, times)
    own = {name: arr[np.arange(adata.n_obs), time_index] for name, arr in fields.items() if name != "velocity"}
    velocity = fields["velocity"][np.arange(adata.n_obs), time_index]
    t_grid = np.linspace(times[0], times[-1], 51)
    t_grid = np.unique(np.concatenate([t_grid, times]))
    sub = (
        rng.choice(adata.n_obs, min(adata.n_obs, 5000), replace=False) if adata.n_obs > 5000 else np.arange(adata.n_obs)
    )
    sub = np.sort(sub)
    # the implied curve starts from the observed N(t_0): N(t) = N_0 exp(∫ E_{u(·,t)}[g] dt)
    fitted, implied = population_curves(net, states[sub], log_q_pooled[sub], t_grid, 1.0)
    at_obs = np.searchsorted(t_grid, times)

    params = cfg.to_dict()
    params.update(
        time_key=time_key,
        state_key=state_key,
        n_dims=int(n_dims),
        population=str(population),
        split_key=split_key,
        val_fraction=float(val_fraction),
        deltax_key=str(deltax_key),
        pseudotime=str(pt_used),
        graph_key=str(graph_key),
        n_neighbors=int(n_neighbors),
        accelerator=acc,
        strategy=strategy if isinstance(strategy, str) else type(strategy).__name__,
        random_state=int(random_state),
        times=times.astype(float),
        population_unit=n_ref,
        g_init_rate_used=float(g_init) if g_init is not None else "None",
        n_density_components=np.array([e.n_components for e in estimators]),
    )
    uns = {
        "params": params,
        "history": _history_to_uns(history),
        "training": info,
        "model": {
            "architecture": net.architecture(),
            "weights": {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()},
        },
        "population": {
            "t": times.astype(float),
            "observed_mean": table["mean"].to_numpy(float),
            "observed_std": table["std"].to_numpy(float),
            "n_lib": table["n_lib"].to_numpy(float),
            "fitted": fitted[at_obs] * n_ref,
            "implied": implied[at_obs] * n_ref,
            "t_grid": t_grid,
            "fitted_grid": fitted * n_ref,
            "implied_grid": implied * n_ref,
        },
    }

    out = adata.copy() if copy else adata
    prefix = "pd" if key_added == "pseudodynamics" else key_added
    cols = _time_labels(times)
    out.obs[split_key] = pd.Categorical(split, categories=["train", "val"])
    out.obs[f"{prefix}_growth"] = own["growth"]
    out.obs[f"{prefix}_diffusion"] = own["diffusion"]
    out.obs[f"{prefix}_density"] = np.exp(own["log_density"]) * n_ref
    out.obs[f"{prefix}_divergence"] = own["divergence"]
    out.obsm[f"{prefix}_velocity"] = velocity
    tables = {
        "growth": fields["growth"],
        "diffusion": fields["diffusion"],
        "density": np.exp(fields["log_density"]) * n_ref,
        "speed": np.linalg.norm(fields["velocity"], axis=-1),
        "divergence": fields["divergence"],
    }
    for name, arr in tables.items():
        out.obsm[f"{prefix}_{name}_by_time"] = pd.DataFrame(arr, index=out.obs_names, columns=cols)
    out.uns[key_added] = uns
    logger.info(
        "added %s_growth, %s_diffusion, %s_density, %s_divergence, %s (adata.obs); %s_velocity, "
        "%s_*_by_time (adata.obsm); %r (adata.uns)",
        prefix,
        prefix,
        prefix,
        prefix,
        split_key,
        prefix,
        prefix,
        key_added,
    )
    return out if copy else None


#: entries of ``uns[key]['params']`` that record the data and the run rather than a training option
_RECORD_ONLY = frozenset(
    {
        "time_key",
        "state_key",
        "n_dims",
        "population",
        "split_key",
        "val_fraction",
        "deltax_key",
        "pseudotime",
        "graph_key",
        "n_neighbors",
        "accelerator",
        "strategy",
        "random_state",
        "times",
        "population_unit",
        "g_init_rate_used",
        "n_density_components",
    }
)


def _options_from_record(config) -> dict:
    """Options from a dict, e.g. a stored ``params``: record-only entries dropped, ``"None"`` and numpy undone."""
    out = {}
    for name, value in dict(config).items():
        if name in _RECORD_ONLY:
            continue
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, str) and value == "None":
            value = None
        out[name] = value
    return out


def _time_labels(times: np.ndarray) -> list[str]:
    """Column names of the per-time tables: ``f"{t:g}"``, or the shortest exact form where that is ambiguous."""
    labels = [f"{t:g}" for t in times]
    if len(set(labels)) < len(labels):
        labels = [np.format_float_positional(float(t), trim="-") for t in times]
    return labels


def _differs(a, b) -> bool:
    if isinstance(a, list | tuple) or isinstance(b, list | tuple):
        return a is None or b is None or list(a) != list(b)
    return a != b


def _read_or_make_split(adata, split_key, time_index, val_fraction, rng) -> np.ndarray:
    n_times = int(time_index.max()) + 1
    if split_key in adata.obs:
        split = adata.obs[split_key].astype(str).to_numpy()
        bad = ~np.isin(split, ["train", "val"])
        if bad.any():
            raise ValueError(
                f"adata.obs[{split_key!r}] must hold 'train' or 'val', found {sorted(set(split[bad]))[:5]}; "
                f"delete the column to draw a new split or pass another `split_key`."
            )
        for k in range(n_times):
            for part in ("train", "val"):
                if not np.any((time_index == k) & (split == part)):
                    raise ValueError(
                        f"adata.obs[{split_key!r}] has no {part!r} cells at time point index {k}; every time point "
                        "needs cells in both parts (delete the column to draw a new split)."
                    )
        logger.info("using the train/validation split in adata.obs[%r]", split_key)
        return split
    split = np.full(time_index.shape[0], "train", dtype=object)
    for k in range(n_times):
        cells = np.flatnonzero(time_index == k)
        n_val = max(1, int(round(val_fraction * cells.size)))
        split[rng.choice(cells, n_val, replace=False)] = "val"
    return split.astype(str)


def _fields_by_time(net, states: np.ndarray, times: np.ndarray) -> dict[str, np.ndarray]:
    from waddington.models.pseudodynamics import evaluate_fields

    per_t = [evaluate_fields(net, states, np.full(states.shape[0], t)) for t in times]
    return {k: np.stack([p[k] for p in per_t], axis=1) for k in per_t[0]}


def _history_to_uns(history: dict) -> dict:
    out = {}
    for k, v in history.items():
        out[k] = np.asarray(v, dtype=float) if isinstance(v, list) else v
    return out


def _load_net(adata: AnnData, key: str):
    from waddington.models.pseudodynamics import PseudodynamicsNet

    uns = check_uns(adata, key, fix=_FIELDS_DOC)
    if "model" not in uns or "params" not in uns:
        raise KeyError(f"adata.uns[{key!r}] has no 'model'/'params'; {_FIELDS_DOC}.")
    arch = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in uns["model"]["architecture"].items()}
    arch = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in arch.items()}
    weights = {k: np.asarray(v) for k, v in uns["model"]["weights"].items()}
    return PseudodynamicsNet.from_weights(arch, weights), uns["params"]


def pseudodynamics_predict(
    adata: AnnData,
    times: Sequence[float],
    *,
    key: str = "pseudodynamics",
    states: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Evaluate the fitted fields and density at any times, from the weights stored by :func:`pseudodynamics`.

    Works after an h5ad round trip: the network is rebuilt from ``adata.uns[key]['model']``.

    Parameters
    ----------
    adata
        Annotated data matrix with ``uns[key]``.
    times
        Times (unit of the time column used in training); need not be observed time points.
    key
        Key of the results in :attr:`~anndata.AnnData.uns`.
    states
        (m, n_dims) states to evaluate at; default: every cell's ``obsm[state_key][:, :n_dims]``.

    Returns
    -------
    Dict with ``t`` (n_times,), ``growth``, ``diffusion``, ``density`` (absolute: cells per unit state volume),
    ``divergence`` and ``speed`` (each m × n_times) and ``velocity`` (m × n_times × n_dims).

    Examples
    --------
    >>> import waddington as wd
    >>> adata = wd.datasets.population_1d()
    >>> wd.tl.pseudodynamics(adata, time_key="day", state_key="X_state")  # doctest: +SKIP
    >>> pred = wd.tl.pseudodynamics_predict(adata, times=[0.5, 1.5])  # doctest: +SKIP
    >>> pred["growth"].shape  # doctest: +SKIP
    """
    net, params = _load_net(adata, key)
    n_dims = int(params["n_dims"])
    if states is None:
        states = check_obsm(adata, str(params["state_key"]), fix=_FIELDS_DOC)[:, :n_dims]
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 2 or states.shape[1] != n_dims:
        raise ValueError(f"`states` must have shape (m, {n_dims}), got {states.shape}.")
    times = np.atleast_1d(np.asarray(times, dtype=np.float64))
    if times.size == 0 or not np.isfinite(times).all():
        raise ValueError("`times` must be a non-empty list of finite numbers.")
    fields = _fields_by_time(net, states, times)
    unit = float(params.get("population_unit", 1.0))
    return {
        "t": times,
        "growth": fields["growth"],
        "diffusion": fields["diffusion"],
        "density": np.exp(fields["log_density"]) * unit,
        "divergence": fields["divergence"],
        "velocity": fields["velocity"],
        "speed": np.linalg.norm(fields["velocity"], axis=-1),
    }
