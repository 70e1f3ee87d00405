"""Counting work done for a person to watch: a rich bar on a terminal, plain lines in a file or a pipe."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["counter", "duration"]


def duration(seconds: float) -> str:
    """``3725`` -> ``1h02m05s``; ``65`` -> ``1m05s``; ``4.2`` -> ``4s``."""
    s = round(max(seconds, 0.0))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


@contextmanager
def counter(
    description: str, total: int | None, stream: TextIO | None = None, interval: float = 30.0
) -> Iterator[Callable[[int], None]]:
    """A function ``advance(n)`` counting ``n`` more of ``total`` items done. On a terminal a rich bar; where
    ``stream`` (default stdout) is a file or a pipe, one line per ``interval`` seconds and one at the end, e.g.
    ``predicting 40/100 images elapsed 1m02s eta 1m33s`` (rich's bar would print nothing until the end there)."""
    stream = stream or sys.stdout
    if stream.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)
        return
    start = last = time.monotonic()
    done = 0

    def line(now: float) -> str:
        text = f"{description} {done}" + (f"/{total}" if total else "") + f" elapsed {duration(now - start)}"
        if total and done:
            text += f" eta {duration((now - start) / done * (total - done))}"
        return text

    def advance(n: int) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if now - last >= interval:
            last = now
            print(line(now), file=stream, flush=True)

    yield advance
    print(line(time.monotonic()) + " (done)", file=stream, flush=True)
