"""Server-sent events: pure decoding, mode-agnostic deltas, and the stream object.

SGLang streams ``data: <json>\\n\\n`` events ending with ``data: [DONE]``. By default each
``/generate`` chunk carries the CUMULATIVE text and ids so far; under
``--incremental-streaming-output`` only the new part. ``DeltaTracker`` turns either into
``StreamChunk`` objects with both ``delta`` and ``text``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from sglang_client.errors import StreamError, error_from_status, extract_error_message
from sglang_client.types import MetaInfo, StreamChunk

if TYPE_CHECKING:
    from sglang_client._http import HTTPResponse

__all__ = [
    "AsyncStream",
    "DeltaTracker",
    "SSEDecoder",
    "ServerSentEvent",
    "load_event",
    "model_parser",
    "raise_for_event",
]

T = TypeVar("T")

DONE = "[DONE]"


@dataclass(frozen=True)
class ServerSentEvent:
    """One decoded event: its ``data`` (lines joined by ``\\n``) and optional ``event`` name."""

    data: str
    event: str | None = None


class SSEDecoder:
    """Incremental SSE decoder over raw bytes; chunk boundaries may fall anywhere.

    Lines end with ``\\n`` or ``\\r\\n``. Only complete lines are decoded, so a UTF-8 character
    split across network chunks is never decoded half-way.
    """

    __slots__ = ("_buffer", "_data", "_event")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event: str | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Consume bytes; return the events they completed."""
        buffer = self._buffer + chunk if self._buffer else chunk
        lines = buffer.split(b"\n")
        self._buffer = lines.pop()
        events: list[ServerSentEvent] = []
        for raw in lines:
            self._line(raw[:-1] if raw.endswith(b"\r") else raw, events)
        return events

    def close(self) -> list[ServerSentEvent]:
        """End of stream: dispatch complete data lines still waiting for their blank line.

        A trailing partial line (no newline) is dropped, as the SSE spec says: it is what a
        connection cut mid-event leaves behind.
        """
        self._buffer = b""
        events: list[ServerSentEvent] = []
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[ServerSentEvent]) -> None:
        if not line:
            if self._data:
                events.append(ServerSentEvent("\n".join(self._data), self._event))
            self._data = []
            self._event = None
            return
        if line[:1] == b":":
            return
        field, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            self._data.append(value.decode("utf-8", errors="replace"))
        elif field == b"event":
            self._event = value.decode("utf-8", errors="replace")


def raise_for_event(payload: dict[str, Any]) -> None:
    """Raise for an error event, or for an abort that carries an HTTP status.

    ``{"error": {...}}`` events (semantic errors after the 200, OpenAI mid-stream errors) raise the
    status-specific ``APIStatusError`` when they carry a numeric ``code``, else ``StreamError``. A
    ``/generate`` chunk whose ``finish_reason`` is an abort with ``status_code`` >= 400 (queue
    full, ...) raises that status's class. Aborts without a status are normal endings.
    """
    error = payload.get("error")
    if error is not None:
        message = extract_error_message(payload, "error event in stream")
        code = error.get("code") if isinstance(error, dict) else None
        if isinstance(code, int) and code >= 400:
            raise error_from_status(code, message, body=payload)
        raise StreamError(message, body=payload)
    meta = payload.get("meta_info")
    if meta is None:
        return
    finish = meta.get("finish_reason")
    if isinstance(finish, dict) and finish.get("type") == "abort":
        status = finish.get("status_code")
        if isinstance(status, int) and status >= 400:
            message = finish.get("message") or f"request aborted with status {status}"
            raise error_from_status(status, str(message), body=payload, request_id=meta.get("id"))


