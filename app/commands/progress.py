"""Progress of a long command on stderr: a bar on a terminal, a plain line every few seconds elsewhere."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.text import Text

LINE_SECONDS = 10.0  # away from a terminal (a CI log, a pipe): one line this often
ESTIMATE_SHARE = 0.05  # a new estimated total moves the bar only when it differs by more than this share


class RateColumn(ProgressColumn):
    """Show how many units a second are done, e.g. '41.3 users/s'."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="progress.data.speed")


class Progress:
    """Count work done towards a known total and show it on stderr, then say in one line what was done.

    On a terminal: a bar with the count, the rate and the time left (rich). Elsewhere (a pipe, a CI log, a
    cron mail): a plain line every `line_seconds`, since a redrawn bar there is one unreadable line.
    Use as a context manager; `advance()` after each unit.
    """

    def __init__(self, label: str, total: int, unit: str = "users", *, stream: TextIO | None = None,
                 line_seconds: float = LINE_SECONDS, terminal: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self.stream = stream or sys.stderr
        self.line_seconds = line_seconds
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self._clock = clock
        self._started = self._last_line = clock()
        self._bar: RichProgress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> Progress:
        self._started = self._last_line = self._clock()
        if self.terminal:
            console = Console(file=self.stream, force_terminal=True)
            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     RateColumn(self.unit), TimeRemainingColumn(), console=console,
                                     redirect_stdout=False, redirect_stderr=False)
            self._task = self._bar.add_task(self.label, total=self.total)
            self._bar.start()
        return self

    def advance(self, count: int = 1) -> None:
        """Count units done; away from a terminal, write a line when the last one is line_seconds old."""
        self.done += count
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, count)
            return
        now = self._clock()
        if now - self._last_line >= self.line_seconds:
            self._last_line = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def estimate(self, total: int) -> None:
        """Change the total when it is only estimated as the work goes (e.g. lines of files read so far).

        The bar takes a new total only when it moved by more than ESTIMATE_SHARE: rich forgets the rate (and
        so the time left) each time a task's total changes.
        """
        total = max(total, self.done)
        if self._bar is not None and self._task is not None:
            if abs(total - self.total) <= ESTIMATE_SHARE * max(self.total, 1):
                return
            self._bar.update(self._task, total=total)
        self.total = total

    def line(self, now: float) -> str:
        """Return the progress so far: count, share, rate and time left."""
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        share = self.done / self.total if self.total else 1.0
        left = f", about {_duration((self.total - self.done) / rate)} left" if rate else ""
        return f"{self.label}: {self.done:,}/{self.total:,} {self.unit} ({share:.0%}), {rate:,.1f} {self.unit}/s{left}"

    def summary(self) -> str:
        """Return one line saying how much was done, in how long."""
        elapsed = self._clock() - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        return f"{self.label}: {self.done:,} {self.unit} in {_duration(elapsed)} ({rate:,.1f} {self.unit}/s)"

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            if self._task is not None and self.done > self.total:  # an estimate fell short: end the bar full
                self._bar.update(self._task, total=self.done)
            self._bar.stop()
        self.stream.write(self.summary() + "\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    """Say a duration the way a person reads it: 4.2 s, 3 min 5 s, 2 h 10 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
