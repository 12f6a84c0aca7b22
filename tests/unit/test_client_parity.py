"""``CachedClient`` has ``SGLangClient``'s methods with the same signatures, so neither drifts.

A cached call takes exactly what the plain one takes (``timeout`` included), plus ``cache=``
on the six generation methods; streams are async iterators of the same chunk types.
"""

from __future__ import annotations

import inspect
import re

import pytest

from sglang_client import CachedClient, SGLangClient

GENERATION = {
    "generate",
    "generate_stream",
    "chat_completion",
    "chat_completion_stream",
    "completion",
    "completion_stream",
}
NOT_ON_CACHED = {
    "with_options": "a CachedClient wraps a configured client; make another for other options",
    "request_json": "raw bodies of cached routes go through generate_json / openai_json",
    "stream_json": "raw streams of cached routes go through *_stream_json",
}


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if not name.startswith("_") and inspect.isfunction(member)
    }


PLAIN = public_methods(SGLangClient)


def test_every_method_of_sglang_client_is_on_cached_client() -> None:
    missing = set(PLAIN) - set(public_methods(CachedClient)) - set(NOT_ON_CACHED)
    assert not missing, f"CachedClient lacks {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(set(PLAIN) - set(NOT_ON_CACHED)))
def test_signatures_match(name: str) -> None:
    plain = PLAIN[name]
    cached = inspect.signature(getattr(CachedClient, name))
    params = list(cached.parameters.values())
    if name in GENERATION:
        [flag] = [p for p in params if p.name == "cache"]
        assert (flag.kind, flag.default) == (inspect.Parameter.KEYWORD_ONLY, True)
        params.remove(flag)
    assert params == list(plain.parameters.values())
    got, want = str(cached.return_annotation), str(plain.return_annotation)
    if want.startswith("AsyncStream["):  # a stream: the same chunks, as an async iterator
        assert re.sub(r"^AsyncIterator\[", "AsyncStream[", got) == want
    else:
        assert got == want
