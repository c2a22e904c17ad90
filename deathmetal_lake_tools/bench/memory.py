"""Peak RSS per stage and per process, from `/proc`.

A sampler thread reads `VmHWM` of each watched process from `/proc/<pid>/status` every few
milliseconds and resets it through `/proc/<pid>/clear_refs`, so each sample is the exact peak of
its interval and a stage's peak is the largest sample overlapping the stage. Without `/proc`
(not Linux) nothing is sampled.
"""

from __future__ import annotations

import os
import threading
import time

SAMPLE_SECONDS = 0.02


def status_kib(pid: int, name: str) -> int | None:
    """A `kB` field of /proc/<pid>/status; read raw, as the sampler calls it every few ms."""
    try:
        fd = os.open(f"/proc/{pid}/status", os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.read(fd, 1 << 14)
    finally:
        os.close(fd)
    start = data.find(f"\n{name}:".encode())
    if start < 0:
        return None
    end = data.find(b"\n", start + 1)
    return int(data[start + len(name) + 2 : end].split()[0])


class PeakSampler:
    """Per-interval peak RSS of some processes, from VmHWM reset after each read (see docstring).

    Each sample is (end time, {process: peak bytes during the interval}); intervals are
    contiguous from `start()` to `stop()`. Where VmHWM cannot be reset, a sample is the current
    RSS instead, which can miss short peaks between samples.
    """

    def __init__(self, pids: dict[str, int], interval: float = SAMPLE_SECONDS) -> None:
        self.pids = dict(pids)
        self.interval = interval
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.exact = {name: self._can_reset(pid) for name, pid in self.pids.items()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = 0.0

    @staticmethod
    def _can_reset(pid: int) -> bool:
        return reset_peak(pid) and status_kib(pid, "VmHWM") is not None

    def _take(self) -> None:
        peaks: dict[str, int] = {}
        for name, pid in self.pids.items():
            kib = status_kib(pid, "VmHWM" if self.exact[name] else "VmRSS")
            if kib is None:
                continue
            peaks[name] = kib * 1024
            if self.exact[name]:
                reset_peak(pid)
        self.samples.append((time.time(), peaks))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()

    def start(self) -> None:
        self._started_at = time.time()
        for name, pid in self.pids.items():
            if self.exact[name]:
                reset_peak(pid)
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._take()

    def peak(self, name: str, windows: list[tuple[float, float]]) -> int | None:
        """Largest sample of `name` whose interval overlaps one of the windows (epoch seconds)."""
        best: int | None = None
        previous = self._started_at
        for end, peaks in self.samples:
            value = peaks.get(name)
            if value is not None and any(previous < b and end > a for a, b in windows):
                best = value if best is None else max(best, value)
            previous = end
        if best is None and windows:
            # A window of a few ms can fall between samples when the wall clock is stepped
            # (NTP in a VM): take the first sample that ended after the window began.
            start = min(a for a, _ in windows)
            later = [p[name] for end, p in self.samples if end >= start and name in p]
            fallback = later[:1] or [p[name] for _, p in self.samples[-1:] if name in p]
            best = fallback[0] if fallback else None
        return best


def reset_peak(pid: int) -> bool:
    """Restart a process's VmHWM from its current RSS; False where the kernel does not allow it."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True
