"""A short soak (benchmarks/soak.py) in every run: faults injected, every answer checked.

The 5-minute run is ``make soak``; this one keeps its targets true on every change.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from soak import failures, run_soak  # noqa: E402


@pytest.mark.fake_only("fault rates and the fake's engine: injects faults, watches generations")
def test_short_soak_meets_every_target() -> None:
    result = run_soak(8.0, 32, 0.05, say=lambda _: None)
    assert result["requests"] > 500
    assert result["upstream_runs"] > 100
    assert failures(result) == [], (result["errors"], result["examples"])
