"""Short, single-line renderings of exceptions for DiagnoseError messages (shared with run/verify)."""

from __future__ import annotations

from diagnose.errors import one_line

__all__ = ["one_line"]