class DeltaTracker:
    """Turn ``/generate`` stream payloads (cumulative or incremental) into ``StreamChunk`` objects.

    The mode is read from the chunks themselves: ``completion_tokens`` is cumulative in both modes,
    so ``len(output_ids) == completion_tokens`` means the ids (and text) are cumulative. Where a
    chunk has no ids, the text decides (cumulative text extends what came before). The first chunk
    of an index is the same in both modes.
    """

    __slots__ = ("_ids", "_texts")

    def __init__(self) -> None:
        self._texts: dict[int, str] = {}
        self._ids: dict[int, list[int]] = {}

    def update(self, payload: dict[str, Any]) -> StreamChunk:
        """Fold one decoded payload into the running state; return its normalised chunk."""
        index = payload.get("index") or 0
        text = payload.get("text") or ""
        ids: list[int] = payload.get("output_ids") or []
        try:
            meta = MetaInfo.model_validate(payload["meta_info"])
        except ValidationError as exc:
            raise StreamError(f"malformed meta_info in stream event: {exc}", body=payload) from exc
        prev_text = self._texts.get(index, "")
        prev_ids = self._ids.get(index, [])
        if self._is_cumulative(text, ids, meta, prev_text, prev_ids):
            delta, full_text = text[len(prev_text) :], text
            delta_ids, all_ids = ids[len(prev_ids) :], ids
        else:
            delta, full_text = text, prev_text + text
            delta_ids, all_ids = ids, prev_ids + ids
        self._texts[index] = full_text
        self._ids[index] = all_ids
        return StreamChunk.model_construct(
            index=index,
            delta=delta,
            text=full_text,
            delta_output_ids=delta_ids,
            output_ids=list(all_ids),
            meta_info=meta,
            finish_reason=meta.finish_reason,
        )

    @staticmethod
    def _is_cumulative(
        text: str, ids: list[int], meta: MetaInfo, prev_text: str, prev_ids: list[int]
    ) -> bool:
        if not prev_text and not prev_ids:
            return True
        if ids and meta.completion_tokens:
            return len(ids) == meta.completion_tokens
        return text.startswith(prev_text)


class AsyncStream(Generic[T]):
    """An SSE response as an async iterator that owns its connection.

    Use ``async for item in stream`` or ``async with stream: ...``. Leaving the ``async with``
    block, finishing the loop, an exception, or a ``break`` (once the loop's iterator is dropped)
    closes the HTTP response. The request is sent (with retries) only when iteration starts, and
    never retried after the first item was yielded.
    """

    def __init__(
        self,
        open_response: Callable[[], Awaitable[HTTPResponse]],
        parse: Callable[[str], T | None],
    ) -> None:
        self._open = open_response
        self._parse = parse
        self._response: HTTPResponse | None = None
        self._iterator: AsyncIterator[T] | None = None
        self._started = False

    @property
    def response(self) -> HTTPResponse | None:
        """The HTTP response once iteration started (headers, status)."""
        return self._response

    def __aiter__(self) -> AsyncIterator[T]:
        # A fresh generator that the stream does not keep: when a `break` drops the loop's only
        # reference, asyncio finalises it at once and its `finally` closes the response.
        return self._iterate()

    async def __anext__(self) -> T:
        if self._iterator is None:
            self._iterator = self._iterate()
        return await self._iterator.__anext__()

    async def _iterate(self) -> AsyncIterator[T]:
        if self._started:
            raise RuntimeError("this stream was already iterated; start a new request")
        self._started = True
        response = self._response = await self._open()
        decoder = SSEDecoder()
        finished = False
        try:
            async for raw in response.iter_bytes():
                for event in decoder.feed(raw):
                    if event.data == DONE:
                        finished = True
                        continue
                    item = self._parse(event.data)
                    if item is not None:
                        yield item
            for event in decoder.close():
                if event.data == DONE:
                    finished = True
                    continue
                item = self._parse(event.data)
                if item is not None:
                    yield item
            if not finished:
                raise StreamError("the stream ended before [DONE]: the connection was cut short")
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        """Close the response (idempotent)."""
        iterator = self._iterator
        if iterator is not None and hasattr(iterator, "aclose"):
            await iterator.aclose()
        if self._response is not None:
            await self._response.aclose()

    async def __aenter__(self) -> AsyncStream[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def collect(self) -> list[T]:
        """Read the whole stream into a list."""
        return [item async for item in self]


def load_event(data: str) -> dict[str, Any]:
    """Decode one SSE ``data`` payload into a JSON object, or raise ``StreamError``."""
    try:
        payload = json.loads(data)
    except ValueError as exc:
        raise StreamError(f"malformed event in stream: {data[:200]!r}") from exc
    if not isinstance(payload, dict):
        raise StreamError(f"unexpected event in stream: {data[:200]!r}")
    return payload


def model_parser(model: type[BaseModel]) -> Callable[[str], Any]:
    """A parser of SSE payloads into ``model``, raising for error events."""

    def parse(data: str) -> Any:
        payload = load_event(data)
        raise_for_event(payload)
        try:
            return model.model_validate(payload)
        except ValidationError as exc:
            raise StreamError(f"unexpected event in stream: {exc}") from exc

    return parse
