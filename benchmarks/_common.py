"""Helpers shared by the benchmark scripts: free ports, server processes, CPU steal, tables."""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence

__all__ = [
    "free_port",
    "percentile",
    "print_table",
    "process_cpu_seconds",
    "run_process_server",
    "serve_process",
    "steal_percent",
    "StealMeter",
]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def run_process_server(args: Sequence[str], url: str, timeout: float = 30.0) -> Iterator[None]:
    """Run ``python -m ...`` in a child process until ``url`` answers 200; stop it afterwards."""
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited early with code {proc.returncode}: {args}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (loopback)
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not become ready: {args}")
            time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def serve_process(
    args: Sequence[str], url: str, timeout: float = 30.0
) -> Iterator[subprocess.Popen[bytes]]:
    """Like ``run_process_server``, but yield the process (for its pid and CPU time)."""
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited early with code {proc.returncode}: {args}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (loopback)
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not become ready: {args}")
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used so far (Linux /proc; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    steal = fields[7] if len(fields) > 7 else 0
    return sum(fields), steal


class StealMeter:
    """CPU steal (% of all CPU time) between ``start()`` and ``stop()``, from /proc/stat."""

    def __init__(self) -> None:
        self._start = (0, 0)

    def start(self) -> None:
        self._start = _cpu_times() if os.path.exists("/proc/stat") else (0, 0)

    def stop(self) -> float:
        if not os.path.exists("/proc/stat"):
            return float("nan")
        total, steal = _cpu_times()
        dt = total - self._start[0]
        return 100.0 * (steal - self._start[1]) / dt if dt > 0 else 0.0


def steal_percent(seconds: float = 0.5) -> float:
    """CPU steal over a short idle window."""
    meter = StealMeter()
    meter.start()
    time.sleep(seconds)
    return meter.stop()


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest-rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a plain fixed-width table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        pairs = enumerate(zip(row, widths, strict=True))
        padded = [c.rjust(w) if i else c.ljust(w) for i, (c, w) in pairs]
        print("  ".join(padded))
        if n == 0:
            print("  ".join("-" * w for w in widths))
