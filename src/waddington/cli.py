"""The ``waddington`` command.

Each subcommand is a thin wrapper around one public function: it reads an ``.h5ad`` file (or simulates data),
calls the function, and writes the result. Errors a user can fix (a bad argument, a missing slot, an unwritable
path) end with a one-line message on stderr and exit status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

_SIMULATORS = {
    "toggle-switch": "toggle_switch",
    "population-1d": "population_1d",
    "population-branching": "population_branching",
}


class CLIError(Exception):
    """An error caused by the user's input, reported as one line without a traceback."""


def _writable_path(path: str | os.PathLike) -> Path:
    """Return ``path`` as a :class:`~pathlib.Path`, raising :class:`CLIError` when it cannot be written."""
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise CLIError(f"output path {str(out)!r} is a directory; give a file name such as out.h5ad")
    if not parent.exists():
        raise CLIError(f"cannot write {str(out)!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise CLIError(f"cannot write {str(out)!r}: permission denied")
    return out


def _readable_h5ad(path: str | os.PathLike):
    """Read an AnnData from ``path``, raising :class:`CLIError` when it is missing or not an h5ad file."""
    import anndata as ad

    src = Path(path)
    if not src.is_file():
        raise CLIError(f"input file {str(src)!r} does not exist")
    try:
        return ad.read_h5ad(src)
    except (OSError, ValueError, KeyError) as err:
        raise CLIError(f"cannot read {str(src)!r} as an h5ad file: {err}") from err


def _write_h5ad(adata, path: Path) -> None:
    try:
        adata.write_h5ad(path)
    except OSError as err:
        raise CLIError(f"cannot write {str(path)!r}: {err}") from err


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def _nonnegative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value!r}")
    return number


def _add_set_option(parser: argparse.ArgumentParser, function: str, examples: str) -> None:
    parser.add_argument(
        "--set",
        dest="options",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=(
            f"any other keyword of {function}, e.g. {examples}; the value is read as a Python literal (a bare word "
            "is a string); repeatable, and it wins over the flags above"
        ),
    )


def _keyword_options(pairs: Sequence[str], func: Callable) -> dict:
    """Parse ``NAME=VALUE`` pairs into keywords of ``func``, with a one-line error for unknown names."""
    import ast
    import inspect

    params = inspect.signature(func).parameters
    allowed = sorted(
        n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in ("copy", "return_model")
    )
    out: dict = {}
    for item in pairs:
        name, sep, raw = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise CLIError(f"--set expects NAME=VALUE, got {item!r}")
        if name not in allowed:
            raise CLIError(f"--set {name}: {func.__name__} has no such option; choose from {', '.join(allowed)}")
        try:
            out[name] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            out[name] = raw.strip()
    return out


# ---------------------------------------------------------------------------------------------------------------
# simulate
# ---------------------------------------------------------------------------------------------------------------
def _add_simulate(subparsers) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="simulate a dataset with known ground truth and write it as .h5ad",
        description="Simulate one of the ground-truth datasets of `waddington.datasets` and write it as .h5ad.",
    )
    parser.add_argument("model", choices=sorted(_SIMULATORS), help="which simulator to run")
    parser.add_argument("-o", "--output", required=True, help="output .h5ad file")
    parser.add_argument("--n-cells", type=_positive_int, default=None, help="number of cells (toggle-switch)")
    parser.add_argument("--n-genes", type=_positive_int, default=None, help="number of genes (toggle-switch)")
    parser.add_argument(
        "--n-cells-per-time",
        type=_positive_int,
        default=None,
        help="sequenced cells per time point (population-1d, population-branching)",
    )
    parser.add_argument(
        "--no-preprocess",
        action="store_true",
        help="toggle-switch: skip PCA, neighbours, clustering, DPT and UMAP (X is log-normalised either way)",
    )
    parser.add_argument("--random-state", type=_nonnegative_int, default=0, help="seed (default 0)")
    parser.set_defaults(func=_run_simulate)


