"""The public namespaces declare what they export, and the API docs list all of it."""

import inspect
from pathlib import Path

import pytest

import waddington as wd


@pytest.mark.parametrize("name", ["pp", "tl", "pl", "datasets", "kernels"])
def test_all_lists_exactly_the_public_functions_and_classes(name):
    module = getattr(wd, name)
    public = {
        n
        for n, obj in vars(module).items()
        if not n.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
    }
    assert set(module.__all__) == public


def test_api_docs_list_every_export():
    text = (Path(__file__).parents[1] / "docs" / "api.md").read_text()
    for name in ["pp", "tl", "pl", "datasets", "kernels"]:
        for export in getattr(wd, name).__all__:
            assert f"{name}.{export}" in text, f"{name}.{export} missing from docs/api.md"


def test_import_leaves_heavy_optional_modules_unloaded():
    # each of these costs 15-100 MiB of resident memory; they load when a function needs them, not at import
    import subprocess
    import sys

    heavy = ["cellrank", "lightning", "matplotlib", "numba", "scanpy", "sklearn"]
    heavy += ["scipy.interpolate", "scipy.spatial", "scipy.stats"]
    code = f"import sys, waddington; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert out == "", f"`import waddington` loaded {out}"
