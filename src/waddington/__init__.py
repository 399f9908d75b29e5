"""waddington: Waddington landscapes and population dynamics of cell differentiation for AnnData."""

from importlib.metadata import PackageNotFoundError, version

from . import datasets, pl, pp, tl


def __getattr__(name: str):
    # `wd.kernels` subclasses CellRank's kernels, and importing CellRank loads scanpy, scVelo, seaborn and
    # matplotlib (~185 MiB, seconds); only users of the kernels pay for it, on first access
    if name == "kernels":
        import importlib

        module = importlib.import_module(f"{__name__}.kernels")
        globals()["kernels"] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


try:
    __version__ = version("waddington")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "datasets", "kernels", "pl", "pp", "tl"]
