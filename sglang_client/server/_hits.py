"""The proxy's hit path for repeated requests: finished responses, re-checked on every use.

A cache hit through ``CachedClient`` decodes the JSON body, validates it, splits it per prompt,
hashes a canonical key, decodes the stored completions and encodes the response again: about
100 us of CPU, as much as the whole HTTP server spends on a request. Here the raw request bytes
of a single-prompt ``/generate`` (or a chat/completions request) that was answered as a HIT map
to the encoded response. Serving it again still asks the store for the entry (``limit=0``, so
nothing is decoded where the store allows it) and uses the memo only if the entry is the very
one it was built from (same ``created_at``). Stores only ever append completions to an entry, so
the first ``n`` are the same as long as the entry lives: an expired, evicted, cleared or deleted
entry (on this proxy or, with Redis, any other) falls back to the full path. The memo is built
from what the full path answered and is dropped if it would differ from it by a single byte;
OpenAI answers carry a fresh ``id`` and ``created`` on every hit, so theirs is a template with
those two values spliced in.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sglang_client.cache.records import assemble_openai, repeat
from sglang_client.cache.stores.base import StoreError
from sglang_client.server._asgi import JSON_TYPE, dumps, with_length

if TYPE_CHECKING:
    from sglang_client.cache import CachedClient

__all__ = ["HitMemo", "MemoHit", "memo_key"]

_OVERHEAD = 200  # bytes per memo entry beyond its two byte strings (object headers, dict slot)


_HIT_HEADERS = [JSON_TYPE, (b"x-cache", b"HIT")]


# Stand-ins for an OpenAI answer's id and created time while it is encoded as a template.
_ID_MARK = "memo-id-" + uuid.uuid4().hex
_CREATED_MARK = -7_362_918_405_163


class MemoHit:
    """One memoised response: the cache key, which entry it came from, and what to send.

    ``parts`` (OpenAI answers) is the encoded answer split around its id and created time.
    """

    __slots__ = ("created_at", "headers", "key", "parts", "response", "served")

    def __init__(
        self,
        key: str,
        created_at: float,
        response: bytes,
        served: int,
        parts: tuple[bytes, bytes, bytes] | None = None,
    ) -> None:
        self.key = key
        self.created_at = created_at
        self.response = response
        self.headers = with_length(_HIT_HEADERS, response)
        self.served = served
        self.parts = parts

    def render(self) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """The body and headers to send for this use."""
        if self.parts is None:
            return self.response, self.headers
        head, middle, tail = self.parts
        body = b"".join((head, uuid.uuid4().hex.encode(), middle, b"%d" % time.time(), tail))
        return body, with_length(_HIT_HEADERS, body)


class HitMemo:
    """Encoded ``/generate`` hits keyed by the exact request body, LRU-bounded by bytes.

    Args:
        cached: the cache the proxy serves from (its store and model identity).
        max_bytes: memory budget (request plus response bytes); 0 disables the memo.
        max_body: longest request body worth memoising.
    """

    def __init__(self, cached: CachedClient, max_bytes: int, max_body: int = 16384) -> None:
        self.cached = cached
        self.max_bytes = max_bytes
        self.max_body = max_body
        self._items: OrderedDict[bytes, MemoHit] = OrderedDict()
        self._bytes = 0
        self._probe = cached.store.created_at  # cheaper than get(): decodes nothing

    def __len__(self) -> int:
        return len(self._items)

    @property
    def enabled(self) -> bool:
        """Whether the memo is in use."""
        return self.max_bytes > 0

    async def lookup(self, raw: bytes) -> MemoHit | None:
        """The memoised response for ``raw`` if its cache entry is still the same, else ``None``."""
        hit = self._items.get(raw)
        if hit is None:
            return None
        try:
            created = await self._probe(hit.key)
        except StoreError:
            created = None  # the full path reports the failure and degrades to a miss
        if created is None or created != hit.created_at:
            self._drop(raw)
            return None
        self._items.move_to_end(raw)
        return hit

    async def remember(
        self,
        path: str,
        raw: bytes,
        body: Mapping[str, Any],
        answer: Any,
        response: bytes,
        tenant: str | None = None,
    ) -> None:
        """Memoise a HIT the full path just sent: ``answer``, encoded as ``response``.

        ``raw`` is the request body (parsed: ``body``), ``tenant`` the cache namespace it was
        served from. Nothing is kept unless the store's entry re-assembles to the very same
        answer.
        """
        key_ = memo_key(path, raw, tenant)
        if len(raw) > self.max_body or key_ in self._items:
            return
        generate = path == "/generate"
        # None until the model identity is known, or for a request the cache does not take.
        found = self.cached.engine.keyed_plan(path, body, tenant)
        if found is None:
            return
        planned, key = found
        need, n = planned.need[0], planned.n
        try:
            entry = await self.cached.store.get(key, limit=need)
        except StoreError:
            return
        if entry is None or len(entry.completions) < need:
            return
        samples = repeat(entry.completions, n)
        if generate:
            if dumps(samples[0] if n == 1 else samples) != response:
                return  # not what the full path answers: never serve it
            hit = MemoHit(key, entry.created_at, response, n)
        else:
            rebuilt = assemble_openai(samples, planned.obj, body.get("model"))
            template = _template(answer, rebuilt)
            if template is None:
                return
            hit = MemoHit(key, entry.created_at, b"".join(template), n, template)
        size = 2 * len(key_) + len(hit.response) + _OVERHEAD
        if size > self.max_bytes:
            return
        self._items[key_] = hit
        self._bytes += size
        while self._bytes > self.max_bytes:
            self._drop(next(iter(self._items)))

    def clear(self) -> None:
        """Forget every memoised response."""
        self._items.clear()
        self._bytes = 0

    def _drop(self, raw: bytes) -> None:
        hit = self._items.pop(raw, None)
        if hit is not None:
            self._bytes -= 2 * len(raw) + len(hit.response) + _OVERHEAD


def memo_key(path: str, raw: bytes, tenant: str | None = None) -> bytes:
    """The memo's key: the body itself for ``/generate``, the route and body for the others.

    With a tenant (``isolate_by_key``), its namespace comes first: one tenant's memoised answer
    is never another's.
    """
    key = raw if path == "/generate" else path.encode() + b" " + raw
    return key if tenant is None else tenant.encode() + b"\x00" + key


def _template(answer: Any, rebuilt: Mapping[str, Any]) -> tuple[bytes, bytes, bytes] | None:
    """An OpenAI answer encoded without its id and created time, if ``rebuilt`` matches it."""
    marks = {"id": _ID_MARK, "created": _CREATED_MARK}
    encoded = dumps({**answer, **marks})
    if dumps({**rebuilt, **marks}) != encoded:
        return None  # not what the full path answers: never serve it
    head, found_id, rest = encoded.partition(_ID_MARK.encode())
    middle, found_created, tail = rest.partition(b"%d" % _CREATED_MARK)
    return (head, middle, tail) if found_id and found_created else None
