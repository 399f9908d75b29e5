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
        help="toggle-switch: skip normalisation, PCA, neighbours, clustering, DPT and UMAP",
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
