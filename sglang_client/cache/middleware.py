"""``CachedClient``: SGLangClient's methods with an n-aware response cache in front.

A ``CachedClient`` holds a ``CacheEngine`` (``engine.py``), which serves SGLang's raw bodies;
this module is the typed surface: ``SGLangClient``'s methods with the same signatures (plus
``cache=``), a test holding the two together. See docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from sglang_client._bodies import generate_body, prompt_value
from sglang_client._defaults import NOT_GIVEN, NotGiven
from sglang_client.cache.engine import CacheEngine
from sglang_client.cache.results import CachedResult, CachedStream
from sglang_client.cache.stats import CacheStats, Counters
from sglang_client.cache.stores.base import CacheStore
from sglang_client.streaming import DeltaTracker, raise_for_event
from sglang_client.types import (
    GENERATE_MANY,
    GENERATE_ONE,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    CompletionChunk,
    GatewayWorker,
    GenerateResponse,
    HealthStatus,
    ModelInfo,
    ServerInfo,
    ServerLoad,
    StreamChunk,
)

if TYPE_CHECKING:
    from sglang_client._http import TimeoutTypes
    from sglang_client.client import SGLangClient

__all__ = ["CachedClient", "CachedResult", "CachedStream"]

T = TypeVar("T")
Messages = Sequence[Mapping[str, Any]]


class CachedClient:
    """An ``SGLangClient`` (or anything with its methods) behind an n-aware response cache.

    Example:
        ```python
        from sglang_client import CachedClient, SGLangClient
        from sglang_client.cache import SQLiteStore

        async with SGLangClient(url) as client:
            cached = CachedClient(client, store=SQLiteStore("~/.sglang_cache"))
            r = await cached.generate("Hi", sampling_params={"n": 3})   # 3 generated
            r = await cached.generate("Hi", sampling_params={"n": 5})   # 3 cached + 2 generated
            print(await cached.stats())
            await cached.aclose()
        ```

    Args:
        client: the upstream client.
        store: where completions live; default ``SQLiteStore("~/.sglang_cache")``.
        namespace: the model identity in keys; default: the upstream's served model name
            (``/model_info``, fetched once). Two namespaces never share an entry.
        isolate_by_key: keep this client's entries apart from every other API key's (the
            client's ``api_key``, hashed, joins the key), as ``sglang-cached --isolate-by-key``
            does per caller.
    """

    def __init__(
        self,
        client: SGLangClient,
        store: CacheStore | None = None,
        *,
        namespace: str | None = None,
        isolate_by_key: bool = False,
    ) -> None:
        engine = CacheEngine(client, store, namespace=namespace, isolate_by_key=isolate_by_key)
        self.engine = engine
        # The raw-body routes (SGLang's JSON in, ``CachedResult``/``CachedStream`` out; the
        # proxy serves them) are the engine's own: one definition each, in native.py and
        # openai_routes.py, taking ``read``/``write`` (Cache-Control), ``tenant``, ``timeout``.
        self.generate_json = engine.generate_json
        self.generate_stream_json = engine.generate_stream_json
        self.openai_json = engine.openai_json
        self.openai_stream_json = engine.openai_stream_json

    # ------------------------------------------------------------------ the cache itself

    @property
    def client(self) -> SGLangClient:
        """The upstream client (the caller's to close)."""
        return self.engine.client

    @property
    def store(self) -> CacheStore:
        """Where completions live."""
        return self.engine.store

    @property
    def tenant(self) -> str | None:
        """The cache namespace of this client's own calls (``isolate_by_key``), else ``None``."""
        return self.engine.tenant

    @property
    def counters(self) -> Counters:
        """The live request counters (``stats()`` adds the store's size, which may be slow)."""
        return self.engine.counters

    @property
    def store_failing(self) -> bool:
        """Whether the store is failing now (from its first error to a write that worked)."""
        return self.engine.store_failing

    async def stats(self) -> CacheStats:
        """A snapshot of the store's size and this client's counters."""
        return await self.engine.stats()

    async def clear(self) -> int:
        """Delete every cached entry; returns how many there were."""
        return await self.engine.clear()

    async def aclose(self) -> None:
        """Flush and close the store (the upstream client is the caller's to close)."""
        await self.engine.aclose()

    async def __aenter__(self) -> CachedClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ SGLangClient's methods

    async def generate(
        self,
        text: str | Sequence[str] | None = None,
        *,
        input_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
        sampling_params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        rid: str | Sequence[str] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        cache: bool = True,
        **extra: object,
    ) -> GenerateResponse | list[GenerateResponse]:
        """``SGLangClient.generate`` through the cache (``cache=False`` bypasses it)."""
        body = generate_body(text, input_ids, sampling_params, rid, extra)
        result = await self.engine.generate_json(
            body, read=cache, write=cache, tenant=self.tenant, timeout=timeout
        )
        if isinstance(result.body, list):
            return GENERATE_MANY.validate_python(result.body)
        return GENERATE_ONE.validate_python(result.body)

    async def generate_stream(
        self,
        text: str | Sequence[str] | None = None,
        *,
        input_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
        sampling_params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        rid: str | Sequence[str] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        cache: bool = True,
        **extra: object,
    ) -> AsyncIterator[StreamChunk]:
        """``SGLangClient.generate_stream`` through the cache, as ``StreamChunk`` objects."""
        body = generate_body(text, input_ids, sampling_params, rid, extra)
        stream = await self.engine.generate_stream_json(
            {**body, "stream": True}, read=cache, write=cache, tenant=self.tenant, timeout=timeout
        )
        async for chunk in _typed(stream, DeltaTracker().update):
            yield chunk

    async def chat_completion(
        self,
        messages: Messages,
        *,
        model: str = "default",
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        cache: bool = True,
        **params: object,
    ) -> ChatCompletion:
        """``SGLangClient.chat_completion`` through the cache."""
        body = {**params, "messages": list(messages), "model": model}
        result = await self._openai("/v1/chat/completions", body, cache, timeout)
        return ChatCompletion.model_validate(result.body)

    async def chat_completion_stream(
        self,
        messages: Messages,
        *,
        model: str = "default",
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        cache: bool = True,
        **params: object,
    ) -> AsyncIterator[ChatCompletionChunk]:
        """``SGLangClient.chat_completion_stream`` through the cache."""
        body = {**params, "messages": list(messages), "model": model, "stream": True}
        stream = await self._openai_stream("/v1/chat/completions", body, cache, timeout)
        async for chunk in _typed(stream, ChatCompletionChunk.model_validate):
            yield chunk

    async def completion(
        self,
        prompt: str | Sequence[str] | Sequence[int],
        *,
        model: str = "default",
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        cache: bool = True,
        **params: object,
    ) -> Completion:
        """``SGLangClient.completion`` through the cache (a list of prompts passes through)."""
        body = {**params, "prompt": prompt_value(prompt), "model": model}
        result = await self._openai("/v1/completions", body, cache, timeout)
        return Completion.model_validate(result.body)

    async def completion_stream(
        self,
        prompt: str | Sequence[str] | Sequence[int],
        *,
        model: str = "default",
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        cache: bool = True,
        **params: object,
    ) -> AsyncIterator[CompletionChunk]:
        """``SGLangClient.completion_stream`` through the cache."""
        body = {**params, "prompt": prompt_value(prompt), "model": model, "stream": True}
        stream = await self._openai_stream("/v1/completions", body, cache, timeout)
        async for chunk in _typed(stream, CompletionChunk.model_validate):
            yield chunk

    async def _openai(
        self, path: str, body: dict[str, Any], cache: bool, timeout: TimeoutTypes | NotGiven
    ) -> CachedResult:
        return await self.engine.openai_json(
            path, body, read=cache, write=cache, tenant=self.tenant, timeout=timeout
        )

    async def _openai_stream(
        self, path: str, body: dict[str, Any], cache: bool, timeout: TimeoutTypes | NotGiven
    ) -> CachedStream:
        return await self.engine.openai_stream_json(
            path, body, read=cache, write=cache, tenant=self.tenant, timeout=timeout
        )

    # ------------------------------------------------------------------ passed through, uncached

    async def health(self, *, timeout: float = 5.0, detailed: bool = False) -> HealthStatus:
        """The upstream's health (never raises)."""
        return await self.client.health(timeout=timeout, detailed=detailed)

    async def load(self, *, timeout: float = 5.0) -> ServerLoad:
        """The upstream's load (see ``SGLangClient.load``)."""
        return await self.client.load(timeout=timeout)

    async def wait_for_ready(
        self, timeout: float = 120.0, *, interval: float = 0.5, max_queue: int | None = None
    ) -> None:
        """Wait for the upstream to be ready."""
        await self.client.wait_for_ready(timeout, interval=interval, max_queue=max_queue)

    async def get_model_info(self, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN) -> ModelInfo:
        """The upstream's ``/model_info``."""
        return await self.client.get_model_info(timeout=timeout)

    async def get_server_info(self, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN) -> ServerInfo:
        """The upstream's ``/server_info``."""
        return await self.client.get_server_info(timeout=timeout)

    async def workers(self, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN) -> list[GatewayWorker]:
        """``SGLangClient.workers`` (the gateway's worker list)."""
        return await self.client.workers(timeout=timeout)

    async def flush_cache(self, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN) -> str:
        """Flush the upstream's prefix cache (not this response cache: see ``clear``)."""
        return await self.client.flush_cache(timeout=timeout)

    async def abort_request(
        self,
        rid: str = "",
        *,
        abort_all: bool = False,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> None:
        """Abort upstream requests (see ``SGLangClient.abort_request``)."""
        await self.client.abort_request(rid, abort_all=abort_all, timeout=timeout)

    async def open_session(
        self,
        capacity_of_str_len: int = 65536,
        *,
        session_id: str | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> str:
        """Open an upstream session (session requests bypass the cache)."""
        return await self.client.open_session(
            capacity_of_str_len, session_id=session_id, timeout=timeout
        )

    async def close_session(
        self, session_id: str, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN
    ) -> None:
        """Close an upstream session."""
        await self.client.close_session(session_id, timeout=timeout)

    async def tokenize(
        self,
        text: str,
        *,
        add_special_tokens: bool = True,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> list[int]:
        """The upstream's token ids for ``text`` (see ``SGLangClient.tokenize``; uncached)."""
        return await self.client.tokenize(
            text, add_special_tokens=add_special_tokens, timeout=timeout
        )

    async def detokenize(
        self,
        token_ids: Sequence[int],
        *,
        skip_special_tokens: bool = True,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> str:
        """The upstream's text for ``token_ids`` (see ``SGLangClient.detokenize``)."""
        return await self.client.detokenize(
            token_ids, skip_special_tokens=skip_special_tokens, timeout=timeout
        )


async def _typed(stream: CachedStream, convert: Callable[[Any], T]) -> AsyncIterator[T]:
    """Raise for error events, convert the rest, and close the stream however the loop ends."""
    try:
        async for event in stream:
            raise_for_event(event)
            yield convert(event)
    finally:
        await stream.aclose()
