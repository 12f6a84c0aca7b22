"""``SGLangClient``: one async method per SGLang endpoint.

Each method builds a JSON body, calls the pipeline in ``_http.py``, and parses the answer into a
typed model; retries, timeouts, auth and error mapping all live in the pipeline.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from sglang_client._bodies import generate_body, prompt_value, text_answer, tokens_answer
from sglang_client._defaults import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_BASE_DELAY,
    DEFAULT_RETRY_MAX_DELAY,
    DEFAULT_TIMEOUT,
    NOT_GIVEN,
    NotGiven,
)
from sglang_client._health import check_health, read_load, wait_until_ready
from sglang_client._http import HTTPPipeline, HTTPResponse, TimeoutTypes
from sglang_client._retry import RetryPolicy
from sglang_client.errors import NotFoundError, SGLangError, StreamError
from sglang_client.streaming import (
    AsyncStream,
    DeltaTracker,
    load_event,
    model_parser,
    raise_for_event,
)
from sglang_client.types import (
    GENERATE_MANY,
    GENERATE_ONE,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    CompletionChunk,
    GatewayWorker,
    GatewayWorkers,
    GenerateResponse,
    HealthStatus,
    ModelInfo,
    ServerInfo,
    ServerLoad,
    StreamChunk,
)

if TYPE_CHECKING:
    import httpx
    from pydantic import BaseModel

__all__ = ["SGLangClient"]

JSONDict = dict[str, Any]
M = TypeVar("M", bound="BaseModel")
Messages = Sequence[Mapping[str, Any]]


class _State(enum.Enum):
    OPEN = 1
    CLOSED = 2


class SGLangClient:
    """Async client for an SGLang server's native and OpenAI-compatible HTTP API.

    One pooled connection set serves every call; use it as ``async with`` or call ``aclose()``.

    Example:
        ```python
        async with SGLangClient("http://127.0.0.1:30000") as client:
            r = await client.generate("The capital of France is",
                                      sampling_params={"temperature": 0, "max_new_tokens": 16})
            print(r.text, r.meta_info.cached_tokens)
        ```

    Args:
        base_url: the server root, e.g. ``http://127.0.0.1:30000``.
        timeout: default per-operation timeout in seconds (connect, read, write, pool); ``None``
            disables it. Every method also takes ``timeout=``.
        max_connections: connection pool size.
        max_retries: retries after the first attempt for connection errors, timeouts before any
            response byte, and 502/503/504.
        api_key: sent as ``Authorization: Bearer <key>`` (SGLang's ``--api-key``).
        headers: extra headers sent with every request.
        retry_base_delay: first backoff bound in seconds (doubles per retry, full jitter).
        retry_max_delay: cap on one backoff.
        transport: an ``httpx`` transport to use instead of the default aiohttp-backed one.
        http_client: an ``httpx.AsyncClient`` to borrow; the client never closes it.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:30000",
        *,
        timeout: TimeoutTypes = DEFAULT_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_retries: int = DEFAULT_MAX_RETRIES,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        retry_base_delay: float = DEFAULT_RETRY_BASE_DELAY,
        retry_max_delay: float = DEFAULT_RETRY_MAX_DELAY,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self._options: JSONDict = {
            "timeout": timeout,
            "max_connections": max_connections,
            "max_retries": max_retries,
            "api_key": api_key,
            "headers": dict(headers or {}),
            "retry_base_delay": retry_base_delay,
            "retry_max_delay": retry_max_delay,
        }
        self._http = HTTPPipeline(
            base_url,
            timeout=timeout,
            max_connections=max_connections,
            retry=RetryPolicy(max_retries, retry_base_delay, retry_max_delay),
            api_key=api_key,
            headers=headers,
            transport=transport,
            http_client=http_client,
        )
        self._state = _State.OPEN

    @property
    def base_url(self) -> str:
        """The server root this client talks to."""
        return self._http.base_url

    @property
    def api_key(self) -> str | None:
        """The key sent as ``Authorization: Bearer``, if any."""
        key: str | None = self._options["api_key"]
        return key

    def with_options(
        self,
        base_url: str | None = None,
        *,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        max_connections: int | NotGiven = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
        api_key: str | None | NotGiven = NOT_GIVEN,
        headers: Mapping[str, str] | None | NotGiven = NOT_GIVEN,
        retry_base_delay: float | NotGiven = NOT_GIVEN,
        retry_max_delay: float | NotGiven = NOT_GIVEN,
        transport: httpx.AsyncBaseTransport | None | NotGiven = NOT_GIVEN,
        http_client: httpx.AsyncClient | None | NotGiven = NOT_GIVEN,
    ) -> SGLangClient:
        """Return a client with some options changed that shares this one's connection pool.

        The copy borrows the pool: closing it does not close the original.
        """
        given: dict[str, object] = dict(timeout=timeout, max_connections=max_connections)
        given.update(max_retries=max_retries, api_key=api_key, headers=headers)
        given.update(retry_base_delay=retry_base_delay, retry_max_delay=retry_max_delay)
        options = {**self._options, **{k: v for k, v in given.items() if v is not NOT_GIVEN}}
        if not isinstance(transport, NotGiven) and transport is not None:
            return SGLangClient(base_url or self.base_url, transport=transport, **options)
        if not isinstance(http_client, NotGiven) and http_client is not None:
            return SGLangClient(base_url or self.base_url, http_client=http_client, **options)
        clone = SGLangClient(base_url or self.base_url, **options)
        clone._http.borrow_pools(self._http)
        return clone

    async def __aenter__(self) -> SGLangClient:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (if this client created it). Safe to call twice."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        await self._http.aclose()

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            raise RuntimeError("This SGLangClient has been closed; create a new one.")

    async def _post_json(
        self, path: str, body: object, timeout: TimeoutTypes | NotGiven
    ) -> HTTPResponse:
        self._check_open()
        return await self._http.request("POST", path, body=body, timeout=timeout)

    async def _get(self, path: str, timeout: TimeoutTypes | NotGiven) -> HTTPResponse:
        self._check_open()
        return await self._http.request("GET", path, timeout=timeout)

    def _stream(
        self, path: str, body: JSONDict, timeout: TimeoutTypes | NotGiven, parse: Any
    ) -> AsyncStream[Any]:
        self._check_open()

        async def open_response() -> HTTPResponse:
            self._check_open()
            return await self._http.open("POST", path, body=body, timeout=timeout)

        return AsyncStream(open_response, parse)

    @staticmethod
    def _validate(model: type[M], content: bytes, what: str) -> M:
        try:
            return model.model_validate_json(content)
        except ValidationError as exc:
            raise SGLangError(f"unexpected response from {what}: {exc}") from exc

    # ---------------------------------------------------------------- native API

    async def generate(
        self,
        text: str | Sequence[str] | None = None,
        *,
        input_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
        sampling_params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        rid: str | Sequence[str] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        **extra: object,
    ) -> GenerateResponse | list[GenerateResponse]:
        """Generate with native ``/generate``.

        Returns one ``GenerateResponse`` for a single prompt with ``n == 1``, and a list (input
        order; prompt-major for ``n > 1``) exactly when SGLang answers with a JSON array: a list of
        texts (even of length 1), ``input_ids`` as a list of lists, or ``sampling_params.n > 1``.

        Args:
            text: a prompt or a list of prompts.
            input_ids: token ids, or a list of token-id lists, instead of ``text``.
            sampling_params: SGLang sampling keys (``max_new_tokens``, ``temperature``, ``top_p``,
                ``top_k``, ``stop``, ``n``, ``sampling_seed``, ...).
            rid: request id(s); becomes ``meta_info.id`` (not with ``n > 1``).
            timeout: overrides the client's timeout for this call.
            **extra: any other ``/generate`` field (``return_logprob``, ``session_params``, ...).

        Raises:
            BadRequestError: the server rejected the request (message from the server).
        """
        body = generate_body(text, input_ids, sampling_params, rid, extra)
        body.pop("stream", None)
        response = await self._post_json("/generate", body, timeout)
        content = response.content
        try:
            if content.lstrip()[:1] == b"[":
                return GENERATE_MANY.validate_json(content)
            return GENERATE_ONE.validate_json(content)
        except ValidationError as exc:
            raise SGLangError(f"unexpected response from /generate: {exc}") from exc

    def generate_stream(
        self,
        text: str | Sequence[str] | None = None,
        *,
        input_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
        sampling_params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        rid: str | Sequence[str] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        **extra: object,
    ) -> AsyncStream[StreamChunk]:
        """Stream native ``/generate`` output as ``StreamChunk`` objects.

        Works the same whether the server streams cumulative text (the default) or deltas
        (``--incremental-streaming-output``): ``chunk.delta`` is always the new text and
        ``chunk.text`` all text so far for ``chunk.index``.

        Example:
            ```python
            async for chunk in client.generate_stream("Tell me a story"):
                print(chunk.delta, end="")
            ```

        Raises:
            StreamError: an error event arrived in the stream, or it was cut short.
            APIStatusError: the request failed, or an abort carried an HTTP status (e.g. 503).
        """
        body = generate_body(text, input_ids, sampling_params, rid, extra)
        body["stream"] = True
        tracker = DeltaTracker()

        def parse(data: str) -> StreamChunk:
            payload = load_event(data)
            raise_for_event(payload)
            if "meta_info" not in payload:
                raise StreamError(f"unexpected event in /generate stream: {data[:200]}")
            return tracker.update(payload)

        return self._stream("/generate", body, timeout, parse)

    async def health(self, *, timeout: float = 5.0, detailed: bool = False) -> HealthStatus:
        """Check ``GET /health`` once; never raises.

        Args:
            detailed: also read the server's load into ``HealthStatus.load`` (one more call).

        Returns:
            ``HealthStatus(available, latency, error, status_code, load)``.
        """
        return await check_health(self, timeout, detailed)

    async def load(self, *, timeout: float = 5.0) -> ServerLoad:
        """How busy the server is: queue, running requests, KV cache, memory, throughput.

        Read from ``/metrics`` when the server exposes it (``--enable-metrics``), else from
        ``/server_info``; a figure the server does not give is ``None``.

        Raises:
            SGLangError: the server could not be read.
        """
        return await read_load(self, timeout)

    async def wait_for_ready(
        self, timeout: float = 120.0, *, interval: float = 0.5, max_queue: int | None = None
    ) -> None:
        """Poll ``/health`` until the server answers 200.

        Args:
            max_queue: also wait until at most this many requests are queued (only on a
                server that reports its queue, i.e. with ``--enable-metrics``).

        Raises:
            APITimeoutError: the server was not ready within ``timeout`` seconds.
        """
        await wait_until_ready(self, timeout, interval, max_queue)

    async def _get_with_fallback(
        self, path: str, old_path: str, timeout: TimeoutTypes | NotGiven
    ) -> HTTPResponse:
        try:
            return await self._get(path, timeout)
        except NotFoundError:
            # Older SGLang releases only serve the get_-prefixed route.
            return await self._get(old_path, timeout)

    async def get_model_info(self, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN) -> ModelInfo:
        """``GET /model_info`` (``/get_model_info`` on older servers)."""
        response = await self._get_with_fallback("/model_info", "/get_model_info", timeout)
        return self._validate(ModelInfo, response.content, "/model_info")

    async def get_server_info(self, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN) -> ServerInfo:
        """``GET /server_info`` (``/get_server_info`` on older servers)."""
        response = await self._get_with_fallback("/server_info", "/get_server_info", timeout)
        return self._validate(ServerInfo, response.content, "/server_info")

    async def workers(self, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN) -> list[GatewayWorker]:
        """``GET /workers`` of SGLang's Model Gateway: each worker's URL, health and load.

        Raises:
            NotFoundError: the server is an SGLang worker, not a gateway.
        """
        response = await self._get("/workers", timeout)
        listed = self._validate(GatewayWorkers, response.content, "/workers")
        return listed.workers

    async def flush_cache(self, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN) -> str:
        """Empty the server's radix (prefix) cache; returns the server's message."""
        response = await self._post_json("/flush_cache", None, timeout)
        return response.text

    async def abort_request(
        self,
        rid: str = "",
        *,
        abort_all: bool = False,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> None:
        """Abort an in-flight request by rid (or all of them)."""
        await self._post_json("/abort_request", {"rid": rid, "abort_all": abort_all}, timeout)

    async def open_session(
        self,
        capacity_of_str_len: int = 65536,
        *,
        session_id: str | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> str:
        """Open a server-side session (``/open_session``); returns its id."""
        body: JSONDict = {"capacity_of_str_len": capacity_of_str_len}
        if session_id is not None:
            body["session_id"] = session_id
        response = await self._post_json("/open_session", body, timeout)
        value = json.loads(response.content)
        if not isinstance(value, str):
            raise SGLangError(f"unexpected response from /open_session: {value!r}")
        return value

    async def close_session(
        self, session_id: str, *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN
    ) -> None:
        """Close a server-side session (``/close_session``); unknown ids are fine."""
        await self._post_json("/close_session", {"session_id": session_id}, timeout)

    async def tokenize(
        self,
        text: str,
        *,
        add_special_tokens: bool = True,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> list[int]:
        """The server's token ids for ``text`` (``POST /tokenize``).

        Args:
            add_special_tokens: as SGLang tokenizes a ``/generate`` text (e.g. a BOS token);
                ``False`` for a piece that is appended to ids already sent.
        """
        body = {"prompt": text, "add_special_tokens": add_special_tokens}
        data = await self.request_json("POST", "/tokenize", body, timeout=timeout)
        return tokens_answer(data)

    async def detokenize(
        self,
        token_ids: Sequence[int],
        *,
        skip_special_tokens: bool = True,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> str:
        """The server's text for ``token_ids`` (``POST /detokenize``)."""
        body = {"tokens": list(token_ids), "skip_special_tokens": skip_special_tokens}
        data = await self.request_json("POST", "/detokenize", body, timeout=timeout)
        return text_answer(data)

    # ---------------------------------------------------------------- raw JSON access

    async def request_json(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> Any:
        """Send a request to any route and return its decoded JSON body, untouched.

        For routes this client has no method for, and for layers (the cache, the proxy) that must
        pass SGLang's bodies through byte for byte. Errors raise like every other method.
        """
        self._check_open()
        response = await self._http.request(method, path, body=body, timeout=timeout)
        try:
            return json.loads(response.content)
        except ValueError as exc:
            raise SGLangError(f"non-JSON response from {path}: {response.text[:200]!r}") from exc

    def stream_json(
        self, path: str, body: Mapping[str, Any], *, timeout: TimeoutTypes | NotGiven = NOT_GIVEN
    ) -> AsyncStream[JSONDict]:
        """Stream any SSE route as raw decoded events (``[DONE]`` excluded).

        Error events are yielded, not raised: the caller decides (see
        ``sglang_client.streaming.raise_for_event``).
        """
        return self._stream(path, {**body, "stream": True}, timeout, load_event)

    # ---------------------------------------------------------------- OpenAI-compatible API

    async def chat_completion(
        self,
        messages: Messages,
        *,
        model: str = "default",
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        **params: object,
    ) -> ChatCompletion:
        """``POST /v1/chat/completions`` (non-streaming).

        Args:
            messages: OpenAI-style messages (``{"role": ..., "content": ...}``).
            model: echoed by SGLang (it serves one model).
            **params: ``max_tokens``, ``temperature``, ``top_p``, ``n``, ``stop``, ``seed``, and
                SGLang's extras (``top_k``, ``regex``, ...).
        """
        body: JSONDict = {**params, "messages": list(messages), "model": model}
        body.pop("stream", None)
        response = await self._post_json("/v1/chat/completions", body, timeout)
        return self._validate(ChatCompletion, response.content, "/v1/chat/completions")

    def chat_completion_stream(
        self,
        messages: Messages,
        *,
        model: str = "default",
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        **params: object,
    ) -> AsyncStream[ChatCompletionChunk]:
        """Stream ``/v1/chat/completions``: ``ChatCompletionChunk`` objects with ``delta``s."""
        body: JSONDict = {**params, "messages": list(messages), "model": model, "stream": True}
        return self._stream(
            "/v1/chat/completions", body, timeout, model_parser(ChatCompletionChunk)
        )

    async def completion(
        self,
        prompt: str | Sequence[str] | Sequence[int],
        *,
        model: str = "default",
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        **params: object,
    ) -> Completion:
        """``POST /v1/completions`` (non-streaming); SGLang's default ``max_tokens`` is 16."""
        body: JSONDict = {**params, "prompt": prompt_value(prompt), "model": model}
        body.pop("stream", None)
        response = await self._post_json("/v1/completions", body, timeout)
        return self._validate(Completion, response.content, "/v1/completions")

    def completion_stream(
        self,
        prompt: str | Sequence[str] | Sequence[int],
        *,
        model: str = "default",
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        **params: object,
    ) -> AsyncStream[CompletionChunk]:
        """Stream ``/v1/completions`` as ``CompletionChunk`` objects (text deltas)."""
        body: JSONDict = {**params, "prompt": prompt_value(prompt), "model": model, "stream": True}
        return self._stream("/v1/completions", body, timeout, model_parser(CompletionChunk))
