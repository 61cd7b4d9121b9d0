"""Short, single-line renderings of exceptions for DiagnoseError messages."""

from __future__ import annotations


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message`, so a wrapped error still fits the one-line contract."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
