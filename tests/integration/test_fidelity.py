"""The fake against real SGLang, request by request: same shapes, statuses, framing, headers.

The requests are the 80 exchanges recorded from a real SGLang 0.5.23 (``tests/fidelity``).
Always: the fake's answers are compared with the recorded ones. Against a real server
(``SGLANG_URL``, with ``SGLANG_API_KEY_URL``/``SGLANG_API_KEY`` for the keyed cases, as
``make test-real`` starts them): the fake's live answers with the real server's live ones,
and the real server's with the recordings (so the recordings stay true). Compared: status
codes, content type, ``vary`` and ``allow``, field names, nesting and JSON types, SSE framing,
metric families and labels; not generated text, ids, counts, timings or message wording (see
``tests/fidelity/shapes.py``). What differs on purpose is listed in ``ON_PURPOSE`` and in the
README's real-vs-fake table.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sglang_client.testing import FakeSGLangServer
from tests.fidelity.recorded import CASES, RECORDED_KEY, Response, Target, replay_all
from tests.fidelity.shapes import diff_responses

from ._targets import ApiKeyServer

# The fake reports a subset of these (real SGLang has hundreds of server args and metrics).
SUBSET = {"get_server_info", "server_info", "metrics"}
ON_PURPOSE: dict[str, list[str]] = {}
"""Differences kept on purpose, per case (none today)."""


def _diffs(ours: dict[str, Response], reference: dict[str, Response]) -> dict[str, list[str]]:
    found = {}
    for name in CASES:
        listed = diff_responses(ours[name], reference[name], subset=name in SUBSET)
        unexplained = [d for d in listed if d not in ON_PURPOSE.get(name, [])]
        if unexplained:
            found[name] = unexplained
    return found


@pytest.fixture(scope="module")
def fake_answers() -> Iterator[dict[str, Response]]:
    """Every case answered by fakes set up like the recorded servers."""
    like_real = {"served_model_name": "tiny-llama", "context_length": 2048}
    # A little latency, so that the abort cases find their request still running.
    with (
        FakeSGLangServer(**like_real, enable_metrics=True, latency_per_token=0.002) as fake,
        FakeSGLangServer(**like_real, api_key=RECORDED_KEY) as keyed,
    ):
        yield replay_all(Target(fake.url, keyed.url, RECORDED_KEY))


def test_every_recorded_case_is_replayed() -> None:
    assert len(CASES) == 80
    assert {"abort_inflight_stream", "chat_logprobs", "completions_logprobs"} <= set(CASES)


def test_fake_matches_the_recorded_real_server(fake_answers: dict[str, Response]) -> None:
    recorded = {name: case.recorded for name, case in CASES.items()}
    assert _diffs(fake_answers, recorded) == {}


def test_fake_matches_the_live_real_server(
    fake_answers: dict[str, Response],
    sglang_url: str,
    api_key_server: ApiKeyServer,
    is_real_server: bool,
) -> None:
    if not is_real_server:
        pytest.skip("needs a real SGLang (SGLANG_URL): make test-real")
    live = replay_all(Target(sglang_url, api_key_server.url, api_key_server.key))
    assert _diffs(fake_answers, live) == {}
    recorded = {name: case.recorded for name, case in CASES.items()}
    assert _diffs(live, recorded) == {}, "the recordings no longer describe this server"
