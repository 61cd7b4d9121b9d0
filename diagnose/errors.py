"""The two exceptions callers see: `DiagnoseError` (could not run: exit 2) and `UnhealthyModel`."""

from __future__ import annotations


class DiagnoseError(Exception):
    """The check could not run. The message says what went wrong and how to fix it, in one line."""


class UnhealthyModel(Exception):
    """Raised by `Report.raise_for_status` when a finding is at or above the fail-on severity."""

    def __init__(self, message: str, findings: tuple = ()) -> None:
        super().__init__(message)
        self.findings = findings


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message`, so a wrapped error still fits the one-line contract."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
