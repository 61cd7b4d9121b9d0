"""Progress of a long check, told to whoever listens: the CLI's display on a terminal, or nobody.

The library says where it is (`stage`, `advance`, `announce`); it never draws anything itself. A
listener is installed for one call with `listening(listener)`; without one every call is a no-op
costing one context-variable read, so the Python API and the tests pay nothing. A context variable
(not a parameter threaded through every function) keeps the measuring code free of UI plumbing.
This module does not import torch or rich.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol


class Listener(Protocol):
    def stage(self, description: str, total: int | None) -> None:
        """A new stage starts: `total` units of work (forward/backward passes), or None if unknown."""

    def advance(self, amount: int) -> None:
        """`amount` units of the current stage are done."""

    def announce(self, text: str) -> None:
        """A line worth saying once, up front (the batch, an estimate)."""


_listener: ContextVar[Listener | None] = ContextVar("diagnose_progress_listener", default=None)


@contextmanager
def listening(listener: Listener | None) -> Iterator[None]:
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def stage(description: str, total: int | None = None) -> None:
    listener = _listener.get()
    if listener is not None:
        listener.stage(description, total)


def advance(amount: int = 1) -> None:
    listener = _listener.get()
    if listener is not None:
        listener.advance(amount)


def announce(text: str) -> None:
    listener = _listener.get()
    if listener is not None:
        listener.announce(text)
