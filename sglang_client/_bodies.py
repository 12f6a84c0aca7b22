"""Request bodies built from keyword arguments, shared by SGLangClient and CachedClient."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sglang_client.errors import SGLangError

__all__ = ["generate_body", "prompt_value", "text_answer", "tokens_answer"]


def generate_body(
    text: object,
    input_ids: object,
    sampling_params: object,
    rid: object,
    extra: Mapping[str, object],
) -> dict[str, Any]:
    """A ``/generate`` body from ``SGLangClient.generate``-style arguments (``None`` omitted)."""
    body: dict[str, Any] = dict(extra)
    if text is not None:
        body["text"] = text if isinstance(text, str) else list(text)  # type: ignore[call-overload]
    for name, value in (
        ("input_ids", input_ids),
        ("sampling_params", sampling_params),
        ("rid", rid),
    ):
        if value is not None:
            body[name] = value
    return body


def prompt_value(prompt: str | Sequence[str] | Sequence[int]) -> object:
    """A ``/v1/completions`` prompt as JSON: a string, or a list (of strings or token ids)."""
    return prompt if isinstance(prompt, str) else list(prompt)


def tokens_answer(data: object) -> list[int]:
    """The ``tokens`` of a ``/tokenize`` answer for one prompt."""
    tokens = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
        raise SGLangError(f"unexpected response from /tokenize: {str(data)[:200]!r}")
    return tokens


def text_answer(data: object) -> str:
    """The ``text`` of a ``/detokenize`` answer for one list of ids."""
    text = data.get("text") if isinstance(data, dict) else None
    if not isinstance(text, str):
        raise SGLangError(f"unexpected response from /detokenize: {str(data)[:200]!r}")
    return text
