"""Progress of long work (rows scored, picks ranked, steps trained): done, rate, time left.

On a terminal, a tqdm bar. Elsewhere (a log file, `ray job logs`, a Ray worker's forwarded
output) one log line at most every RAYSEL_PROGRESS_SECONDS (default 60) and one at the end,
so a log file gets a handful of lines, not a bar redrawn into thousands.

    with Progress(total=len(rows), desc="scoring", unit="rows") as bar:
        for batch in batches:
            bar.update(len(batch))

`terminal_bar=False` is for work that Ray Data already draws a bar for on a terminal (its
passes over the pool): there only the log lines are kept, for when no terminal shows Ray's.
"""

from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger(__name__)

DEFAULT_SECONDS = 60.0
FINAL_LINE_AFTER = 5.0  # seconds: quicker work says nothing (its caller logs what it did)


def log_interval() -> float:
    return float(os.environ.get("RAYSEL_PROGRESS_SECONDS", DEFAULT_SECONDS))


def on_terminal() -> bool:
    return sys.stderr.isatty()


class Progress:
    def __init__(self, total: int, desc: str, unit: str = "rows", terminal_bar: bool = True,
                 interval: float | None = None, logger: logging.Logger | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.done, self.extra = 0, ""
        self.log = logger or log
        self.interval = log_interval() if interval is None else interval
        self.started = self.last_line = time.perf_counter()
        self.bar, self.quiet = None, False
        if on_terminal():
            if terminal_bar:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=desc, unit=f" {unit}", dynamic_ncols=True)
            else:
                self.quiet = True  # Ray Data's own bar shows it

    def update(self, n: int = 1, note: str = "") -> None:
        """`n` more done; `note` (a loss, say) goes at the end of the next line."""
        self.done += n
        self.extra = note or self.extra
        if self.bar is not None:
            self.bar.update(n)
            if note:
                self.bar.set_postfix_str(note, refresh=False)
        elif not self.quiet and time.perf_counter() - self.last_line >= self.interval:
            self._line()

    def line(self) -> None:
        """A log line now (off a terminal), whatever the interval says."""
        if self.bar is None and not self.quiet:
            self._line()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif not self.quiet and self.done and time.perf_counter() - self.started >= FINAL_LINE_AFTER:
            self._line(final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _line(self, final: bool = False) -> None:
        self.last_line = time.perf_counter()
        self.log.info("%s", self.status(final))

    def status(self, final: bool = False) -> str:
        """"scoring: 1200/3000 rows (40%), 3.1 rows/s, 9m41s left" (the final line: the time taken)."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = self.done / elapsed
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        text = f"{self.desc}: {self.done}/{self.total} {self.unit}{share}, {_rate(rate, self.unit)}"
        if final:
            text += f", took {_duration(elapsed)}"
        elif rate > 0 and self.total:
            text += f", {_duration(max(0.0, self.total - self.done) / rate)} left"
        return text + (f", {self.extra}" if self.extra else "")


def _rate(rate: float, unit: str) -> str:
    if 0 < rate < 0.1:
        return f"{1 / rate:.3g} s per {unit.rstrip('s')}"
    return f"{rate:,.0f} {unit}/s" if rate >= 100 else f"{rate:.3g} {unit}/s"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"
