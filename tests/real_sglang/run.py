"""``make test-real``: the integration suite against a real SGLang 0.5.23 on this CPU.

One command on a fresh machine. It

1. builds SGLang's environment apart from the project's (``requirements.txt`` plus the full pin
   list ``constraints.txt``; SGLang itself with ``--no-deps``), cached under ``.real-sglang/``
   (or ``$SGLANG_REAL_HOME``) and rebuilt only when those files change;
2. builds the tiny model and tokenizer locally (``build_model.py``; no hub);
3. starts real SGLang on loopback three times: the main server (with ``--enable-metrics`` and
   ``--max-running-requests 4``), one with ``--api-key`` and one with
   ``--incremental-streaming-output``, each on the CPU engine with the stand-in ``sgl_kernel``
   of this folder on its ``PYTHONPATH``;
4. runs ``pytest tests/integration`` against them (extra arguments go to pytest), and
5. stops every process it started, also on a failure or Ctrl-C.

It exits with pytest's code, or 1 with the reason when the environment cannot be built or a
server does not come up: a real-server run never silently skips. The summary names how many
tests reached a real server.

``run.py --run CMD ...`` starts only the main server (with ``--enable-cache-report``) and runs
``CMD`` with ``SGLANG_URL`` set instead of the suite (``make bench-real`` runs the session
benchmark so).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SGLANG_VERSION = "0.5.23"
API_KEY = "sk-real-sglang-test"
SERVED_MODEL = "tiny-llama"
READY_TIMEOUT = float(os.environ.get("SGLANG_REAL_READY_TIMEOUT", "300"))

# The launch the facts file describes: the CPU engine, torch attention and sampling, no CUDA
# graphs, a small KV pool. --sleep-on-idle: an idle scheduler otherwise spins a whole core, and
# three of them would starve a 2-core machine.
BASE_FLAGS = (
    "--device", "cpu",
    "--attention-backend", "torch_native",
    "--sampling-backend", "pytorch",
    "--disable-cuda-graph",
    "--mem-fraction-static", "0.05",
    "--max-total-tokens", "20000",
    "--dtype", "bfloat16",
    "--sleep-on-idle",
)  # fmt: skip


@dataclass
class Server:
    """One SGLang process: its name, flags, port and log."""

    name: str
    flags: tuple[str, ...]
    port: int = 0
    log: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def say(message: str) -> None:
    print(f"[test-real] {message}", flush=True)


def home() -> Path:
    return Path(os.environ.get("SGLANG_REAL_HOME") or REPO / ".real-sglang").resolve()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------ environment and model


def _fingerprint() -> str:
    digest = hashlib.sha256(SGLANG_VERSION.encode())
    for name in ("requirements.txt", "constraints.txt"):
        digest.update((HERE / name).read_bytes())
    return digest.hexdigest()


def _base_python() -> str:
    """A CPython 3.11 to build the environment with (SGLang's wheel is cp311 here)."""
    wanted = os.environ.get("SGLANG_REAL_PYTHON")
    candidates = [wanted] if wanted else ["python3.11", sys.executable, "python3"]
    for candidate in candidates:
        path = shutil.which(candidate) if candidate else None
        if path is None:
            continue
        probe = [path, "-c", "import sys; print(sys.version_info[:2] == (3, 11))"]
        out = subprocess.run(probe, capture_output=True, text=True, check=False)
        if out.stdout.strip() == "True":
            return path
    raise SystemExit(
        "[test-real] cannot build the SGLang environment: it needs CPython 3.11 "
        "(SGLang 0.5.23's wheel is cp311); set SGLANG_REAL_PYTHON to one"
    )


def _run_logged(cmd: Sequence[str], log: Path, what: str) -> None:
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise SystemExit(
            f"[test-real] {what} failed (exit {code}); the last lines of {log}:\n" + "\n".join(tail)
        )


def ensure_environment(root: Path) -> Path:
    """The SGLang environment's python, built first if absent or out of date."""
    venv = root / "venv"
    python = venv / "bin" / "python"
    stamp = venv / ".sglang-client-fingerprint"
    wanted = _fingerprint()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return python
    root.mkdir(parents=True, exist_ok=True)
    log = root / "install.log"
    log.write_text("")
    started = time.monotonic()
    say(f"building the SGLang {SGLANG_VERSION} environment in {venv} (a few minutes; log: {log})")
    if venv.exists():
        shutil.rmtree(venv)
    _run_logged([_base_python(), "-m", "venv", str(venv)], log, "creating the venv")
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    _run_logged([*pip, "--upgrade", "pip"], log, "upgrading pip")
    deps = ["-r", str(HERE / "requirements.txt"), "-c", str(HERE / "constraints.txt")]
    _run_logged([*pip, *deps], log, "installing SGLang's requirements")
    # --no-deps: SGLang's metadata also asks for CUDA-only kernels the CPU path never imports.
    _run_logged([*pip, "--no-deps", f"sglang=={SGLANG_VERSION}"], log, "installing sglang")
    stamp.write_text(wanted + "\n")
    say(f"environment ready in {time.monotonic() - started:.0f} s")
    return python


def ensure_model(python: Path, root: Path) -> Path:
    """The tiny model's directory, built first if absent."""
    model = root / SERVED_MODEL
    if (model / "BUILT").exists():
        return model
    say(f"building the tiny model and tokenizer in {model}")
    if model.exists():
        shutil.rmtree(model)
    log = root / "model.log"
    log.write_text("")
    _run_logged([str(python), str(HERE / "build_model.py"), str(model)], log, "building the model")
    return model


# ------------------------------------------------------------------ servers


def start(server: Server, python: Path, model: Path, logs: Path) -> None:
    server.port = free_port()
    server.log = logs / f"{server.name}.log"
    env = {
        **os.environ,
        "SGLANG_USE_CPU_ENGINE": "1",  # what makes SGLang's is_cpu() true
        "PYTHONPATH": str(HERE),  # the stand-in sgl_kernel
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    cmd = [
        str(python), "-m", "sglang.launch_server",
        "--model-path", str(model),
        "--served-model-name", SERVED_MODEL,
        "--host", "127.0.0.1",
        "--port", str(server.port),
        *BASE_FLAGS,
        *server.flags,
    ]  # fmt: skip
    with server.log.open("wb") as out:
        # Its own session, so that stopping it reaches the scheduler and detokenizer children.
        server.proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=10) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(servers: Sequence[Server]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    waiting = list(servers)
    while waiting:
        for server in list(waiting):
            assert server.proc is not None and server.log is not None
            if server.proc.poll() is not None:
                tail = server.log.read_text(errors="replace").splitlines()[-30:]
                raise SystemExit(
                    f"[test-real] SGLang ({server.name}) exited with {server.proc.returncode}"
                    " while starting; its log ends:\n" + "\n".join(tail)
                )
            if _healthy(server.url):
                say(f"{server.name}: ready at {server.url}")
                waiting.remove(server)
        if waiting and time.monotonic() > deadline:
            names = ", ".join(s.name for s in waiting)
            raise SystemExit(f"[test-real] not healthy after {READY_TIMEOUT:.0f} s: {names}")
        if waiting:
            time.sleep(1)


def stop(servers: Sequence[Server]) -> None:
    """SIGTERM each server's process group, then SIGKILL what is left after 20 s."""
    running = [s for s in servers if s.proc is not None and s.proc.poll() is None]
    for server in running:
        assert server.proc is not None
        with suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for server in running:
        assert server.proc is not None
        with suppress(subprocess.TimeoutExpired):
            server.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        with suppress(ProcessLookupError):  # children that outlived it are in its group
            os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()


@contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGTERM into an exception too, so that ``finally`` blocks stop the servers."""

    def raise_exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------ the run


def summarize(report: Path) -> None:
    if not report.exists():
        return
    data = json.loads(report.read_text())
    reached = [t for t in data["tests"] if t["outcome"] == "passed" and t["real"]]
    passed = [t for t in data["tests"] if t["outcome"] == "passed"]
    skipped = [t for t in data["tests"] if t["outcome"] == "skipped"]
    say(
        f"{len(reached)} of {len(passed)} passed tests reached a real SGLang server;"
        f" {len(skipped)} skipped"
    )
    reasons: dict[str, int] = {}
    for test in skipped:
        reasons[test["reason"]] = reasons.get(test["reason"], 0) + 1
    for reason, count in sorted(reasons.items(), key=lambda item: -item[1]):
        say(f"  skipped {count}: {reason}")
    others = sorted({t["nodeid"].split("::")[0] for t in passed if not t["real"]})
    say(f"{len(passed) - len(reached)} passed without any SGLang server (in: {', '.join(others)})")


def main(argv: Sequence[str]) -> int:
    started = time.monotonic()
    root = home()
    servers = [
        # A small running limit, so that load tests can see requests queue on a real server.
        Server("main", ("--enable-metrics", "--max-running-requests", "4")),
        Server("api-key", ("--api-key", API_KEY)),
        Server("incremental", ("--incremental-streaming-output",)),
    ]
    command = list(argv[1:]) if argv[:1] == ["--run"] else None
    if command is not None:
        if not command:
            raise SystemExit("[test-real] --run needs a command")
        # Chat usage reports cached tokens only with --enable-cache-report (the suite's
        # fidelity test compares shapes recorded without it, so only --run adds it).
        servers = [Server("main", (*servers[0].flags, "--enable-cache-report"))]
    with interruptible():
        try:
            python = ensure_environment(root)
            model = ensure_model(python, root)
            logs = root / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            for server in servers:
                start(server, python, model, logs)
            wait_ready(servers)
            say(f"servers up {time.monotonic() - started:.0f} s after the start")
            if command is not None:
                env = {**os.environ, "SGLANG_URL": servers[0].url}
                return subprocess.run(command, cwd=REPO, env=env, check=False).returncode
            main_server, keyed, incremental = servers
            report = Path(tempfile.mkdtemp(prefix="sglang-real-")) / "report.json"
            env = {
                **os.environ,
                "SGLANG_URL": main_server.url,
                "SGLANG_API_KEY_URL": keyed.url,
                "SGLANG_API_KEY": API_KEY,
                "SGLANG_INCREMENTAL_URL": incremental.url,
                "SGLANG_REAL_REPORT": str(report),
            }
            cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]
            cmd += list(argv) or ["tests/integration"]
            code = subprocess.run(cmd, cwd=REPO, env=env, check=False).returncode
            summarize(report)
            say(f"pytest exited {code}; {time.monotonic() - started:.0f} s in all")
            return code
        except KeyboardInterrupt:
            say("interrupted")
            return 130
        finally:
            stop(servers)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
