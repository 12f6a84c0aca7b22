"""``plan()``: the one place deciding a request's keys, completions needed and stored request."""

from __future__ import annotations

import pytest

from sglang_client.cache import keys
from sglang_client.cache.plan import plan

MODEL = "m"


def key_of(path: str, body: dict[str, object], tenant: str | None = None) -> str:
    planned = plan(path, body, tenant)
    assert planned is not None
    [key] = planned.keys(MODEL)
    return key


@pytest.mark.parametrize(
    ("path", "body", "need"),
    [
        ("/generate", {"text": "a", "sampling_params": {"n": 4, "temperature": 0}}, 1),
        ("/generate", {"text": "a", "sampling_params": {"n": 4, "temperature": 0.7}}, 4),
        ("/generate", {"text": "a", "sampling_params": {"n": 4}}, 4),  # SGLang's default 1.0
        ("/v1/completions", {"prompt": "a", "n": 3, "temperature": 0}, 1),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "n": 3}, 3),
    ],
)
def test_greedy_needs_one_completion(path: str, body: dict[str, object], need: int) -> None:
    planned = plan(path, body)
    assert planned is not None and planned.need == (need,)


def test_n_and_delivery_stay_out_of_every_key() -> None:
    base = {"text": "a", "sampling_params": {"temperature": 0.5, "max_new_tokens": 4}}
    other = {
        "text": "a",
        "stream": True,
        "rid": "x",
        "sampling_params": {"temperature": 0.5, "max_new_tokens": 4, "n": 3, "stream_interval": 8},
    }
    assert key_of("/generate", base) == key_of("/generate", other)
    chat = {"messages": [{"role": "user", "content": "a"}], "temperature": 0.5}
    assert key_of("/v1/chat/completions", chat) == key_of(
        "/v1/chat/completions", {**chat, "n": 2, "stream": True, "user": "u"}
    )
    assert key_of("/v1/chat/completions", chat) != key_of("/v1/completions", {"prompt": "a"})


def test_a_new_non_semantic_sampling_field_needs_one_edit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding a name to ``NON_SEMANTIC_SAMPLING_FIELDS`` keeps it out of /generate keys (and
    out of a nested ``sampling_params`` anywhere): no other list to update."""
    body = {"text": "a", "sampling_params": {"temperature": 0.5}}
    knob = {"text": "a", "sampling_params": {"temperature": 0.5, "new_knob": 1}}
    assert key_of("/generate", body) != key_of("/generate", knob)
    wider = keys.NON_SEMANTIC_SAMPLING_FIELDS | {"new_knob"}
    monkeypatch.setattr(keys, "NON_SEMANTIC_SAMPLING_FIELDS", wider)
    assert key_of("/generate", body) == key_of("/generate", knob)
    planned = plan("/generate", knob)
    assert planned is not None and "new_knob" not in planned.requests[0]["sampling_params"]


def test_tenants_never_share_keys_and_batches_key_per_prompt() -> None:
    body = {"text": "a", "sampling_params": {"temperature": 0.5}}
    assert key_of("/generate", body, "t1") != key_of("/generate", body, "t2")
    assert key_of("/generate", body, "t1") != key_of("/generate", body)
    batch = plan("/generate", {"text": ["a", "b"], "sampling_params": {"n": 2}})
    assert batch is not None and not batch.single and batch.need == (2, 2)
    assert batch.keys(MODEL)[0] == key_of("/generate", {"text": "a", "sampling_params": {}})


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/generate", {"text": "a", "session_params": {"id": "s"}}),
        ("/generate", {"text": "a", "input_ids": [1]}),
        ("/generate", {"text": "a", "sampling_params": {"n": 0}}),
        ("/generate", {"text": "a", "sampling_params": {"n": True}}),
        ("/v1/completions", {"prompt": "a", "echo": True}),
        ("/v1/completions", {"prompt": "a", "n": "2"}),
        ("/v1/chat/completions", {"messages": []}),
    ],
)
def test_what_bypasses_has_no_plan(path: str, body: dict[str, object]) -> None:
    assert plan(path, body) is None
