"""Shared fixtures: the anyio backend, and a fake SGLang server (or a real one via SGLANG_URL)."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
