"""The fake's radix cache under a token budget, and what prefill costs per uncached token.

Workers behind a gateway compete for prefixes: like SGLang's radix cache, the fake's evicts the
least recently *used* prefix first (a hit refreshes it), and a worker's prefill time grows with
the prompt tokens it did not have.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from sglang_client.testing import FakeSGLangServer
from sglang_client.testing._tokenizer import TOKENIZER

PARAMS = {"temperature": 0, "max_new_tokens": 4, "ignore_eos": True}


def prompt(name: str) -> str:
    return f"{name}: " + " ".join(f"{name}{i}" for i in range(40))


def cached(client: httpx.Client, text: str) -> int:
    r = client.post("/generate", json={"text": text, "sampling_params": PARAMS})
    assert r.status_code == 200, r.text
    value: int = r.json()["meta_info"]["cached_tokens"]
    return value


def test_a_full_cache_evicts_the_least_recently_used_prefix() -> None:
    a, b, c = prompt("alpha"), prompt("beta"), prompt("gamma")
    lengths = [len(TOKENIZER.encode(p)) for p in (a, b, c)]
    # Room for two prompts with their outputs, not three.
    budget = 2 * (max(lengths) + PARAMS["max_new_tokens"]) + 2
    with (
        FakeSGLangServer(radix_cache_tokens=budget) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        assert cached(client, a) == 0
        assert cached(client, b) == 0
        assert cached(client, a) == lengths[0] - 1  # a hit: alpha is now the newer one
        assert cached(client, c) == 0  # over budget: beta, used least recently, goes
        assert server.app.engine.cache.total_tokens <= budget
        assert cached(client, a) == lengths[0] - 1
        assert cached(client, b) == 0


def test_prefill_is_charged_per_uncached_prompt_token(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeSGLangServer(prefill_time_per_token=0.001, time_to_first_token=0.002) as server:
        waits: list[float] = []
        engine = server.app.engine

        async def record(run: Any, seconds: float) -> None:
            waits.append(seconds)  # the clock is not what is under test: its charge is

        monkeypatch.setattr(engine, "_sleep", record)
        text = prompt("delta")
        length = len(TOKENIZER.encode(text))
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert cached(client, text) == 0
            cold = waits[0]
            waits.clear()
            assert cached(client, text) == length - 1
            warm = waits[0]
            body = {"text": [text, prompt("eps")], "sampling_params": PARAMS}
            waits.clear()
            assert client.post("/generate", json=body).status_code == 200
            batch = waits[0]
    assert cold == pytest.approx(0.002 + 0.001 * length)
    assert warm == pytest.approx(0.002 + 0.001)  # only the last prompt token is computed
    eps = len(TOKENIZER.encode(prompt("eps")))
    assert batch == pytest.approx(0.002 + 0.001 * (1 + eps))  # a run pays for all its prompts
