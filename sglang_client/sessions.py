"""Multi-turn sessions over an SGLang server: ``Session``, ``Turn`` and ``SessionManager``.

A session is a conversation the manager continues turn by turn. Four kinds:

* **Token-exact** (the default for native sessions, where the server can tokenize): native
  ``/generate`` with ``input_ids``. A turn sends the exact ids of the conversation so far (every
  earlier input's ids and every id the model generated) plus the new input's ids; only the new
  text is tokenized (by the server's ``/tokenize``, or a local ``tokenizer``). Every earlier
  token is therefore a radix-cache hit, in this session and in all its forks.
* **Text** (``token_exact=False``): native ``/generate`` with text. The prompt of a turn is
  ``system_prompt + input_1 + output_1 + ... + input_k + output_k + new_input``, with no
  separators, which the server re-tokenizes whole. With a BPE tokenizer the ids at turn seams
  can differ from those generated (``"\n"`` + ``"\n"`` becomes one ``"\n\n"`` token), and the
  radix cache misses from the first difference on.
* **Chat** (``chat=True``): OpenAI-style ``messages`` over ``/v1/chat/completions``. The server
  renders and tokenizes the whole conversation each turn, so chat sessions have the text
  sessions' seam loss; SGLang's chat route takes no token ids, so there is no token-exact chat.
* **Server sessions** (``SessionManager(..., server_sessions=True)``): SGLang's own session API
  (``/open_session``, ``session_params``, ``/close_session``). Only the new input is sent; the
  server rebuilds the history from the previous turn's ``rid``. A fork branches from the same
  parent rid.

Every session appears in ``manager.prefix_tree`` under its ``prefix`` (a ``str``), and every
token-exact session in ``manager.token_tree`` under its ``token_ids``, kept current as sessions
grow, fork and are deleted.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from types import TracebackType
from typing import Any, Literal, overload

import anyio

from sglang_client._session_chat import chat_chunks, chat_reply
from sglang_client._session_routing import (
    open_server_session,
    route,
    routed,
    session_routing_key,
)
from sglang_client._session_tokens import LocalTokenizer, TokenSource
from sglang_client._session_types import (
    Session,
    SessionClient,
    SessionStream,
    Turn,
    aclose_all,
    split_params,
    task_id,
)
from sglang_client.errors import SessionNotFoundError, SGLangError, TokenizerUnavailable
from sglang_client.prefix_tree import PrefixTree
from sglang_client.types import GenerateResponse, MetaInfo, StreamChunk

__all__ = ["Session", "SessionClient", "SessionManager", "SessionStream", "Turn"]

logger = logging.getLogger("sglang_client.sessions")


class SessionManager:
    """Create, continue, fork and delete sessions on one client.

    Turns of one session never overlap (a per-session lock, held for the whole turn, streams
    included); different sessions run concurrently. A turn is recorded in ``history`` only when
    it finished: an error, an abort (``finish_reason.type == "abort"``, returned but not
    recorded) or a stream left early leaves the history unchanged.

    Example:
        ```python
        manager = SessionManager(client)
        s = await manager.create_session("You are a terse assistant.\\n")
        r = await manager.generate(s.id, "Q: What is 2+2?\\nA:", max_new_tokens=8, temperature=0)
        kids = await manager.fork_session(s.id, n=3)     # independent copies of the history
        await manager.delete_session(kids[0].id)
        manager.prefix_tree.find_sharing_sessions(s.prefix)
        ```

    Args:
        client: an ``SGLangClient``, or anything with the same methods (e.g. a ``CachedClient``).
            The manager never closes it. (A ``CachedClient`` sends server-session turns
            upstream uncached, since their output depends on the server's history.)
        server_sessions: use SGLang's session API (``/open_session``, ``session_params``,
            ``/close_session``) instead of re-sending the history.
        token_exact: native sessions send token ids (see above). ``None`` (default): yes, unless
            the server cannot tokenize (no ``/tokenize``: a warning is logged once and sessions
            fall back to text); ``True``: always (a turn raises ``TokenizerUnavailable``
            instead); ``False``: text sessions.
        tokenizer: a local tokenizer for the new text of each turn (a ``transformers``
            tokenizer or a ``tokenizers.Tokenizer`` of the served model), saving the
            ``/tokenize`` request a turn otherwise costs.
        capacity_of_str_len: passed to ``/open_session`` (SGLang requires it).
        routing_keys: send each session's ``routing_key`` as ``X-SMG-Routing-Key`` with its
            turns, so SGLang's Model Gateway (``smg --policy manual``) keeps a session, and by
            default its forks, on one worker and its radix cache. A plain SGLang ignores it.
    """

    def __init__(
        self,
        client: SessionClient,
        *,
        server_sessions: bool = False,
        token_exact: bool | None = None,
        tokenizer: LocalTokenizer | None = None,
        capacity_of_str_len: int = 65536,
        routing_keys: bool = True,
    ) -> None:
        if server_sessions and token_exact:
            raise ValueError(
                "server sessions already keep the exact ids on the server: token_exact applies"
                " to sessions that re-send their history"
            )
        self._client = client
        self._server_sessions = server_sessions
        self._token_exact = False if server_sessions else token_exact
        self._tokens = TokenSource(client, tokenizer)
        self._capacity = capacity_of_str_len
        self._routing_keys = routing_keys
        self._sessions: dict[str, Session] = {}
        self._server_refs: dict[str, int] = {}
        self._tree = PrefixTree()
        self._token_tree = PrefixTree()

    @property
    def client(self) -> SessionClient:
        """The client turns are sent through."""
        return self._client

    @property
    def server_sessions(self) -> bool:
        """Whether new sessions use SGLang's server-side session API."""
        return self._server_sessions

    @property
    def prefix_tree(self) -> PrefixTree:
        """Every live session's ``prefix`` (str keys), e.g. for ``find_sharing_sessions``."""
        return self._tree

    @property
    def token_tree(self) -> PrefixTree:
        """Every live token-exact session's ``token_ids`` (token-id keys)."""
        return self._token_tree

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    async def __aenter__(self) -> SessionManager:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Delete every session (closing their server sessions); the client stays open."""
        for session_id in list(self._sessions):
            await self.delete_session(session_id, missing_ok=True)

    # ---------------------------------------------------------------- lifecycle

    async def create_session(
        self,
        system_prompt: str | None = None,
        *,
        chat: bool = False,
        metadata: Mapping[str, object] | None = None,
        session_id: str | None = None,
        routing_key: str | None = None,
    ) -> Session:
        """Start a session.

        Args:
            system_prompt: the text every prompt starts with (a system message for chat).
            chat: use ``/v1/chat/completions`` with OpenAI-style messages.
            metadata: the caller's own data, kept on ``Session.metadata``.
            session_id: the id to use; a fresh uuid hex by default.
            routing_key: the gateway routing key (1-256 visible ASCII characters); default:
                the session id (a hash of it, if the id is not such a string).

        Raises:
            ValueError: ``session_id`` is in use or ``routing_key`` invalid, or ``chat`` with
                server sessions (SGLang's OpenAI routes ignore ``session_params``).
            TypeError: ``system_prompt`` is not a str.
            ServerSessionsUnavailable: server sessions, and the server has no
                ``/open_session`` (SGLang's Model Gateway 0.3 routes none).
        """
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise TypeError(f"system_prompt must be a str, not {type(system_prompt).__name__}")
        if chat and self._server_sessions:
            raise ValueError(
                "chat sessions cannot use server sessions: SGLang's /v1/chat/completions"
                " ignores session_params; use a text session or server_sessions=False"
            )
        if session_id is None:
            session_id = uuid.uuid4().hex
        elif not isinstance(session_id, str) or not session_id:
            raise ValueError(f"session_id must be a non-empty str, got {session_id!r}")
        if session_id in self._sessions:
            raise ValueError(f"session id {session_id!r} is already in use")
        key = session_routing_key(session_id, routing_key) if self._routing_keys else None
        server_id = None
        if self._server_sessions:
            server_id = await open_server_session(self._client, self._capacity, key)
            if session_id in self._sessions:  # taken by a concurrent create_session
                with anyio.CancelScope(shield=True):
                    await self._client.close_session(server_id)
                raise ValueError(f"session id {session_id!r} is already in use")
            self._server_refs[server_id] = self._server_refs.get(server_id, 0) + 1
        session = Session(
            id=session_id,
            system_prompt=system_prompt,
            chat=chat,
            metadata=dict(metadata or {}),
            server_session_id=server_id,
            token_exact=not chat and self._token_exact is not False,
            routing_key=key,
        )
        self._add(session)
        return session

    def get_session(self, session_id: str) -> Session:
        """Return the live session with this id.

        Raises:
            SessionNotFoundError: no such session, or it was deleted.
        """
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionNotFoundError(f"session {session_id!r} not found (unknown or deleted)")
        return session

    def list_sessions(self) -> list[Session]:
        """Every live session, oldest first."""
        return list(self._sessions.values())

    @overload
    async def fork_session(
        self, session_id: str, n: Literal[1] = 1, *, same_worker: bool = True
    ) -> Session: ...

    @overload
    async def fork_session(
        self, session_id: str, n: int, *, same_worker: bool = True
    ) -> Session | list[Session]: ...

    async def fork_session(
        self, session_id: str, n: int = 1, *, same_worker: bool = True
    ) -> Session | list[Session]:
        """Copy a session: the children start with its history and are independent after.

        The fork copies the turns finished so far; a turn still running on the parent is not
        part of it (so forking never waits). Server-session children share the server session
        and branch from the parent's last rid. With ``same_worker`` (default) children share
        the parent's routing key, so behind SGLang's Model Gateway they run on its worker and
        reuse its cached prefix; with ``False`` each gets its own key (its id), spreading a
        wide tree over the workers at the price of re-computing the prefix once per worker.
        Server-session forks always stay (the session lives on one worker).

        Returns:
            One ``Session`` for ``n == 1``, else a list of ``n``.

        Raises:
            SessionNotFoundError: no such session.
            ValueError: ``n < 1``.
        """
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, not {n!r}")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        parent = self.get_session(session_id)
        children = []
        for _ in range(n):
            child = Session(
                id=uuid.uuid4().hex,
                system_prompt=parent.system_prompt,
                chat=parent.chat,
                history=list(parent.history),
                parent_id=parent.id,
                metadata=dict(parent.metadata),
                server_session_id=parent.server_session_id,
                last_rid=parent.last_rid,
                token_exact=parent.token_exact,
            )
            same = same_worker or child.server_session_id is not None
            child.routing_key = parent.routing_key if same else session_routing_key(child.id, None)
            child._ids_memo = parent._ids_memo
            if child.server_session_id is not None:
                self._server_refs[child.server_session_id] += 1
            self._add(child)
            children.append(child)
        return children[0] if n == 1 else children

    async def delete_session(self, session_id: str, *, missing_ok: bool = False) -> None:
        """Delete a session: it leaves the manager and the prefix tree at once.

        A turn running on it finishes first (this waits for it); later turns raise
        ``SessionNotFoundError``. A server session is closed once no live local session
        (fork) still uses it. Deleting a session from inside its own stream does not wait.

        Raises:
            SessionNotFoundError: no such session (unless ``missing_ok``).
            SGLangError: closing the server session failed (the local session is gone anyway).
        """
        session = self._sessions.pop(session_id, None)
        if session is None:
            if missing_ok:
                return
            raise SessionNotFoundError(f"session {session_id!r} not found (unknown or deleted)")
        session._deleted = True
        self._tree.unregister(session_id)
        self._token_tree.unregister(session_id)
        try:
            if session._owner != task_id():
                async with session._lock:
                    pass
        finally:
            await self._release(session)

    # ---------------------------------------------------------------- turns

    async def generate(self, session_id: str, prompt: str, **sampling: object) -> GenerateResponse:
        """Run one turn: send ``prompt`` after the history, record and return the answer.

        Args:
            session_id: the session to continue.
            prompt: the new input (for chat: the user message's content).
            **sampling: SGLang sampling keys (``max_new_tokens``, ``temperature``, ``top_p``,
                ``top_k``, ``stop``, ``sampling_seed``, ...); a ``sampling_params`` mapping is
                merged under them; ``timeout`` is passed to the client. For chat sessions
                ``max_new_tokens`` becomes ``max_tokens`` (either works) and the other keys go
                to the chat request as they are.

        Returns:
            The ``GenerateResponse``. For chat sessions it is built from the chat response:
            ``text`` is the assistant's content and ``meta_info`` as in ``Turn``.

        Raises:
            SessionNotFoundError: no such session, or it was deleted before the turn began.
            ValueError: ``n`` other than 1 (a turn is one continuation: fork for more),
                or ``stream`` (use ``generate_stream``).
            RuntimeError: this task is already running a turn of the session (a deadlock).
            SGLangError: the request failed.
        """
        session = self.get_session(session_id)
        params, extra = split_params(prompt, sampling, session.chat)
        async with self._turn(session):
            with route(session):
                return await self._one_turn(session, prompt, params, extra)

    def generate_stream(self, session_id: str, prompt: str, **sampling: object) -> SessionStream:
        """Run one turn as a stream of ``StreamChunk`` objects (``.delta``, ``.text``).

        Arguments are those of ``generate``; the session and arguments are checked at once,
        the request is sent when iteration starts. The session's lock is held until the stream
        ends. The turn is recorded when the chunk carrying the finish reason arrives, before
        it is yielded (so a ``break`` on that chunk keeps it); an error, an abort or leaving
        earlier records nothing. Chat streams ask for usage (``stream_options``) and put it in
        the last chunk's ``meta_info``.

        Example:
            ```python
            async with contextlib.aclosing(manager.generate_stream(s.id, "Hi")) as stream:
                async for chunk in stream:
                    print(chunk.delta, end="")
            ```
        """
        session = self.get_session(session_id)
        params, extra = split_params(prompt, sampling, session.chat)
        token = object()
        if session.chat:
            chunks = self._chat_stream(session, prompt, {**params, **extra}, token)
        else:
            chunks = self._native_stream(session, prompt, params, extra, token)
        return SessionStream(session, chunks, token)

    # ---------------------------------------------------------------- internals

    def _add(self, session: Session) -> None:
        self._sessions[session.id] = session
        self._register(session)

    def _register(self, session: Session) -> None:
        self._tree.register_prefix(session.id, session.prefix)
        ids = session.token_ids
        if ids is not None:
            self._token_tree.register_prefix(session.id, ids)

    def _to_text(self, session: Session, why: str) -> None:
        """A token-exact session continues as a text session from here on."""
        session.token_exact = False
        self._token_tree.unregister(session.id)
        logger.warning("session %s continues as a text session: %s", session.id, why)

    async def _release(self, session: Session) -> None:
        """Drop the session's reference to its server session; close it after the last."""
        server_id = session.server_session_id
        if session._released or server_id is None:
            return
        session._released = True
        left = self._server_refs[server_id] - 1
        if left:
            self._server_refs[server_id] = left
            return
        del self._server_refs[server_id]
        with anyio.CancelScope(shield=True):
            await self._client.close_session(server_id)

    @asynccontextmanager
    async def _turn(self, session: Session, token: object = None) -> AsyncIterator[None]:
        me = task_id()
        if session._owner == me:
            raise RuntimeError(
                f"this task is already running a turn of session {session.id!r}; turns of one"
                " session never overlap, so this would wait forever"
            )
        async with session._lock:
            if session._deleted:
                raise SessionNotFoundError(f"session {session.id!r} was deleted")
            session._owner, session._holder = me, token
            try:
                yield
            finally:
                session._owner = session._holder = None

    async def _one_turn(
        self, session: Session, prompt: str, params: dict[str, Any], extra: dict[str, Any]
    ) -> GenerateResponse:
        if session.chat:
            return await self._chat_turn(session, prompt, {**params, **extra})
        kwargs, new_ids = await self._native_request(session, prompt)
        result = await self._client.generate(sampling_params=params, **kwargs, **extra)
        if isinstance(result, list):
            raise SGLangError(f"expected one response for a session turn, got {len(result)}")
        self._record(session, prompt, result.text, result.meta_info, result.output_ids, new_ids)
        return result

    async def _native_request(
        self, session: Session, prompt: str
    ) -> tuple[dict[str, Any], tuple[int, ...]]:
        """The ``/generate`` input of the next turn (and ``session_params``), and its new ids."""
        if session.server_session_id is not None:
            params: dict[str, str] = {"id": session.server_session_id}
            if session.last_rid is None:
                # A new root in the server's session tree: the system prompt goes in once, here.
                text = (session.system_prompt or "") + prompt
                return {"text": text, "session_params": params}, ()
            params["rid"] = session.last_rid
            return {"text": prompt, "session_params": params}, ()
        if session.token_exact:
            first = not session.history
            text = (session.system_prompt or "") + prompt if first else prompt
            try:
                new_ids = await self._tokens.encode(text, first=first)
            except TokenizerUnavailable as exc:
                if self._token_exact or session.history:
                    raise
                self._token_exact = False  # this server cannot: new sessions start as text
                self._to_text(session, str(exc))
            else:
                ids = session.token_ids or ()
                return {"input_ids": [*ids, *new_ids]}, new_ids
        return {"text": session.prefix + prompt}, ()

    def _record(
        self,
        session: Session,
        prompt: str,
        output: str,
        meta: MetaInfo,
        output_ids: Sequence[int] = (),
        input_ids: tuple[int, ...] = (),
    ) -> None:
        finish = meta.finish_reason
        if finish is not None and finish.type == "abort":
            return
        session.history.append(Turn(prompt, output, meta, tuple(output_ids), input_ids))
        if session.server_session_id is not None:
            session.last_rid = meta.id
        if session.token_exact and not output_ids and meta.completion_tokens:
            self._to_text(session, "the server returned no output_ids")
        if not session._deleted:
            self._register(session)

    async def _native_stream(
        self,
        session: Session,
        prompt: str,
        params: dict[str, Any],
        extra: dict[str, Any],
        token: object,
    ) -> AsyncGenerator[StreamChunk, None]:
        async with self._turn(session, token):
            with route(session):
                kwargs, new_ids = await self._native_request(session, prompt)
            stream = self._client.generate_stream(sampling_params=params, **kwargs, **extra)
            iterator = routed(session, stream.__aiter__())
            try:
                async for chunk in iterator:
                    if chunk.finish_reason is not None:
                        meta, ids = chunk.meta_info, chunk.output_ids
                        self._record(session, prompt, chunk.text, meta, ids, new_ids)
                    yield chunk
            finally:
                await aclose_all(iterator, stream)

    async def _chat_turn(
        self, session: Session, prompt: str, params: dict[str, Any]
    ) -> GenerateResponse:
        result = await chat_reply(self._client, session.messages, prompt, params)
        self._record(session, prompt, result.text, result.meta_info)
        return result

    async def _chat_stream(
        self, session: Session, prompt: str, params: dict[str, Any], token: object
    ) -> AsyncGenerator[StreamChunk, None]:
        async with self._turn(session, token):
            chunks = routed(session, chat_chunks(self._client, session.messages, prompt, params))
            async with aclosing(chunks):
                async for chunk in chunks:
                    if chunk.finish_reason is not None:
                        self._record(session, prompt, chunk.text, chunk.meta_info)
                    yield chunk
