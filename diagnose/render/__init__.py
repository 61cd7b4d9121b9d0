"""Renderers: each turns a `Report` into a string (terminal text, JSON, Markdown, JUnit XML, HTML).

`render_html` and `diagnose.render.figures` draw with matplotlib (the `diagnose[plot]` extra),
imported only when they are called: importing this package stays light.
"""

from __future__ import annotations

from diagnose.render.html import render_html
from diagnose.render.json import render_json
from diagnose.render.junit import render_junit
from diagnose.render.markdown import render_markdown
from diagnose.render.terminal import render_terminal

__all__ = ["render_html", "render_json", "render_junit", "render_markdown", "render_terminal"]
