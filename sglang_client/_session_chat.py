"""Chat turns of sessions: one ``/v1/chat/completions`` request, read as a session turn.

The manager records the turn; these only send the conversation and shape the answer like a
native turn (``GenerateResponse`` / ``StreamChunk`` with a ``MetaInfo`` built from the usage).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

from sglang_client._session_types import SessionClient, aclose_all, chat_meta, message
from sglang_client.errors import SGLangError, StreamError
from sglang_client.types import GenerateResponse, MetaInfo, StreamChunk

__all__ = ["chat_chunks", "chat_reply"]


async def chat_reply(
    client: SessionClient,
    history: Sequence[Mapping[str, str]],
    prompt: str,
    params: dict[str, Any],
) -> GenerateResponse:
    """Send ``history`` and the new user message; the assistant's answer as a turn."""
    completion = await client.chat_completion([*history, message("user", prompt)], **params)
    if not completion.choices:
        raise SGLangError("the chat completion has no choices")
    choice = completion.choices[0]
    meta = chat_meta(completion.id, choice.finish_reason, choice.matched_stop, completion.usage)
    return GenerateResponse(text=choice.message.content or "", meta_info=meta)


async def chat_chunks(
    client: SessionClient,
    history: Sequence[Mapping[str, str]],
    prompt: str,
    params: dict[str, Any],
) -> AsyncGenerator[StreamChunk, None]:
    """Stream the answer as native-looking chunks; the last carries the finish reason and the
    usage (asked for with ``stream_options``).

    Raises:
        StreamError: the stream ended without a finish reason.
    """
    params.setdefault("stream_options", {"include_usage": True})
    stream = client.chat_completion_stream([*history, message("user", prompt)], **params)
    iterator = stream.__aiter__()
    text, rid, usage = "", "", None
    finish: tuple[str, str, int | str | None] | None = None
    try:
        async for chunk in iterator:
            usage = chunk.usage or usage
            if not chunk.choices:
                continue
            choice, rid = chunk.choices[0], chunk.id
            delta = choice.delta.content or ""
            text += delta
            if choice.finish_reason is not None:
                # Held back until the usage chunk that may follow it.
                finish = (choice.finish_reason, delta, choice.matched_stop)
            elif delta:
                yield StreamChunk(delta=delta, text=text, meta_info=MetaInfo(id=rid))
    finally:
        await aclose_all(iterator, stream)
    if finish is None:
        raise StreamError("the chat stream ended without a finish reason")
    meta = chat_meta(rid, finish[0], finish[2], usage)
    yield StreamChunk(delta=finish[1], text=text, meta_info=meta, finish_reason=meta.finish_reason)
