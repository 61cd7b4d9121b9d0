"""Renderers: each turns a `Report` into a string (terminal text, JSON, Markdown, JUnit XML)."""

from __future__ import annotations

from diagnose.render.json import render_json
from diagnose.render.junit import render_junit
from diagnose.render.markdown import render_markdown
from diagnose.render.terminal import render_terminal

__all__ = ["render_json", "render_junit", "render_markdown", "render_terminal"]
