"""sglang_client: a fast, typed async SDK for SGLang servers (layers: docs/architecture.md).

Example:
    ```python
    from sglang_client import SGLangClient

    async with SGLangClient("http://127.0.0.1:30000") as client:
        r = await client.generate("Hello", sampling_params={"max_new_tokens": 8})
    ```
"""

from __future__ import annotations

from sglang_client._version import __version__
from sglang_client.cache.middleware import CachedClient
from sglang_client.client import SGLangClient
from sglang_client.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    ServerOverloadedError,
    ServerSessionsUnavailable,
    SessionNotFoundError,
    SGLangError,
    StreamError,
    TokenizerUnavailable,
    UnprocessableEntityError,
)
from sglang_client.prefix_tree import BatchAnalysis, PrefixStats, PrefixTree
from sglang_client.routing import request_headers, routing_key
from sglang_client.sessions import Session, SessionManager, SessionStream, Turn
from sglang_client.streaming import AsyncStream
from sglang_client.types import (
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    CompletionChunk,
    FinishReason,
    GatewayWorker,
    GenerateResponse,
    HealthStatus,
    MetaInfo,
    ModelInfo,
    ServerInfo,
    ServerLoad,
    StreamChunk,
)

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncStream",
    "AuthenticationError",
    "BadRequestError",
    "BatchAnalysis",
    "CachedClient",
    "ChatCompletion",
    "ChatCompletionChunk",
    "Completion",
    "CompletionChunk",
    "FinishReason",
    "GatewayWorker",
    "GenerateResponse",
    "HealthStatus",
    "InternalServerError",
    "MetaInfo",
    "ModelInfo",
    "NotFoundError",
    "PermissionDeniedError",
    "PrefixStats",
    "PrefixTree",
    "SGLangClient",
    "SGLangError",
    "ServerInfo",
    "ServerLoad",
    "ServerOverloadedError",
    "ServerSessionsUnavailable",
    "Session",
    "SessionManager",
    "SessionNotFoundError",
    "SessionStream",
    "StreamChunk",
    "StreamError",
    "TokenizerUnavailable",
    "Turn",
    "UnprocessableEntityError",
    "__version__",
    "request_headers",
    "routing_key",
]

# Users see `sglang_client.SGLangClient` in reprs and tracebacks, not the private module path.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("sglang_client."):
        _obj.__module__ = "sglang_client"
del _name, _obj
