"""Helpers shared by the benchmark scripts: free ports, server processes, CPU steal, tables."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sglang_client.testing._server import stop_process

WRK_INSTALL = "apt-get install -y wrk"

__all__ = [
    "WRK_INSTALL",
    "WrkRun",
    "busy_seconds",
    "children_seconds",
    "ensure_wrk",
    "free_port",
    "percentile",
    "print_table",
    "run_wrk",
    "process_cpu_seconds",
    "runqueue_seconds",
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
def serve_process(
    args: Sequence[str], url: str, timeout: float = 30.0, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``python ARGS`` until ``url`` answers 200; yield the process (pid, CPU time); stop it.

    ``log``: a file for its stderr (default: this process's stderr).
    """
    err = log.open("wb") if log is not None else None
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=err)
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
        stop_process(proc, timeout=30)
        if err is not None:
            err.close()


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used so far (Linux /proc; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class WrkRun:
    """One wrk run: throughput, latency, steal, errors, and per process CPU and run-queue wait.

    ``cpu`` and ``runq`` are in % of the run's wall time; ``others`` is the CPU (in % of one core)
    used meanwhile by processes outside the benchmark.
    """

    rps: float
    p50_ms: float
    p99_ms: float
    steal: float
    errors: int
    cpu: dict[str, float]
    others: float
    runq: dict[str, float]


def runqueue_seconds(pid: int) -> float:
    """Seconds a process has spent runnable but waiting for a CPU (Linux schedstat; NaN if none)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


def busy_seconds() -> float:
    """CPU seconds the whole machine spent busy so far (all cores, steal excluded)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    steal = fields[7] if len(fields) > 7 else 0
    return (sum(fields[:8]) - idle - steal) / os.sysconf("SC_CLK_TCK")


def children_seconds() -> float:
    """CPU seconds used by this process's finished children (wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(
    url: str, script: Path, connections: int, seconds: float, pids: dict[str, int]
) -> WrkRun:
    """One wrk run; also the CPU each named process used during it (% of one core)."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script)]
    meter = StealMeter()
    before = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
    waited = {name: runqueue_seconds(pid) for name, pid in pids.items()}
    busy, children = busy_seconds(), children_seconds()
    meter.start()
    started = time.monotonic()
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    elapsed = time.monotonic() - started
    steal = meter.stop()
    cpu = {
        name: 100 * (process_cpu_seconds(pid) - before[name]) / elapsed
        for name, pid in pids.items()
    }
    runq = {
        name: 100 * (runqueue_seconds(pid) - waited[name]) / elapsed for name, pid in pids.items()
    }
    # CPU that neither wrk nor the servers under test used: other tenants of this machine.
    ours = sum(cpu.values()) + 100 * (children_seconds() - children) / elapsed
    others = max(0.0, 100 * (busy_seconds() - busy) / elapsed - ours)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = wrk_ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = wrk_ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    found = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = int(found.group(1)) if found else 0
    found = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors += sum(int(n) for n in found.groups()) if found else 0
    return WrkRun(rps, p50, p99, steal, errors, cpu, others, runq)


def ensure_wrk(install: bool) -> None:
    """Exit with the install command unless wrk is on PATH (or install it, as root)."""
    if shutil.which("wrk"):
        return
    if install and os.geteuid() == 0:
        install_wrk = ["apt-get", "install", "-y", "-qq", "wrk"]
        if subprocess.run(install_wrk, stdout=subprocess.DEVNULL, check=False).returncode:
            # A fresh machine has no package lists yet.
            subprocess.run(["apt-get", "update", "-qq"], stdout=subprocess.DEVNULL, check=False)
            subprocess.run(install_wrk, stdout=subprocess.DEVNULL, check=True)
        return
    sys.exit(
        f"wrk is not installed. Install it with:\n    {WRK_INSTALL}\n"
        "(or rerun this script as root with --install-wrk)"
    )


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
