"""The integration harness itself: ``--compose`` without an engine, the compose command line,
reading container health, and sglang-cached in front of the server under test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from . import conftest
from .conftest import (
    COMPOSE_PROJECT,
    COMPOSE_SERVICES,
    REPO,
    ComposeStack,
    compose_command,
    stack_status,
)

__all__: list[str] = []

# A Docker endpoint that cannot answer, whatever engine this machine may have.
NO_ENGINE_ENV = {"DOCKER_HOST": "unix:///nonexistent/sglang-client-test/docker.sock"}


def run_pytest(target: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SGLANG_", "DOCKER_"))}
    command = [sys.executable, "-m", "pytest", target, "-p", "no:cacheprovider"]
    return subprocess.run(
        [*command, "-q", "-rs", *args],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=REPO,
        env={**clean, **env},
        check=False,
    )


def test_compose_without_an_engine_skips_with_the_reason() -> None:
    chosen = "test_generate_single_batch_and_n or test_retries_ride_out_503s_then_give_up"
    result = run_pytest("tests/integration", "--compose", "-k", chosen, **NO_ENGINE_ENV)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "2 skipped" in out, out
    assert "--compose: no Docker engine answers" in out, out  # the server test
    assert "needs the fake server's knobs" in out, out  # the fake_only test
    summary = out.strip().splitlines()[-1]
    assert re.fullmatch(r"2 skipped, \d+ deselected in [\d.]+s", summary), out


def test_compose_env_var_and_sglang_url_exclusion() -> None:
    # One test keeps these runs short; the directory-wide run is the test above.
    target = "tests/integration/test_client_http.py::test_generate_single_batch_and_n"
    by_env = run_pytest(target, SGLANG_COMPOSE="1", **NO_ENGINE_ENV)
    assert "1 skipped" in by_env.stdout, by_env.stdout + by_env.stderr
    assert "--compose: no Docker engine answers" in by_env.stdout
    both = run_pytest(target, "--compose", "--sglang-url", "http://127.0.0.1:9", "--co")
    assert both.returncode == 4, both.stdout + both.stderr  # pytest's usage error
    assert "--compose and --sglang-url exclude each other" in both.stderr


def test_compose_command_is_accepted_by_compose_v2() -> None:
    command = compose_command("config", "--services")
    assert command[command.index("--project-name") + 1] == COMPOSE_PROJECT
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(REPO)}
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=30,
        env={**env, "COMPOSE_DISABLE_ENV_FILE": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == sorted(COMPOSE_SERVICES)


def recording_compose(tmp_path: Path, exit_code: int) -> tuple[Path, Path]:
    """A stand-in Compose binary that records its arguments and exits with ``exit_code``."""
    log = tmp_path / "calls.txt"
    binary = tmp_path / "docker-compose"
    binary.write_text(f'#!/bin/sh\necho "$@" >> {log}\necho "boom" >&2\nexit {exit_code}\n')
    binary.chmod(0o755)
    return binary, log


def test_compose_stack_up_and_down_command_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary, log = recording_compose(tmp_path, 0)
    monkeypatch.setattr(conftest, "compose_binary", lambda: str(binary))
    monkeypatch.delenv("SGLANG_COMPOSE_KEEP", raising=False)
    said: list[str] = []
    stack = ComposeStack(said.append)
    stack.up()
    stack.down()
    stack.down()  # idempotent
    calls = log.read_text().splitlines()
    assert len(calls) == 2
    prefix = f"-f {REPO}/docker-compose.gpu.yml --project-directory {REPO}"
    prefix += f" --project-name {COMPOSE_PROJECT} --profile gpu"
    assert calls == [f"{prefix} up -d --build", f"{prefix} down"]
    assert any("up" in line for line in said) and any("down" in line for line in said)


def test_compose_stack_reports_a_failed_up_and_keep_skips_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary, log = recording_compose(tmp_path, 3)
    monkeypatch.setattr(conftest, "compose_binary", lambda: str(binary))
    monkeypatch.setenv("SGLANG_COMPOSE_KEEP", "1")
    stack = ComposeStack(lambda line: None)
    with pytest.raises(RuntimeError, match=r"compose up failed \(3\):\nboom"):
        stack.up()
    stack.down()
    assert len(log.read_text().splitlines()) == 1  # no down: the stack is kept


def container(service: str, status: str, health: str | None = None, **extra: Any) -> dict[str, Any]:
    state: dict[str, Any] = {"Status": status, "ExitCode": extra.pop("exit_code", 0)}
    if health is not None:
        state["Health"] = {"Status": health}
    labels = {"com.docker.compose.service": service, "com.docker.compose.project": "x"}
    return {"Name": f"/{service}-1", "Config": {"Labels": labels}, "State": state, **extra}


def test_stack_status_waits_for_every_service() -> None:
    starting = [
        container("sglang", "running", "starting"),
        container("redis", "running", "healthy"),
    ]
    ready, problem, summary = stack_status(starting)
    assert (ready, problem) == (False, None)
    assert summary == "sglang=starting redis=healthy sglang-cached=missing"
    healthy = [
        container("sglang", "running", "healthy"),
        container("redis", "running", "healthy"),
        container("sglang-cached", "running", "healthy"),
    ]
    assert stack_status(healthy) == (
        True,
        None,
        "sglang=healthy redis=healthy sglang-cached=healthy",
    )


@pytest.mark.parametrize(
    ("broken", "word"),
    [
        (container("sglang", "exited", exit_code=137), "exited"),
        (container("sglang", "running", "unhealthy"), "unhealthy"),
        (container("sglang", "running", "starting", RestartCount=1), "1 restart"),
    ],
)
def test_stack_status_reports_what_waiting_cannot_fix(broken: dict[str, Any], word: str) -> None:
    others = [container("redis", "running", "healthy"), container("sglang-cached", "created")]
    ready, problem, _ = stack_status([broken, *others])
    assert not ready
    assert problem is not None
    assert problem.startswith("sglang is ")
    assert word in problem


def test_proxy_in_front_of_the_server_under_test(proxy_url: str) -> None:
    """A MISS then a byte-identical HIT: what the proxy promises with any SGLang behind it."""
    body = {
        "text": f"A note about caching, run {uuid.uuid4().hex}:",
        "sampling_params": {"max_new_tokens": 8, "temperature": 0.7},
    }
    first = httpx.post(f"{proxy_url}/generate", json=body, timeout=120)
    second = httpx.post(f"{proxy_url}/generate", json=body, timeout=120)
    assert first.status_code == second.status_code == 200, first.text
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert second.content == first.content
    assert first.json()["meta_info"]["finish_reason"] is not None
    health = httpx.get(f"{proxy_url}/health", timeout=30).json()
    assert health["upstream"]["available"] is True
