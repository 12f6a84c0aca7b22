"""``CachedClient``: SGLangClient's methods with an n-aware response cache in front.

See "Cache semantics" in DESIGN.md and ``sglang_client.cache._engine`` for how requests are
served; this module is the typed surface (the same methods as ``SGLangClient``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, TypeVar

from sglang_client._bodies import generate_body
from sglang_client.cache._engine import CachedResult, CachedStream, CacheEngine
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

__all__ = ["CachedClient", "CachedResult", "CachedStream"]

T = TypeVar("T")


class CachedClient(CacheEngine):
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

    # ------------------------------------------------------------------ typed surface

    async def generate(
        self,
        text: str | Sequence[str] | None = None,
        *,
        input_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
        sampling_params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        rid: str | Sequence[str] | None = None,
        cache: bool = True,
        **extra: object,
    ) -> GenerateResponse | list[GenerateResponse]:
        """``SGLangClient.generate`` through the cache (``cache=False`` bypasses it)."""
        body = generate_body(text, input_ids, sampling_params, rid, extra)
        result = await self.generate_json(body, read=cache, write=cache, tenant=self.tenant)
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
        cache: bool = True,
        **extra: object,
    ) -> AsyncIterator[StreamChunk]:
        """``SGLangClient.generate_stream`` through the cache, as ``StreamChunk`` objects."""
        body = generate_body(text, input_ids, sampling_params, rid, extra)
        stream = await self.generate_stream_json(
            {**body, "stream": True}, read=cache, write=cache, tenant=self.tenant
        )
        async for chunk in _typed(stream, DeltaTracker().update):
            yield chunk

    async def chat_completion(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str = "default",
        cache: bool = True,
        **params: object,
    ) -> ChatCompletion:
        """``SGLangClient.chat_completion`` through the cache."""
        body = {**params, "messages": list(messages), "model": model}
        path = "/v1/chat/completions"
        result = await self.openai_json(path, body, read=cache, write=cache, tenant=self.tenant)
        return ChatCompletion.model_validate(result.body)

    async def chat_completion_stream(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str = "default",
        cache: bool = True,
        **params: object,
    ) -> AsyncIterator[ChatCompletionChunk]:
        """``SGLangClient.chat_completion_stream`` through the cache."""
        body = {**params, "messages": list(messages), "model": model, "stream": True}
        path = "/v1/chat/completions"
        stream = await self.openai_stream_json(
            path, body, read=cache, write=cache, tenant=self.tenant
        )
        async for chunk in _typed(stream, ChatCompletionChunk.model_validate):
            yield chunk

    async def completion(
        self,
        prompt: str | Sequence[int],
        *,
        model: str = "default",
        cache: bool = True,
        **params: object,
    ) -> Completion:
        """``SGLangClient.completion`` through the cache."""
        body = {**params, "prompt": prompt if isinstance(prompt, str) else list(prompt)}
        body["model"] = model
        path = "/v1/completions"
        result = await self.openai_json(path, body, read=cache, write=cache, tenant=self.tenant)
        return Completion.model_validate(result.body)

    async def completion_stream(
        self,
        prompt: str | Sequence[int],
        *,
        model: str = "default",
        cache: bool = True,
        **params: object,
    ) -> AsyncIterator[CompletionChunk]:
        """``SGLangClient.completion_stream`` through the cache."""
        body = {**params, "prompt": prompt if isinstance(prompt, str) else list(prompt)}
        body.update(model=model, stream=True)
        path = "/v1/completions"
        stream = await self.openai_stream_json(
            path, body, read=cache, write=cache, tenant=self.tenant
        )
        async for chunk in _typed(stream, CompletionChunk.model_validate):
            yield chunk

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

    async def get_model_info(self) -> ModelInfo:
        """The upstream's ``/model_info``."""
        return await self.client.get_model_info()

    async def get_server_info(self) -> ServerInfo:
        """The upstream's ``/server_info``."""
        return await self.client.get_server_info()

    async def workers(self) -> list[GatewayWorker]:
        """``SGLangClient.workers`` (the gateway's worker list; never cached)."""
        return await self.client.workers()

    async def flush_cache(self) -> str:
        """Flush the upstream's prefix cache (not this response cache: see ``clear``)."""
        return await self.client.flush_cache()

    async def open_session(self, capacity_of_str_len: int = 65536) -> str:
        """Open an upstream session (session requests bypass the cache)."""
        return await self.client.open_session(capacity_of_str_len)

    async def close_session(self, session_id: str) -> None:
        """Close an upstream session."""
        await self.client.close_session(session_id)

    async def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """The upstream's token ids for ``text`` (see ``SGLangClient.tokenize``; uncached)."""
        return await self.client.tokenize(text, add_special_tokens=add_special_tokens)

    async def detokenize(
        self, token_ids: Sequence[int], *, skip_special_tokens: bool = True
    ) -> str:
        """The upstream's text for ``token_ids`` (see ``SGLangClient.detokenize``)."""
        return await self.client.detokenize(token_ids, skip_special_tokens=skip_special_tokens)

    async def __aenter__(self) -> CachedClient:
        return self


async def _typed(stream: CachedStream, convert: Callable[[Any], T]) -> AsyncIterator[T]:
    """Raise for error events, convert the rest, and close the stream however the loop ends."""
    try:
        async for event in stream:
            raise_for_event(event)
            yield convert(event)
    finally:
        await stream.aclose()
