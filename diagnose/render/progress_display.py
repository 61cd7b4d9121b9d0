"""The progress display of `diagnose check` on a terminal: rich's progress bar, on stderr.

It listens to `diagnose.progress`: one line that names the stage, a bar over its passes with the
elapsed and remaining time, and the plan of the run said once up front. It is transient (gone when
the report prints) so it never mixes with the report, and it is used only when stderr is a terminal
and --quiet is not given (a CI log gets no control characters).
"""

from __future__ import annotations

from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class ProgressDisplay:
    """A `diagnose.progress.Listener` drawing on `stream`; use as a context manager."""

    def __init__(self, stream: TextIO, *, prefix: str = "diagnose") -> None:
        self._console = Console(file=stream, highlight=False, markup=False, emoji=False)
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self._console,
            transient=True,
        )
        self._prefix = prefix
        self._task: TaskID | None = None

    def __enter__(self) -> "ProgressDisplay":
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._progress.stop()

    def stage(self, description: str, total: int | None) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(description, total=total)

    def advance(self, amount: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, amount)

    def announce(self, text: str) -> None:
        # printed above the live bar; it stays after the bar is gone (the batch is worth knowing)
        self._progress.console.print(f"{self._prefix}: {text}", soft_wrap=True, style="dim")