def _run_simulate(args: argparse.Namespace) -> None:
    from . import datasets

    out = _writable_path(args.output)
    kwargs: dict = {"random_state": args.random_state}
    if args.model == "toggle-switch":
        if args.n_cells_per_time is not None:
            raise CLIError("--n-cells-per-time applies to population-1d and population-branching, not toggle-switch")
        if args.n_cells is not None:
            kwargs["n_cells"] = args.n_cells
        if args.n_genes is not None:
            kwargs["n_genes"] = args.n_genes
        kwargs["preprocess"] = not args.no_preprocess
    else:
        if args.n_cells is not None or args.n_genes is not None or args.no_preprocess:
            raise CLIError(f"--n-cells, --n-genes and --no-preprocess apply to toggle-switch, not {args.model}")
        if args.n_cells_per_time is not None:
            kwargs["n_cells_per_time"] = args.n_cells_per_time
    simulate: Callable = getattr(datasets, _SIMULATORS[args.model])
    adata = simulate(**kwargs)
    _write_h5ad(adata, out)
    logging.getLogger("waddington").info("wrote %d cells × %d genes to %s", adata.n_obs, adata.n_vars, out)


# ---------------------------------------------------------------------------------------------------------------
# lsd
# ---------------------------------------------------------------------------------------------------------------
def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return number


def _nonnegative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {value!r}") from None
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {value!r}")
    return number


def _json_phylogeny(value: str) -> dict[str, list[str]]:
    import json

    try:
        tree = json.loads(value)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(
            f'expected JSON such as \'{{"Prog": ["Ery"]}}\', got {value!r} ({err})'
        ) from None
    if not isinstance(tree, dict) or not all(isinstance(v, list) for v in tree.values()):
        raise argparse.ArgumentTypeError(f"expected a JSON object of cluster -> list of child clusters, got {value!r}")
    return {str(k): [str(c) for c in v] for k, v in tree.items()}


