"""The import surface is the contract: the public names exist and are re-exported cleanly."""

from __future__ import annotations

import sglang_client
import sglang_client.cache

CONTRACT = {
    "SGLangClient",
    "SessionManager",
    "Session",
    "PrefixTree",
    "CachedClient",
    "GenerateResponse",
    "StreamChunk",
    "HealthStatus",
    "SGLangError",
    "APIConnectionError",
    "APITimeoutError",
    "APIStatusError",
    "BadRequestError",
    "AuthenticationError",
    "NotFoundError",
    "ServerOverloadedError",
    "InternalServerError",
    "StreamError",
    "SessionNotFoundError",
    "TokenizerUnavailable",
}


def test_contract_names_are_exported() -> None:
    missing = CONTRACT - set(sglang_client.__all__)
    assert not missing, f"missing from sglang_client.__all__: {sorted(missing)}"
    for name in CONTRACT:
        assert getattr(sglang_client, name) is not None


def test_cache_stores_are_exported() -> None:
    for name in ("MemoryStore", "SQLiteStore", "RedisStore", "CachedClient"):
        assert name in sglang_client.cache.__all__


def test_all_is_sorted_and_resolves() -> None:
    names = [n for n in sglang_client.__all__ if n != "__version__"]
    assert names == sorted(names)
    for name in names:
        obj = getattr(sglang_client, name)
        assert obj.__module__ == "sglang_client", name


def test_errors_form_one_hierarchy() -> None:
    for name in CONTRACT:
        obj = getattr(sglang_client, name)
        if name.endswith("Error"):
            assert issubclass(obj, sglang_client.SGLangError)
    assert issubclass(sglang_client.SessionNotFoundError, LookupError)
    assert issubclass(sglang_client.APITimeoutError, sglang_client.APIConnectionError)
    assert issubclass(sglang_client.ServerOverloadedError, sglang_client.APIStatusError)
