"""OpenAI-route logprobs in SGLang's shapes, from the same pseudo model as ``return_logprob``.

Chat (``logprobs: true``, ``top_logprobs: k``): ``choices[].logprobs = {"content": [{"token",
"bytes", "logprob", "top_logprobs": [{"token", "bytes", "logprob"}, ...]}, ...]}``.
Completions (``logprobs: k``): ``choices[].logprobs = {"text_offset": [-1, ...], "token_logprobs":
[...], "tokens": [...], "top_logprobs": [{token: logprob, ...}, ...]}`` (SGLang reports every
``text_offset`` as -1). A stream chunk carries the entries of the tokens it adds.
"""

from __future__ import annotations

from typing import Any

from sglang_client.testing._engine import Run, Sub
from sglang_client.testing._logprobs import LogprobTracker
from sglang_client.testing._tokenizer import Tokenizer

__all__ = ["attach", "chat_logprobs", "completion_logprobs"]


def attach(run: Run, tokenizer: Tokenizer, top_n: int, echo: bool = False) -> None:
    """Track logprobs of every sub-request of ``run`` (of the prompt too with ``echo``)."""
    for sub in run.subs:
        start = 0 if echo else len(sub.prompt_ids)
        sub.logprobs = LogprobTracker(tokenizer, sub.prompt_ids, start, top_n, True)


def _entries(sub: Sub, start: int, end: int | None) -> tuple[list[Any], list[Any]]:
    tracker = sub.logprobs
    assert tracker is not None
    tracker.extend(sub.gen.output_ids)
    return tracker.output[start:end], tracker.output_top[start:end]


def _token(entry: list[Any]) -> dict[str, Any]:
    text = entry[2] or ""
    return {"token": text, "bytes": list(text.encode("utf-8")), "logprob": entry[0]}


def chat_logprobs(sub: Sub, start: int = 0, end: int | None = None) -> dict[str, Any] | None:
    """The chat ``logprobs`` of output tokens ``start:end`` (``None`` when not asked for)."""
    if sub.logprobs is None:
        return None
    entries, tops = _entries(sub, start, end)
    content = []
    for entry, top in zip(entries, tops, strict=True):
        content.append({**_token(entry), "top_logprobs": [_token(t) for t in top or []]})
    return {"content": content}


def completion_logprobs(
    sub: Sub, start: int = 0, end: int | None = None, *, echo: bool = False
) -> dict[str, Any] | None:
    """The completions ``logprobs`` of output tokens ``start:end`` (with ``echo``, the prompt's
    first); ``None`` when not asked for."""
    tracker = sub.logprobs
    if tracker is None:
        return None
    entries, tops = _entries(sub, start, end)
    if echo:
        entries, tops = tracker.input + entries, tracker.input_top + tops
    return {
        "text_offset": [-1] * len(entries),
        "token_logprobs": [e[0] for e in entries],
        "tokens": [e[2] or "" for e in entries],
        "top_logprobs": [{t[2] or "": t[0] for t in top or []} for top in tops],
    }
