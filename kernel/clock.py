"""Injectable clocks: server time is the billing time (SPEC §3), so tests and the demo move it.

``SystemClock`` is production. ``ManualClock`` is for in-process tests. ``FileClock`` lets a demo or
a test drive the time of a live server process: it reads an ISO-8601 UTC instant from a file and
adds the wall time elapsed since that file was written, so time keeps flowing (events get distinct
buckets) while the driver can jump a month ahead by rewriting the file. ``FrozenFileClock``
(``file-frozen:<path>``) answers the file's instant exactly, with no wall time added, so what a
driver sends gets the same timestamps on every machine and every run (the deterministic demo).
Both are only used when ``REVKERNEL_CLOCK`` names them explicitly; never set it in production.

``OffsetClock`` (``REVKERNEL_CLOCK=offset:<seconds>``) is the system clock shifted by a fixed
amount: a host whose clock is skewed, for fault tests and drills. Manual and file clocks are
*simulated* (``simulated = True``): they are off the real time on purpose, so the clock-skew
check reports them without alarming; system and offset clocks are host clocks and are checked.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

__all__ = [
    "Clock",
    "FileClock",
    "FrozenFileClock",
    "ManualClock",
    "OffsetClock",
    "SystemClock",
    "clock_from_spec",
    "format_utc",
    "is_simulated",
    "parse_utc",
    "write_clock_file",
]


class Clock(Protocol):
    def now(self) -> datetime:
        """Return the current instant, timezone-aware UTC."""
        ...


class SystemClock:
    simulated = False

    def now(self) -> datetime:
        return datetime.now(UTC)


class OffsetClock:
    """The system clock shifted by ``offset``: a host whose clock is skewed (fault tests)."""

    simulated = False

    def __init__(self, offset: timedelta) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


def is_simulated(clock: Clock) -> bool:
    """True for clocks that are off the real time on purpose (manual, file)."""
    return bool(getattr(clock, "simulated", False))


class ManualClock:
    """A clock that stands still until told to move (thread-safe)."""

    simulated = True

    def __init__(self, start: datetime) -> None:
        self._now = _require_aware(start)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, instant: datetime) -> None:
        with self._lock:
            self._now = _require_aware(instant)

    def advance(self, delta: timedelta) -> None:
        with self._lock:
            self._now = self._now + delta


class FileClock:
    """Time = instant written in ``path`` + wall time elapsed since the file was written."""

    simulated = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: tuple[float, datetime] | None = None

    def now(self) -> datetime:
        stat = os.stat(self.path)
        if self._cache is None or self._cache[0] != stat.st_mtime:
            base = parse_utc(self.path.read_text(encoding="utf-8").strip())
            self._cache = (stat.st_mtime, base)
        mtime, base = self._cache
        elapsed_s = max(0.0, time.time() - mtime)
        return base + timedelta(seconds=elapsed_s)


class FrozenFileClock:
    """Time = exactly the instant written in ``path`` (re-read whenever the file changes)."""

    simulated = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: tuple[int, datetime] | None = None

    def now(self) -> datetime:
        stat = os.stat(self.path)
        if self._cache is None or self._cache[0] != stat.st_mtime_ns:
            self._cache = (stat.st_mtime_ns, parse_utc(self.path.read_text(encoding="utf-8").strip()))
        return self._cache[1]


def write_clock_file(path: Path, instant: datetime) -> None:
    """Point every ``FileClock`` reading ``path`` at ``instant`` (atomically)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(format_utc(instant), encoding="utf-8")
    os.replace(tmp, path)


def clock_from_spec(spec: str) -> Clock:
    """Build a clock from ``system``, ``file:<path>``, ``file-frozen:<path>`` or ``offset:<seconds>``."""
    from kernel.errors import ConfigError

    if spec in ("", "system"):
        return SystemClock()
    if spec.startswith("file:"):
        return FileClock(Path(spec.removeprefix("file:")))
    if spec.startswith("file-frozen:"):
        return FrozenFileClock(Path(spec.removeprefix("file-frozen:")))
    if spec.startswith("offset:"):
        try:
            seconds = float(spec.removeprefix("offset:"))
        except ValueError:
            seconds = float("nan")
        if seconds != seconds or abs(seconds) == float("inf"):
            raise ConfigError(f"REVKERNEL_CLOCK=offset:<seconds> needs a number of seconds, not {spec!r}")
        return OffsetClock(timedelta(seconds=seconds))
    raise ConfigError(
        f"REVKERNEL_CLOCK must be 'system', 'file:<path>', 'file-frozen:<path>' or 'offset:<seconds>', not {spec!r}"
    )


def format_utc(instant: datetime) -> str:
    """Format as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (the CSV and hash format of SPEC §4.3, §5)."""
    return _require_aware(instant).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_utc(text: str) -> datetime:
    """Parse an ISO-8601 instant that names its offset; naive input is refused."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return _require_aware(parsed).astimezone(UTC)


def _require_aware(instant: datetime) -> datetime:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"naive datetime refused: {instant!r}")
    return instant
