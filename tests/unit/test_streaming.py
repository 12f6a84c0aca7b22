"""SSE decoding and mode-agnostic deltas, as pure functions over bytes and dicts."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sglang_client.errors import BadRequestError, ServerOverloadedError, StreamError
from sglang_client.streaming import DeltaTracker, SSEDecoder, raise_for_event


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


@given(
    payloads=st.lists(st.text(min_size=1).filter(lambda s: "\n" not in s and "\r" not in s)),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
    crlf=st.booleans(),
)
def test_sse_decoder_any_chunk_boundaries(payloads: list[str], cuts: list[int], crlf: bool) -> None:
    eol = b"\r\n" if crlf else b"\n"
    wire = b"".join(b"data: " + p.encode() + eol + eol for p in payloads)
    decoder = SSEDecoder()
    events = []
    for piece in _split(wire, cuts):
        events.extend(decoder.feed(piece))
    events.extend(decoder.close())
    assert [e.data for e in events] == payloads


def test_sse_decoder_utf8_split_inside_a_character() -> None:
    wire = 'data: {"text":"héllo ✓"}\n\n'.encode()
    cut = wire.index("✓".encode()) + 1
    decoder = SSEDecoder()
    assert decoder.feed(wire[:cut]) == []
    (event,) = decoder.feed(wire[cut:])
    assert json.loads(event.data)["text"] == "héllo ✓"


def test_sse_decoder_comments_event_names_and_multiline_data() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b": keep-alive\n\nevent: note\ndata: a\ndata: b\n\ndata:[DONE]\n\n")
    assert [(e.event, e.data) for e in events] == [("note", "a\nb"), (None, "[DONE]")]


def test_sse_decoder_drops_a_partial_last_line() -> None:
    decoder = SSEDecoder()
    first = decoder.feed(b'data: {"a":1}\n\ndata: {"trunc')
    assert [e.data for e in first] == ['{"a":1}']
    assert decoder.close() == []


def _chunk(
    text: str, ids: list[int], tokens: int, finish: object = None, index: int | None = None
) -> dict[str, object]:
    payload: dict[str, object] = {
        "text": text,
        "output_ids": ids,
        "meta_info": {
            "id": "r1",
            "finish_reason": finish,
            "prompt_tokens": 3,
            "completion_tokens": tokens,
            "cached_tokens": 0,
        },
    }
    if index is not None:
        payload["index"] = index
    return payload


TOKENS = [(" Once", 11), (" upon", 12), (" a", 13), (" time", 14)]


def _cumulative() -> list[dict[str, object]]:
    out = []
    for i in range(len(TOKENS)):
        text = "".join(t for t, _ in TOKENS[: i + 1])
        ids = [tid for _, tid in TOKENS[: i + 1]]
        finish = {"type": "length", "length": 4} if i == len(TOKENS) - 1 else None
        out.append(_chunk(text, ids, i + 1, finish))
    return out


def _incremental() -> list[dict[str, object]]:
    out = []
    for i, (text, tid) in enumerate(TOKENS):
        finish = {"type": "length", "length": 4} if i == len(TOKENS) - 1 else None
        out.append(_chunk(text, [tid], i + 1, finish))
    return out


@pytest.mark.parametrize("payloads", [_cumulative(), _incremental()], ids=["cumulative", "delta"])
def test_delta_tracker_same_chunks_in_both_modes(payloads: list[dict[str, object]]) -> None:
    tracker = DeltaTracker()
    chunks = [tracker.update(p) for p in payloads]
    assert [c.delta for c in chunks] == [t for t, _ in TOKENS]
    assert chunks[-1].text == " Once upon a time"
    assert chunks[-1].output_ids == [11, 12, 13, 14]
    assert [c.delta_output_ids for c in chunks] == [[11], [12], [13], [14]]
    assert [c.finish_reason is None for c in chunks] == [True, True, True, False]
    assert chunks[-1].finish_reason is not None
    assert chunks[-1].finish_reason.type == "length"


def test_delta_tracker_incremental_coalesced_chunks_and_repeated_text() -> None:
    # Two tokens arrive in one incremental chunk; the delta text repeats the text so far, which a
    # text-prefix heuristic alone would misread as cumulative.
    tracker = DeltaTracker()
    tracker.update(_chunk(" a", [5], 1))
    second = tracker.update(_chunk(" a a", [5, 5], 3))
    assert second.delta == " a a"
    assert second.text == " a a a"
    assert second.output_ids == [5, 5, 5]


def test_delta_tracker_keeps_indices_apart() -> None:
    tracker = DeltaTracker()
    a0 = tracker.update(_chunk("x", [1], 1, index=0))
    b0 = tracker.update(_chunk("y", [2], 1, index=1))
    a1 = tracker.update(_chunk("xz", [1, 3], 2, index=0))
    assert (a0.index, b0.index, a1.index) == (0, 1, 0)
    assert a1.delta == "z"
    assert a1.text == "xz"


def test_raise_for_event_semantic_error_in_200_stream() -> None:
    payload = {
        "error": {
            "message": "Either text, input_ids or input_embeds should be provided.",
            "type": "invalid_request_error",
            "code": 400,
            "retryable": False,
        }
    }
    with pytest.raises(BadRequestError, match="Either text, input_ids") as info:
        raise_for_event(payload)
    assert info.value.status_code == 400


def test_raise_for_event_abort_with_status_code() -> None:
    payload = _chunk(
        "",
        [],
        0,
        {"type": "abort", "status_code": 503, "message": "The request queue is full."},
    )
    with pytest.raises(ServerOverloadedError, match="The request queue is full."):
        raise_for_event(payload)


def test_raise_for_event_error_without_code_is_stream_error() -> None:
    with pytest.raises(StreamError, match="boom"):
        raise_for_event({"error": {"message": "boom"}})


def test_raise_for_event_plain_abort_is_not_an_error() -> None:
    raise_for_event(_chunk("par", [1], 1, {"type": "abort", "message": "Aborted"}))
