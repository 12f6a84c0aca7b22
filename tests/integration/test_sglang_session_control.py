"""SGLang's own session-control checks, restated for any base URL.

What SGLang's ``test/srt/test_session_control.py`` asks of ``session_params``, in our words:
chunked turns in a session answer exactly as the same ids sent whole; a session id cannot be
opened twice; a ``logprob_start_len`` past the request's whole context (history included) is
refused; backtracking with
``offset=-1, replace=True`` cuts the history before the last generated token and drops the
branch it replaced; a closed session refuses turns. Its branching test compares sessions with
texts re-sent whole, which only agree when re-tokenizing is exact (it is not with a BPE
tokenizer: the reason for token-exact sessions); here sessions are compared with the same ids
sent whole, and ``SessionManager``'s server sessions with its token-exact ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sglang_client import GenerateResponse, SGLangClient
from sglang_client.sessions import SessionManager

CHUNKS = [
    "Let me tell you something about France.",
    "The capital of France is",
    "The population of the city is",
    "A brief history about that city is",
]
GREEDY = {"temperature": 0, "max_new_tokens": 6, "ignore_eos": True}


@pytest.fixture(params=["server", "proxy"])
def http(request: pytest.FixtureRequest, sglang_url: str, proxy_url: str) -> Iterator[httpx.Client]:
    """The server under test, or the proxy in front of it (session requests pass through)."""
    url = sglang_url if request.param == "server" else proxy_url
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client


def _ids(http: httpx.Client, text: str, first: bool) -> list[int]:
    body = {"prompt": text, "add_special_tokens": first}
    tokens: list[int] = http.post("/tokenize", json=body).json()["tokens"]
    return tokens


def _generate(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post("/generate", json={"sampling_params": GREEDY, **body})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.mark.gateway_differs("routes no /open_session")
def test_chunked_session_turns_answer_as_the_same_ids_sent_whole(http: httpx.Client) -> None:
    chunks = [_ids(http, text, i == 0) for i, text in enumerate(CHUNKS)]
    session = http.post("/open_session", json={"capacity_of_str_len": 1000}).json()
    again = http.post("/open_session", json={"capacity_of_str_len": 1000, "session_id": session})
    assert again.status_code != 200  # a session id is opened once
    rid, whole = None, []
    from_session, sent_whole = [], []
    for chunk in chunks:
        params = {"id": session, "rid": rid}
        turn = _generate(http, {"input_ids": chunk, "session_params": params})
        rid = turn["meta_info"]["id"]
        whole += chunk
        alone = _generate(http, {"input_ids": whole})
        assert turn["meta_info"]["prompt_tokens"] == len(whole)
        from_session.append(turn["output_ids"])
        sent_whole.append(alone["output_ids"])
        whole += turn["output_ids"]  # the session keeps every generated id
    assert from_session == sent_whole

    past = http.post(
        "/generate",
        json={
            "input_ids": chunks[-1],
            "session_params": {"id": session, "rid": rid},
            "sampling_params": GREEDY,
            "return_logprob": True,
            # Past the whole context (history + new ids): SGLang 0.5.23 accepts it equal.
            "logprob_start_len": len(whole) + len(chunks[-1]) + 1,
        },
    )
    assert past.status_code == 400

    # Back to the first turn, cut before its last generated id; the branch after it is gone.
    first = _generate(
        http,
        {"input_ids": chunks[1], "session_params": {"id": session, "rid": None}},
    )
    assert first["meta_info"]["prompt_tokens"] == len(chunks[1])  # a new root
    root_rid = first["meta_info"]["id"]
    child = _generate(
        http, {"input_ids": chunks[2], "session_params": {"id": session, "rid": root_rid}}
    )
    params = {"id": session, "rid": root_rid, "offset": -1, "replace": True}
    back = _generate(http, {"input_ids": chunks[3], "session_params": params})
    cut = chunks[1] + first["output_ids"][:-1] + chunks[3]
    assert back["meta_info"]["prompt_tokens"] == len(cut)
    assert back["output_ids"] == _generate(http, {"input_ids": cut})["output_ids"]
    stale = http.post(
        "/generate",
        json={
            "input_ids": chunks[3],
            "session_params": {"id": session, "rid": child["meta_info"]["id"]},
            "sampling_params": GREEDY,
        },
    )
    assert stale.status_code == 400  # replaced: no longer in the session

    assert http.post("/close_session", json={"session_id": session}).status_code == 200
    closed = http.post(
        "/generate",
        json={
            "input_ids": chunks[3],
            "session_params": {"id": session, "rid": root_rid},
            "sampling_params": GREEDY,
        },
    )
    assert closed.status_code == 400


@pytest.mark.gateway_differs("routes no /open_session")
@pytest.mark.anyio
async def test_branching_server_sessions_answer_as_token_exact_sessions(sglang_url: str) -> None:
    root = "First, let me explain in one sentence about AI"
    steps = [
        ["Then, briefly, the positive side of AI is", "But, briefly, AI could be harmful to"],
        [" For example", " For example"],
    ]

    async def branch_outputs(**options: Any) -> list[list[int]]:
        outputs: list[list[int]] = []
        async with SGLangClient(sglang_url) as client, SessionManager(client, **options) as m:
            s = await m.create_session()
            r = await m.generate(s.id, root, **GREEDY)
            outputs.append(r.output_ids)
            branches = await m.fork_session(s.id, n=2)
            assert isinstance(branches, list)
            for step in steps:
                for branch, chunk in zip(branches, step, strict=True):
                    r = await m.generate(branch.id, chunk, **GREEDY)
                    assert isinstance(r, GenerateResponse)
                    outputs.append(r.output_ids)
        return outputs

    server = await branch_outputs(server_sessions=True)
    exact = await branch_outputs(token_exact=True)
    assert server == exact
