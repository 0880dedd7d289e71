"""Sphinx configuration: MyST Markdown pages, autodoc + napoleon API reference, furo theme.

Build (from the repository root)::

    pip install -e ".[docs]"
    sphinx-build -W -b html docs docs/_build/html
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

project = "lightning-unlearn"
author = "lightning-unlearn contributors"
copyright = "lightning-unlearn contributors"  # noqa: A001
release = version = "0.1.0"

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_inherit_docstrings = False
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
nitpicky = False

html_theme = "furo"
html_title = "lightning-unlearn"
html_static_path: list[str] = []


class CliHelp(Directive):
    """``{cli-help} COMMAND``: the ``--help`` text of ``lightning-unlearn COMMAND`` (or of the tool itself
    with no argument), rendered from the parser at build time so it cannot drift from the code."""
    optional_arguments = 1

    def run(self):
        from lightning_unlearn.cli import build_parser
        os.environ["COLUMNS"] = "100"
        parser = build_parser()
        if self.arguments:
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            parser = sub.choices[self.arguments[0]]
        text = parser.format_help()
        return [nodes.literal_block(text, text, language="text")]


def setup(app):
    app.add_directive("cli-help", CliHelp)
