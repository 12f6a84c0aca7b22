"""Server-side sessions (``/open_session``, ``session_params``): a tree of requests per session.

Semantics follow SGLang's ``SessionController`` (protocol §6): a request continues from an
earlier request ``rid`` of its session, whose history is that request's full prompt plus its
output; several requests may continue the same ``rid`` (branching); ``replace`` discards the
parent's other children (or the whole session when no ``rid`` is given); ``offset`` splices the
history; ``drop_previous_output`` keeps only the parent's prompt.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sglang_client.testing._tokenizer import BOS_TOKEN_ID

__all__ = ["SessionError", "SessionStore"]


class SessionError(ValueError):
    """A session request SGLang aborts with status 400."""


@dataclass(slots=True)
class _Request:
    prompt_ids: list[int]
    parent: str | None
    output_ids: list[int] | None = None  # None while the request runs
    children: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Session:
    capacity: int
    timeout: float | None
    last_used: float
    requests: dict[str, _Request] = field(default_factory=dict)


class SessionStore:
    """Open sessions and their request trees."""

    __slots__ = ("_sessions",)

    def __init__(self) -> None:
        self._sessions: dict[str, _Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, session_id: str | None, capacity: int, timeout: float | None) -> str:
        """Open a session; return its id (a fresh uuid hex when none is given).

        Raises:
            SessionError: A session with that id is open.
        """
        self._reap()
        sid = session_id or uuid.uuid4().hex
        if sid in self._sessions:
            raise SessionError(
                "Failed to open the session. Check if a session with the same id is still open."
            )
        self._sessions[sid] = _Session(capacity, timeout, time.monotonic())
        return sid

    def close(self, session_id: str) -> None:
        """Close a session; unknown ids are ignored (SGLang only logs them)."""
        self._sessions.pop(session_id, None)

    def _reap(self) -> None:
        now = time.monotonic()
        expired = [
            sid
            for sid, s in self._sessions.items()
            if s.timeout is not None and now - s.last_used > s.timeout
        ]
        for sid in expired:
            del self._sessions[sid]

    def begin(
        self, params: dict[str, Any], input_ids: list[int], rid: str
    ) -> tuple[list[int], list[str]]:
        """Rebuild the context of a session request and record it as running.

        Returns:
            The full context ids, and the rids of requests that ``replace`` discarded (to abort
            if they are still running).

        Raises:
            SessionError: Unknown session or parent, unfinished parent, or empty context.
        """
        self._reap()
        sid = params.get("id")
        session = self._sessions.get(sid) if isinstance(sid, str) else None
        if session is None:
            raise SessionError(f"Invalid request: session id {sid} does not exist")
        session.last_used = time.monotonic()
        requests = session.requests
        parent_rid = params.get("rid")
        discarded: list[str] = []
        history: list[int] = []
        if parent_rid is None:
            if params.get("replace"):
                discarded = list(requests)
                requests.clear()
        else:
            parent = requests.get(parent_rid)
            if parent is None:
                raise SessionError("Invalid request session id")
            if parent.output_ids is None:
                raise SessionError(
                    "Session request is appending to a request that hasn't finished."
                )
            if params.get("replace"):
                for child in parent.children:
                    discarded.extend(self._drop_subtree(requests, child))
                parent.children.clear()
            history = parent.prompt_ids
            if not params.get("drop_previous_output"):
                history = history + parent.output_ids
        if input_ids and input_ids[0] == BOS_TOKEN_ID and history:
            input_ids = input_ids[1:]
        offset = params.get("offset")
        context = history[:offset] + input_ids if offset else history + input_ids
        if not context:
            raise SessionError(
                "A session request must contain input tokens after restoring history."
            )
        requests[rid] = _Request(context, parent_rid)
        if parent_rid is not None:
            requests[parent_rid].children.append(rid)
        return context, discarded

    @staticmethod
    def _drop_subtree(requests: dict[str, _Request], rid: str) -> list[str]:
        dropped: list[str] = []
        stack = [rid]
        while stack:
            current = stack.pop()
            node = requests.pop(current, None)
            if node is not None:
                dropped.append(current)
                stack.extend(node.children)
        return dropped

    def finish(self, session_id: str, rid: str, output_ids: list[int]) -> None:
        """Record a session request's output (partial for an abort); ignored once closed."""
        session = self._sessions.get(session_id)
        if session is not None:
            node = session.requests.get(rid)
            if node is not None:
                node.output_ids = list(output_ids)

    def discard(self, session_id: str, rid: str) -> None:
        """Forget a session request that failed before it ran."""
        session = self._sessions.get(session_id)
        if session is not None:
            node = session.requests.pop(rid, None)
            if node is not None and node.parent is not None:
                parent = session.requests.get(node.parent)
                if parent is not None and rid in parent.children:
                    parent.children.remove(rid)
