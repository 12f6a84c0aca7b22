"""The data side of sessions: ``Turn``, ``Session``, ``SessionStream`` and pure helpers.

``sglang_client.sessions`` re-exports the public names; ``SessionManager`` lives there.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

import anyio

from sglang_client._session_tokens import kept_output_ids
from sglang_client.types import (
    ChatCompletion,
    ChatCompletionChunk,
    CompletionUsage,
    GenerateResponse,
    MetaInfo,
    StreamChunk,
)

__all__ = [
    "Session",
    "SessionClient",
    "SessionStream",
    "Turn",
    "aclose_all",
    "chat_meta",
    "message",
    "split_params",
    "task_id",
]


class SessionClient(Protocol):
    """What ``SessionManager`` needs from a client: ``SGLangClient``, ``CachedClient``, ...

    The ``**`` parameters are ``Any`` on purpose: with ``object``, no real client (whose
    keyword parameters such as ``timeout`` are narrower) would match the protocol.
    """

    async def generate(
        self,
        text: str | None = None,
        *,
        sampling_params: Mapping[str, Any] | None = None,
        **extra: Any,
    ) -> GenerateResponse | list[GenerateResponse]: ...

    def generate_stream(
        self,
        text: str | None = None,
        *,
        sampling_params: Mapping[str, Any] | None = None,
        **extra: Any,
    ) -> AsyncIterable[StreamChunk]: ...

    async def chat_completion(
        self, messages: Sequence[Mapping[str, Any]], **params: Any
    ) -> ChatCompletion: ...

    def chat_completion_stream(
        self, messages: Sequence[Mapping[str, Any]], **params: Any
    ) -> AsyncIterable[ChatCompletionChunk]: ...

    async def open_session(self, capacity_of_str_len: int = 65536) -> str: ...

    async def close_session(self, session_id: str) -> None: ...


@dataclass(frozen=True)
class Turn:
    """One finished turn of a session (immutable; forks share their common turns).

    Attributes:
        input: the text the caller sent for this turn.
        output: the generated text (for chat sessions, the assistant message's content).
        meta_info: the response's ``meta_info``. For chat turns it is built from the chat
            response: ``id``, ``finish_reason``, ``prompt_tokens``, ``completion_tokens``,
            ``cached_tokens`` (when the server reports it) and the raw ``usage``.
        output_ids: the generated token ids, when the server returned them (native API).
        input_ids: for token-exact sessions, the ids this turn's input added: the first turn's
            system prompt and input tokenized together, a later turn's input alone.
    """

    input: str
    output: str
    meta_info: MetaInfo
    output_ids: tuple[int, ...] = ()
    input_ids: tuple[int, ...] = ()

    @property
    def token_ids(self) -> tuple[int, ...]:
        """The ids this turn adds to a token-exact session: ``input_ids``, then ``output_ids``
        less a final stop token (EOS), which is not part of the answer's text."""
        return self.input_ids + kept_output_ids(self.output_ids, self.meta_info)


@dataclass(eq=False)
class Session:
    """A conversation kept by a ``SessionManager``; use the manager to continue it.

    Attributes:
        id: the session's id (the manager's key).
        system_prompt: the text (or chat system message) every prompt starts with.
        chat: whether turns go to ``/v1/chat/completions`` instead of ``/generate``.
        history: the finished turns, oldest first.
        parent_id: the id of the session this one was forked from, if any.
        created_at: creation time (seconds since the epoch).
        metadata: the caller's own data; a fork gets a shallow copy.
        server_session_id: the SGLang session id, for server sessions (shared by forks).
        last_rid: the rid of the last turn, which a server session's next turn continues from.
        token_exact: whether turns send token ids (``token_ids`` + the new input's ids) rather
            than text for the server to re-tokenize.
        routing_key: sent as ``X-SMG-Routing-Key`` with every turn, so SGLang's Model Gateway
            keeps the session on one worker (``None``: not sent). Forks share their parent's
            by default, so they run where its prefix is cached.
    """

    id: str
    system_prompt: str | None = None
    chat: bool = False
    history: list[Turn] = field(default_factory=list)
    parent_id: str | None = None
    created_at: float = field(default_factory=time.time)
    metadata: dict[str, object] = field(default_factory=dict)
    server_session_id: str | None = None
    last_rid: str | None = None
    token_exact: bool = False
    routing_key: str | None = None
    # A semaphore rather than an anyio.Lock: a stream's async generator may be finalised in
    # another task (asyncio's asyncgen hook), and anyio.Lock refuses a release from there.
    _lock: anyio.Semaphore = field(
        default_factory=lambda: anyio.Semaphore(1), init=False, repr=False
    )
    _owner: int | None = field(default=None, init=False, repr=False)  # the task running a turn
    _holder: object | None = field(default=None, init=False, repr=False)  # its stream's token
    _deleted: bool = field(default=False, init=False, repr=False)
    _released: bool = field(default=False, init=False, repr=False)
    # token_ids of the first k turns, so that a turn joins only its own ids to the list, and
    # a fork starts from its parent's tuple (shared, not copied).
    _ids_memo: tuple[int, tuple[int, ...]] = field(default=(0, ()), init=False, repr=False)

    @property
    def is_deleted(self) -> bool:
        """Whether the session was deleted from its manager."""
        return self._deleted

    @property
    def messages(self) -> list[dict[str, str]]:
        """The conversation as OpenAI-style messages (system prompt, then user/assistant)."""
        messages = [] if self.system_prompt is None else [message("system", self.system_prompt)]
        for turn in self.history:
            messages.append(message("user", turn.input))
            messages.append(message("assistant", turn.output))
        return messages

    @property
    def token_ids(self) -> tuple[int, ...] | None:
        """The exact ids of the conversation so far, for token-exact sessions (else ``None``).

        Every turn's ``Turn.token_ids`` in order: the next turn sends these plus its new
        input's ids, so the server's radix cache holds all of them. Forks share the parent's
        turns (immutable), not copies of its ids. A matched stop string is in here, though
        ``prefix`` leaves it out (the model generated it).
        """
        if not self.token_exact:
            return None
        done, ids = self._ids_memo
        turns = self.history
        if done > len(turns):  # history was cut by hand: start over
            done, ids = 0, ()
        if done < len(turns):
            ids += tuple(token for turn in turns[done:] for token in turn.token_ids)
            self._ids_memo = (len(turns), ids)
        return ids

    @property
    def prefix(self) -> str:
        """The session's key in the manager's ``PrefixTree``.

        For text and server sessions: the system prompt plus every turn's input and output,
        i.e. the prompt of the next turn minus its new input. (A server session's real history
        is token ids and keeps the stop token, so there it is an approximation.) For chat
        sessions: ``messages`` rendered as ``"{role}: {content}\\n"`` lines.
        """
        if self.chat:
            return "".join(f"{m['role']}: {m['content']}\n" for m in self.messages)
        parts = [self.system_prompt or ""]
        for turn in self.history:
            parts.append(turn.input)
            parts.append(turn.output)
        return "".join(parts)

    def __repr__(self) -> str:
        kind = (
            "chat"
            if self.chat
            else "server"
            if self.server_session_id
            else "tokens"
            if self.token_exact
            else "text"
        )
        return (
            f"Session(id={self.id!r}, kind={kind}, turns={len(self.history)},"
            f" parent_id={self.parent_id!r}{', deleted' if self._deleted else ''})"
        )


class SessionStream:
    """The chunks of one streamed turn: an async iterator that is also an async context manager.

    ``async with`` (or ``contextlib.aclosing``) ends the turn deterministically; a bare
    ``break`` also works: the turn is abandoned (nothing recorded) and the session's lock is
    released as soon as the event loop finalises the stream.
    """

    __slots__ = ("_chunks", "_session", "_token")

    def __init__(
        self, session: Session, chunks: AsyncGenerator[StreamChunk, None], token: object
    ) -> None:
        self._session = session
        self._chunks = chunks
        self._token = token

    def __aiter__(self) -> SessionStream:
        return self

    async def __anext__(self) -> StreamChunk:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        """End the stream; an unfinished turn is not recorded. Idempotent."""
        await self._chunks.aclose()

    async def collect(self) -> list[StreamChunk]:
        """Read the whole stream into a list."""
        return [chunk async for chunk in self]

    async def __aenter__(self) -> SessionStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Dropped mid-turn (a bare `break`): the lock is released only once asyncio finalises
        # the generator in another task, but this task no longer runs the turn, so its next
        # turn must wait for the lock instead of failing as a same-task re-entry.
        session = self._session
        if session._holder is self._token:
            session._owner = None


def task_id() -> int:
    """The current task's id (to catch a task waiting on a turn it runs itself)."""
    return anyio.get_current_task().id


def message(role: str, content: str) -> dict[str, str]:
    """An OpenAI-style chat message."""
    return {"role": role, "content": content}


def split_params(
    prompt: object, sampling: Mapping[str, object], chat: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check a turn's arguments; split them into sampling keys and client keywords."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, not {type(prompt).__name__}")
    params: dict[str, Any] = dict(sampling)
    nested = params.pop("sampling_params", None)
    if nested is not None:
        if not isinstance(nested, Mapping):
            raise TypeError(f"sampling_params must be a mapping, not {type(nested).__name__}")
        params = {**nested, **params}
    extra = {"timeout": params.pop("timeout")} if "timeout" in params else {}
    if "stream" in params:
        raise ValueError("stream is not a sampling key here: use generate_stream() instead")
    n = params.get("n", 1)
    if n != 1 or isinstance(n, bool):
        raise ValueError(
            f"a session turn is one continuation, so n must be 1 (got {n!r}); fork the"
            " session to sample several continuations"
        )
    if chat and "max_new_tokens" in params:
        if "max_tokens" in params:
            raise ValueError("give max_new_tokens or max_tokens, not both")
        params["max_tokens"] = params.pop("max_new_tokens")
    return params, extra


def chat_meta(
    rid: str, finish: str | None, matched: int | str | None, usage: CompletionUsage | None
) -> MetaInfo:
    """A ``MetaInfo`` for a chat turn, so chat and native turns read the same way."""
    data: dict[str, Any] = {"id": rid}
    if finish is not None:
        data["finish_reason"] = {"type": finish, "matched": matched}
    if usage is not None:
        details = usage.prompt_tokens_details or {}
        data.update(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=details.get("cached_tokens") or 0,
            usage=usage.model_dump(),
        )
    return MetaInfo.model_validate(data)


async def aclose_all(*streams: object) -> None:
    """Close what the client gave us (an ``AsyncStream`` and its iterator), if closable."""
    for stream in streams:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
