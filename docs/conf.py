"""Sphinx configuration for the waddington documentation."""

from datetime import datetime
from importlib.metadata import metadata
from pathlib import Path

HERE = Path(__file__).parent

info = metadata("waddington")
project = info["Name"]
author = "waddington developers"
copyright = f"{datetime.now():%Y}, {author}"
version = info["Version"]
release = version

extensions = [
    "myst_nb",
    "sphinx_copybutton",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",
]

templates_path = ["_templates"]
html_static_path = ["_static"]
source_suffix = {".rst": "restructuredtext", ".ipynb": "myst-nb", ".md": "myst-nb"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]

autosummary_generate = True
autodoc_member_order = "groupwise"
default_role = "literal"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_include_init_with_doc = False
napoleon_use_rtype = True
napoleon_use_param = True
typehints_defaults = "braces"
always_document_param_types = False
myst_heading_anchors = 6
myst_enable_extensions = ["amsmath", "colon_fence", "deflist", "dollarmath", "html_image"]
nb_execution_mode = "off"  # notebooks are committed with their outputs
nb_merge_streams = True
# Each tutorial notebook lives in tutorials/ at the top of the repository; docs/tutorials links to that folder.
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header"]

# No intersphinx: CI and our machines build the docs offline, and an unreachable inventory is a warning.
nitpicky = False

html_theme = "sphinx_book_theme"
html_title = "waddington"
html_theme_options = {
    "repository_url": "https://github.com/waddington-dev/waddington",
    "use_repository_button": True,
    "path_to_docs": "docs/",
    "navigation_with_keys": False,
}
pygments_style = "default"


def _plain_cite(name, rawtext, text, lineno, inliner, options=None, content=None):
    """Render ``:cite:`key``` (used in docstrings that LSDKernel inherits from CellRank) as the key in brackets."""
    from docutils import nodes

    return [nodes.inline(rawtext, f"[{text}]")], []


def setup(app):
    """Register the ``cite`` role without pulling in sphinxcontrib-bibtex (we have no bibliography)."""
    app.add_role("cite", _plain_cite)
