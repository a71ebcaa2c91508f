"""Where a sweep is: trainings done, running, failed and to go, and when it should end.

The estimate starts from the cost model (:mod:`kdsearch.cost`: ``bench --save`` figures or
the reference devices') and, once trainings finish, follows the rate at which they finish.
On a terminal the state is one line redrawn in place each second; in a log it is a plain
line at most every :data:`LOG_INTERVAL_S` seconds. Nothing here touches Ray or torch.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

__all__ = ["SweepProgress", "format_duration", "LOG_INTERVAL_S", "NO_ESTIMATE"]

#: Seconds between two plain progress lines in a log (a file or a pipe, not a terminal).
LOG_INTERVAL_S = 30.0
#: What the ETA rests on before any training finishes when the cost model knows no throughput.
NO_ESTIMATE = "unknown until a training finishes, or until `python -m kdsearch.bench --save` has run before the sweep"
#: Seconds between two redraws of the live line on a terminal.
_REDRAW_S = 1.0


def format_duration(seconds: float) -> str:
    """``42 s``, ``7 min 05 s``, ``2 h 03 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class SweepProgress:
    """Counts a sweep's trainings and prints where it is.

    Args:
        total: trainings this run will start (rows that share a training count once).
        estimated_seconds: the cost model's wall time for all of them, or ``None`` when no
            throughput is known for this device.
        stream: where the line goes (stderr by default).
        live: redraw one line in place (a terminal); ``None`` asks the stream.
        enabled: ``False`` prints nothing (``--quiet``).
        clock: the time source (tests pass a fake one).
    """

    def __init__(self, total: int, estimated_seconds: float | None = None, *, stream: TextIO | None = None,
                 live: bool | None = None, enabled: bool = True, clock=time.monotonic) -> None:
        self.total = total
        self.estimated_seconds = estimated_seconds
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.enabled = enabled and total > 0
        self.clock = clock
        self.started = clock()
        self.done = self.failed = 0
        self.slots = 0  # the most trainings seen running at once
        self._running: dict[str, float] = {}  # trial id -> when it started
        self._durations: list[float] = []  # of the finished trainings
        self._lock = threading.RLock()
        self._shown = ""  # the live line now on screen
        self._last_line = -float("inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict:
        # Ray pickles a sweep's callbacks with its experiment state: a copy keeps the counts
        # and prints nothing (the lock, the clock thread and the stream stay here).
        state = {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_stop", "_thread", "stream", "clock")}
        return {**state, "enabled": False}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.stream, self.clock = sys.stderr, time.monotonic
        self._lock, self._stop, self._thread = threading.RLock(), threading.Event(), None

    # ----------------------------------------------------------------- counting

    @property
    def remaining(self) -> int:
        """Trainings not finished and not running."""
        return max(0, self.total - self.done - self.failed - self.running)

    @property
    def running(self) -> int:
        return len(self._running)

    def trial_started(self, trial_id: str) -> None:
        """A training started (a restart of a running one changes nothing)."""
        with self._lock:
            self._running.setdefault(trial_id, self.clock())
            self.slots = max(self.slots, len(self._running))
        self.update()

    def trial_finished(self, trial_id: str, ok: bool = True) -> None:
        """A training ended: ``ok`` (a result: ok, diverged, stopped early) or failed."""
        with self._lock:
            started = self._running.pop(trial_id, None)
            if started is not None:
                self._durations.append(self.clock() - started)
            if ok:
                self.done += 1
            else:
                self.failed += 1
        self.update()

    def eta_seconds(self) -> tuple[float | None, str]:
        """Seconds left and what they rest on: the finished trainings' mean duration, else the cost model.

        With finished trainings: the running ones' expected rest plus the queued ones' mean
        duration each, shared by as many trainings as have run at once.
        """
        with self._lock:
            finished = self.done + self.failed
            if self.total - finished <= 0:
                return 0.0, "done"
            now = self.clock()
            if self._durations:
                mean = sum(self._durations) / len(self._durations)
                rest = sum(max(mean - (now - start), 0.0) for start in self._running.values())
                return (rest + self.remaining * mean) / max(self.slots, 1), f"from {finished} finished"
            if self.estimated_seconds is not None:
                first = min(self._running.values(), default=now)  # Ray's start-up is not training
                return max(self.estimated_seconds - (now - first), 0.0), "cost model"
            return None, NO_ESTIMATE

    def text(self) -> str:
        """``trainings 3/20 done · 2 running · 0 failed · 15 to go · 4 min 10 s elapsed · ETA 9 min (…)``."""
        eta, basis = self.eta_seconds()
        eta_text = "ETA ?" if eta is None else f"ETA {format_duration(eta)}"
        return (f"trainings {self.done}/{self.total} done · {self.running} running · {self.failed} failed · "
                f"{self.remaining} to go · {format_duration(self.clock() - self.started)} elapsed · "
                f"{eta_text} ({basis})")

    # ----------------------------------------------------------------- printing

    def start(self) -> None:
        """Print the first line now, then keep the line's clock ticking (a log gets a line each
        :data:`LOG_INTERVAL_S` seconds)."""
        if not self.enabled:
            return
        self.update(force=True)
        if self._thread is None:
            self._thread = threading.Thread(target=self._tick, name="kdsearch-progress", daemon=True)
            self._thread.start()

    def _tick(self) -> None:
        while not self._stop.wait(_REDRAW_S):
            self.update()

    def update(self, force: bool = False) -> None:
        """Redraw the live line, or print a log line if it is time for one (``force``: now)."""
        if not self.enabled:
            return
        with self._lock:
            if self.live:
                self._draw(self.text())
            elif force or self.clock() - self._last_line >= LOG_INTERVAL_S:
                self._last_line = self.clock()
                self.stream.write(f"kdsearch: {self.text()}\n")
                self.stream.flush()

    def write(self, text: str, stream: TextIO | None = None) -> None:
        """Print ``text`` above the live line (a finished trial's line)."""
        stream = stream or sys.stdout
        with self._lock:
            if self.live and self._shown:
                self._clear()
            stream.write(text + "\n")
            stream.flush()
            if self.live and self.enabled:
                self._draw(self.text())

    def close(self) -> None:
        """Stop redrawing and leave the last state on its own line."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * _REDRAW_S)
            self._thread = None
        with self._lock:
            if self.enabled and self.live and self._shown:
                self.stream.write("\n")
                self.stream.flush()
                self._shown = ""

    def _draw(self, text: str) -> None:
        self.stream.write("\r\033[K" + text)
        self.stream.flush()
        self._shown = text

    def _clear(self) -> None:
        self.stream.write("\r\033[K")
        self.stream.flush()
        self._shown = ""
