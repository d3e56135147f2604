"""A terminal progress line (files and bytes), quiet when stderr is not a terminal."""

from __future__ import annotations

import sys
import time


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class TerminalProgress:
    def __init__(self, label: str, total_bytes: int | None = None, stream=None, interval: float = 0.1):
        self.label = label
        self.total = total_bytes
        self.stream = stream or sys.stderr
        self.interval = interval
        self.t0 = self.last = time.monotonic()
        self.shown = False
        self.files = self.nbytes = 0

    def update(self, files: int, nbytes: int, path: bytes = b"") -> None:
        self.files, self.nbytes = files, nbytes
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        self._draw(path)

    def _draw(self, path: bytes = b"") -> None:
        el = max(time.monotonic() - self.t0, 1e-6)
        s = f"{self.label}: {self.files} files, {human_bytes(self.nbytes)}"
        if self.total:
            s += f" / {human_bytes(self.total)} ({100 * self.nbytes / self.total:.0f}%)"
        s += f", {human_bytes(self.nbytes / el)}/s"
        if path:
            p = "/" + path.decode("utf-8", "replace")
            room = 100 - len(s)
            if room > 10:
                s += "  " + (p if len(p) <= room else "..." + p[-(room - 3):])
        self.stream.write("\r\x1b[K" + s)
        self.stream.flush()
        self.shown = True

    def waiting(self) -> None:
        """The operation waits for another writer's lock (called by the import before it moves its branch)."""
        self.stream.write("\r\x1b[K" + WAITING + "\n")
        self.stream.flush()

    def done(self) -> None:
        if not (self.shown or self.files or self.nbytes):   # nothing to count (gc, bundle apply): no line
            return
        self._draw()
        self.stream.write("\n")
        self.stream.flush()


class QuietProgress:
    """No display (-q, --json, stderr not a terminal): only the note that the command waits for another
    writer's lock, which scripts and the tests watch for."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr

    def update(self, files: int, nbytes: int, path: bytes = b"") -> None:
        pass

    def waiting(self) -> None:
        self.stream.write(WAITING + "\n")
        self.stream.flush()

    def done(self) -> None:
        pass


WAITING = "gitree: waiting for another writer to finish..."


def make_progress(label: str, quiet: bool, total_bytes: int | None = None):
    """The CLI's progress: a terminal line, or (quiet, or stderr not a terminal) QuietProgress."""
    if quiet or not sys.stderr.isatty():
        return QuietProgress()
    return TerminalProgress(label, total_bytes)
