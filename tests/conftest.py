"""Shared fixtures: the anyio backend, and a fake SGLang server (or a real one via SGLANG_URL)."""

from __future__ import annotations

import pytest


# Registered here, not in tests/integration/, so the options work whatever paths pytest is given.
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--sglang-url",
        default=None,
        help="run the integration suite against this SGLang server instead of the fake",
    )
    parser.addoption(
        "--compose",
        action="store_true",
        default=False,
        help="bring up docker-compose.gpu.yml's gpu profile, run against it, tear it down",
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
