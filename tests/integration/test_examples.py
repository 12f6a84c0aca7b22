"""The session examples run as scripts, against their own in-process fake and ``sglang_url``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, sglang_url: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SGLANG_URL"}
    if sglang_url is not None:
        env["SGLANG_URL"] = sglang_url
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        errors="replace",  # judged by exit status and content, not by its encoding
        timeout=45,
        env=env,
        check=False,
    )


def check_chat(out: str) -> None:
    assert out.count("you > ") == 5  # three chat questions, two forked follow-ups
    assert "1. Chat session" in out
    assert "3. Two follow-ups forked" in out
    assert "sessions sharing the conversation so far: 3" in out
    assert "Done: 4 sessions" in out


def check_tree_search(out: str) -> None:
    assert out.count("  step ") == 4
    assert "<== best" in out
    assert "[x]" in out  # losers were pruned
    share = out.split("cached by the server: ")[1].split("\n")[0]
    cached = int(share.split(" ")[0])
    assert cached > 0
    assert "live sessions: 3" in out
    assert out.rstrip().endswith("Done.")


CHECKS = {"chat.py": check_chat, "tree_search.py": check_tree_search}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_example_with_its_own_fake_server(name: str) -> None:
    result = run_example(name, None)
    assert result.returncode == 0, result.stderr
    assert "(fake, in-process)" in result.stdout
    CHECKS[name](result.stdout)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_example_against_sglang_url(name: str, sglang_url: str) -> None:
    result = run_example(name, sglang_url)
    assert result.returncode == 0, result.stderr
    assert f"SGLang server at {sglang_url} (SGLANG_URL)" in result.stdout
    CHECKS[name](result.stdout)
