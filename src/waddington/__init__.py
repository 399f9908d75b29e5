"""waddington: Waddington landscapes and population dynamics of cell differentiation for AnnData."""

from importlib.metadata import PackageNotFoundError, version

from . import datasets, kernels, pl, pp, tl

try:
    __version__ = version("waddington")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "datasets", "kernels", "pl", "pp", "tl"]