def _add_lsd(subparsers) -> None:
    parser = subparsers.add_parser(
        "lsd",
        help="fit Latent Space Dynamics (a Waddington potential) to an .h5ad file",
        description=(
            "Build the LSD prior from a pseudotime (wd.pp.lsd_prior) and fit LSD (wd.tl.lsd). The input needs "
            "log-normalised X, raw counts in a layer, a kNN graph (sc.pp.neighbors) and the pseudotime column."
        ),
    )
    parser.add_argument("input", help="input .h5ad file")
    parser.add_argument("-o", "--output", required=True, help="output .h5ad file")
    parser.add_argument(
        "--time-key",
        default=None,
        help="obs column with the prior pseudotime, e.g. dpt_pseudotime (omit to reuse obsp['lsd_prior_transitions'])",
    )
    parser.add_argument("--beta", type=_nonnegative_float, default=50.0, help="prior inverse temperature (default 50)")
    parser.add_argument(
        "--graph-key",
        default=None,
        help="obsp key of the kNN graph (default: connectivities for a new prior, else the prior's graph)",
    )
    parser.add_argument("--cluster-key", default=None, help="obs column of the clusters named in --phylogeny")
    parser.add_argument(
        "--phylogeny",
        type=_json_phylogeny,
        default=None,
        help='allowed cluster transitions as JSON, e.g. \'{"Prog": ["Ery", "Mye"]}\' (needs --cluster-key)',
    )
    parser.add_argument(
        "--descendants", action="store_true", help="with --phylogeny, also allow transitions to all descendants"
    )
    parser.add_argument("--layer", default="raw", help="layer with raw counts (default raw)")
    parser.add_argument("--epochs", type=_positive_int, default=30, help="training epochs (default 30)")
    parser.add_argument("--walks", type=_positive_int, default=4096, help="walks per epoch (default 4096)")
    parser.add_argument("--walk-length", type=_positive_int, default=10, help="cells per walk (default 10)")
    parser.add_argument("--batch-size", type=_positive_int, default=256, help="walks per step (default 256)")
    parser.add_argument("--lr", type=_positive_float, default=1e-3, help="learning rate (default 1e-3)")
    parser.add_argument("--z-dim", type=_positive_int, default=10, help="cell-state dimension (default 10)")
    parser.add_argument(
        "--transition-beta", type=_nonnegative_float, default=50.0, help="inverse temperature of lsd_transitions"
    )
    parser.add_argument("--key-added", default="lsd", help="prefix of the output slots (default lsd)")
    parser.add_argument("--accelerator", default="auto", help="auto, cpu or gpu (default auto)")
    parser.add_argument("--random-state", type=_nonnegative_int, default=0, help="seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_set_option(parser, "wd.tl.lsd", "--set ode_method=rk4 or --set 'W_coeff=(1e-3, 1e-5)'")
    parser.set_defaults(func=_run_lsd)


def _run_lsd(args: argparse.Namespace) -> None:
    from . import pp, tl

    out = _writable_path(args.output)
    extra = _keyword_options(args.options, tl.lsd)
    adata = _readable_h5ad(args.input)
    if args.time_key is not None:
        pp.lsd_prior(
            adata,
            args.time_key,
            beta=args.beta,
            graph_key=args.graph_key or "connectivities",
            phylogeny=args.phylogeny,
            cluster_key=args.cluster_key,
            descendants=args.descendants,
        )
    elif "lsd_prior_transitions" not in adata.obsp:
        raise CLIError(
            "no prior in obsp['lsd_prior_transitions']; pass --time-key naming a pseudotime column (e.g. dpt_pseudotime)"
        )
    elif args.phylogeny is not None or args.cluster_key is not None:
        raise CLIError("--phylogeny and --cluster-key build a new prior; pass --time-key with them")
    kwargs = {
        "layer": args.layer,
        "n_epochs": args.epochs,
        "n_walks": args.walks,
        "walk_length": args.walk_length,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "z_dim": args.z_dim,
        "transition_beta": args.transition_beta,
        "graph_key": args.graph_key,
        "key_added": args.key_added,
        "accelerator": args.accelerator,
        "random_state": args.random_state,
        "progress_bar": not args.no_progress,
    }
    tl.lsd(adata, **{**kwargs, **extra})
    _write_h5ad(adata, out)
    logging.getLogger("waddington").info("wrote %s", out)


# ---------------------------------------------------------------------------------------------------------------
# pseudodynamics
# ---------------------------------------------------------------------------------------------------------------
def _add_pseudodynamics(subparsers) -> None:
    parser = subparsers.add_parser(
        "pseudodynamics",
        help="fit pseudodynamics+ (growth, drift, diffusion of a population) to an .h5ad file",
        description=(
            "Fit pseudodynamics+ (wd.tl.pseudodynamics). The input needs a time column, a state space in obsm and "
            "population sizes per time point in uns['pop'] = {t, mean, std, n_lib}."
        ),
    )
    parser.add_argument("input", help="input .h5ad file")
    parser.add_argument("-o", "--output", required=True, help="output .h5ad file")
    parser.add_argument("--time-key", required=True, help="obs column with the experimental time, e.g. day")
    parser.add_argument("--state-key", required=True, help="obsm key of the state space, e.g. X_diffmap")
    parser.add_argument("--n-dims", type=_positive_int, default=None, help="use the first n columns of the state")
    parser.add_argument(
        "--population",
        default="pop",
        help="uns key of the population table (default pop); None uses the numbers of sequenced cells (relative growth)",
    )
    parser.add_argument("--pseudotime-key", default=None, help="obs pseudotime orienting the kNN displacement")
    parser.add_argument("--split-key", default="pd_split", help="obs column of the train/val split (default pd_split)")
    parser.add_argument("--key-added", default="pseudodynamics", help="uns key of the results (default pseudodynamics)")
    parser.add_argument(
        "--pretrain-steps", type=_nonnegative_int, default=2000, help="density pre-training steps (default 2000)"
    )
    parser.add_argument("--epochs", type=_positive_int, default=100, help="maximum epochs (default 100)")
    parser.add_argument("--steps-per-epoch", type=_positive_int, default=None, help="training steps per epoch")
    parser.add_argument("--batch-size", type=_positive_int, default=200, help="cells per step (default 200)")
    parser.add_argument("--lr", type=_positive_float, default=3e-3, help="learning rate (default 3e-3)")
    parser.add_argument(
        "--growth-loss-mode", choices=["logratio", "massbalance", "legacy"], default="logratio", help="growth loss"
    )
    parser.add_argument("--growth-pop-ref", choices=["popmean", "cellsum"], default="popmean", help="growth target")
    parser.add_argument("--residual-mode", choices=["raw", "ginv", "rcg"], default="raw", help="PDE residual form")
    parser.add_argument("--cfm-weight", type=float, default=None, help="conditional flow matching weight")
    parser.add_argument(
        "--cfm-unbalanced-reg-m", type=_positive_float, default=None, help="unbalanced OT pairing (default balanced)"
    )
    parser.add_argument("--density-estimator", choices=["kde", "gmm"], default="kde", help="per-time density")
    parser.add_argument("--accelerator", default="auto", help="auto, cpu or gpu (default auto)")
    parser.add_argument("--random-state", type=_nonnegative_int, default=0, help="seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_set_option(parser, "wd.tl.pseudodynamics", "--set pretrain_steps=500 or --set 'd_clip=(0.001, 1)'")
    parser.set_defaults(func=_run_pseudodynamics)


def _run_pseudodynamics(args: argparse.Namespace) -> None:
    from . import tl

    out = _writable_path(args.output)
    extra = _keyword_options(args.options, tl.pseudodynamics)
    adata = _readable_h5ad(args.input)
    kwargs = {
        "time_key": args.time_key,
        "state_key": args.state_key,
        "n_dims": args.n_dims,
        "population": None if args.population == "None" else args.population,
        "pseudotime_key": args.pseudotime_key,
        "split_key": args.split_key,
        "key_added": args.key_added,
        "pretrain_steps": args.pretrain_steps,
        "max_epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "growth_loss_mode": args.growth_loss_mode,
        "growth_pop_ref": args.growth_pop_ref,
        "residual_mode": args.residual_mode,
        "cfm_unbalanced_reg_m": args.cfm_unbalanced_reg_m,
        "density_estimator": args.density_estimator,
        "accelerator": args.accelerator,
        "random_state": args.random_state,
        "progress_bar": not args.no_progress,
    }
    if args.cfm_weight is not None:
        kwargs["cfm_weight"] = args.cfm_weight
    tl.pseudodynamics(adata, **{**kwargs, **extra})
    _write_h5ad(adata, out)
    logging.getLogger("waddington").info("wrote %s", out)


# ---------------------------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------------------------
def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="simulate a toggle switch, fit the models and write figures and a scored report",
        description=(
            "Simulate the toggle switch; run the prior, LSD, fates and knockouts of both master regulators; fit "
            "pseudodynamics to the branching population; write demo.h5ad, figures and a scored report.md."
        ),
    )
    parser.add_argument("--out", default="waddington_demo", help="output directory (default waddington_demo/)")
    parser.add_argument("--n-cells", type=_positive_int, default=2000, help="simulated cells (default 2000)")
    parser.add_argument("--epochs", type=_positive_int, default=30, help="LSD training epochs (default 30)")
    parser.add_argument("--random-state", type=_nonnegative_int, default=0, help="seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> None:
    from ._demo import run_demo

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {str(out)!r} exists and is not a directory")
    if not out.parent.exists():
        raise CLIError(f"cannot create {str(out)!r}: directory {str(out.parent)!r} does not exist")
    run_demo(
        out,
        n_cells=args.n_cells,
        n_epochs=args.epochs,
        random_state=args.random_state,
        progress_bar=not args.no_progress,
    )


# ---------------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``waddington`` command with all its subcommands."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="waddington",
        description="Waddington landscapes (LSD) and population dynamics (pseudodynamics+) for AnnData.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print warnings and errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    _add_simulate(subparsers)
    _add_lsd(subparsers)
    _add_pseudodynamics(subparsers)
    _add_demo(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``waddington`` command; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        args.func(args)
    except CLIError as err:
        sys.stderr.write(f"waddington {args.command}: error: {err}\n")
        return 2
    except (KeyError, ValueError, TypeError) as err:
        # Validation errors of the library already name the slot and the fix; show them as one line.
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        sys.stderr.write(f"waddington {args.command}: error: {message}\n")
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
