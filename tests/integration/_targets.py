"""The servers under test beyond the main one, and which tests reached a real server.

* ``api_key_server``: an SGLang that wants an API key: ``SGLANG_API_KEY_URL`` and
  ``SGLANG_API_KEY`` when running against a real server (``make test-real`` starts one), else
  a fake started here with a key.
* ``incremental_url``: an SGLang with ``--incremental-streaming-output``:
  ``SGLANG_INCREMENTAL_URL``, else a fake with that flag.
* ``paced_url``: a server that takes its time per token: a real SGLang anyway, else a fake
  with ``latency_per_token`` (requests that must still be running when something happens);
* ``relay``: a ``CountingRelay`` in front of the main server under test, for tests that
  count what reached it (the proxy's).

With ``SGLANG_REAL_REPORT=FILE``, every test's outcome and whether it used one of these (or
``sglang_url``/``proxy_url``) against a real server is written to FILE as JSON at the end.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ._relay import CountingRelay

__all__ = [
    "REAL_FIXTURES",
    "ApiKeyServer",
    "api_key_server",
    "incremental_url",
    "paced_url",
    "record_report",
    "relay",
    "write_report",
]

REAL_FIXTURES = frozenset(
    {"sglang_url", "proxy_url", "api_key_server", "incremental_url", "relay", "docs", "paced_url"}
)
"""Fixtures that are the server under test (a real one, when SGLANG_URL is set)."""

_RESULTS = pytest.StashKey[dict[str, dict[str, Any]]]()


@dataclass(frozen=True)
class ApiKeyServer:
    url: str
    key: str


def _real(config: pytest.Config) -> bool:
    from .conftest import real_server_url

    return real_server_url(config) is not None


@pytest.fixture(scope="session")
def api_key_server(pytestconfig: pytest.Config) -> Iterator[ApiKeyServer]:
    """An SGLang started with ``--api-key``."""
    if _real(pytestconfig):
        url, key = os.environ.get("SGLANG_API_KEY_URL"), os.environ.get("SGLANG_API_KEY")
        if not url or not key:
            pytest.skip("needs an SGLang with --api-key: set SGLANG_API_KEY_URL, SGLANG_API_KEY")
        yield ApiKeyServer(url.rstrip("/"), key)
        return
    from sglang_client.testing import FakeSGLangServer

    with FakeSGLangServer(api_key="sk-test") as server:
        yield ApiKeyServer(server.url, "sk-test")


@pytest.fixture(scope="session")
def incremental_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """An SGLang started with ``--incremental-streaming-output``."""
    if _real(pytestconfig):
        url = os.environ.get("SGLANG_INCREMENTAL_URL")
        if not url:
            pytest.skip(
                "needs an SGLang with --incremental-streaming-output: SGLANG_INCREMENTAL_URL"
            )
        yield url.rstrip("/")
        return
    from sglang_client.testing import FakeSGLangServer

    with FakeSGLangServer(incremental_streaming_output=True) as server:
        yield server.url


@pytest.fixture(scope="module")
def paced_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """A server on which a long generation is still running a moment later."""
    if _real(pytestconfig):
        from .conftest import real_server_url

        url = real_server_url(pytestconfig)
        assert url is not None
        yield url
        return
    from sglang_client.testing import FakeSGLangServer

    # Like make test-real's main server: metrics on, at most 4 running, the rest queued.
    config = {"latency_per_token": 0.01, "enable_metrics": True, "max_running_requests": 4}
    with FakeSGLangServer(**config) as server:
        yield server.url


@pytest.fixture(scope="module")
def relay(sglang_url: str) -> Iterator[CountingRelay]:
    """The server under test behind a counting relay (see ``_relay``)."""
    with CountingRelay(sglang_url) as relay:
        yield relay


# ------------------------------------------------------------------ the real-server report


def record_report(item: pytest.Item, report: pytest.TestReport) -> None:
    """Keep each test's outcome (from its setup or call phase)."""
    config = item.config
    results = config.stash.setdefault(_RESULTS, {})
    entry = results.setdefault(
        item.nodeid,
        {
            "outcome": "passed",
            "reason": "",
            "real": _real(config) and bool(REAL_FIXTURES & set(item.fixturenames)),
        },
    )
    if report.skipped:
        entry["outcome"] = "skipped"
        longrepr = report.longrepr
        entry["reason"] = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    elif report.failed:
        entry["outcome"] = "failed"


def write_report(session: pytest.Session) -> None:
    target = os.environ.get("SGLANG_REAL_REPORT")
    if not target:
        return
    results = session.config.stash.get(_RESULTS, {})
    tests = [{"nodeid": k, **v} for k, v in sorted(results.items())]
    Path(target).write_text(json.dumps({"tests": tests}, indent=1))
