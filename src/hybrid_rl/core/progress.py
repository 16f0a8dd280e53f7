"""Progress that reads well everywhere: a live tqdm bar on a terminal; elsewhere (a log
file, CI output, a cluster's job log) one plain line at a fixed interval, so a log reads top
to bottom instead of holding hundreds of carriage-return frames on one line. The usual
switch ``TQDM_DISABLE=1`` silences both."""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator

PLAIN_INTERVAL_S = float(os.environ.get("HYBRID_RL_PROGRESS_INTERVAL_S", "60"))  # seconds between plain progress lines


def _disabled_by_environment() -> bool:
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")


def progress_bar(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "", disable: bool = False, **tqdm_options: Any) -> Any:
    """A tqdm bar when stderr is a terminal, else a ``PlainProgress`` with the same methods
    that the package uses (update, set_postfix, set_postfix_str, write, close, iteration,
    context manager). ``tqdm_options`` go to tqdm; ``initial``, ``unit`` and ``unit_scale``
    are honoured by the plain form too."""
    if disable or _disabled_by_environment():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, disable=True)
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, **tqdm_options)
    return PlainProgress(iterable, total=total, desc=desc, initial=tqdm_options.get("initial", 0), unit=tqdm_options.get("unit", "it"),
                         unit_scale=bool(tqdm_options.get("unit_scale", False)))


def _count(value: float, scale: bool) -> str:
    if scale:
        for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(value) >= size:
                return f"{value / size:.3g}{unit}"
    return f"{value:,.0f}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


class PlainProgress:
    """tqdm's interface as one line per ``PLAIN_INTERVAL_S`` (and one at the end):
    ``desc: 45% 4,500/10,000 step, 120 step/s, elapsed 0:37, ETA 0:45, runs 3/8``."""

    def __init__(self, iterable: Iterable | None = None, *, total: float | None = None, desc: str = "", initial: float = 0, unit: str = "it",
                 unit_scale: bool = False, stream: Any = None, interval_s: float | None = None) -> None:
        self.iterable, self.total, self.desc, self.unit, self.unit_scale = iterable, total, desc, unit, unit_scale
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            self.total = len(iterable)  # type: ignore[arg-type]
        self.n = self.start_n = self.n_at_last_line = initial
        self.stream = stream or sys.stderr
        self.interval_s = PLAIN_INTERVAL_S if interval_s is None else interval_s
        self.started = self.last_line = time.monotonic()
        self.postfix = ""
        self.closed = False

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}:" if self.desc else ""]
        if self.total:
            parts.append(f"{100.0 * self.n / self.total:3.0f}% {_count(self.n, self.unit_scale)}/{_count(self.total, self.unit_scale)} {self.unit},")
        else:
            parts.append(f"{_count(self.n, self.unit_scale)} {self.unit},")
        parts.append(f"{rate:,.3g} {self.unit}/s, elapsed {_duration(elapsed)}")
        if self.total and rate > 0 and self.n < self.total:
            parts[-1] += f", ETA {_duration((self.total - self.n) / rate)}"
        if self.postfix:
            parts[-1] += f", {self.postfix}"
        return " ".join(part for part in parts if part)

    def _emit(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self.last_line, self.n_at_last_line = time.monotonic(), self.n

    def update(self, n: float = 1) -> None:
        self.n += n
        if time.monotonic() - self.last_line >= self.interval_s:
            self._emit()

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def set_postfix(self, values: dict[str, Any] | None = None, refresh: bool = True, **more: Any) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in {**(values or {}), **more}.items())

    def note(self, text: str) -> None:
        """A progress line of one's own (an evaluation's result), on the progress stream."""
        print(text, file=self.stream, flush=True)

    def write(self, text: str) -> None:
        """A message line to stdout, as ``tqdm.write`` prints it (progress lines go to stderr)."""
        print(text, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n != self.n_at_last_line:  # the end, unless the last line already said it
                self._emit()

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
