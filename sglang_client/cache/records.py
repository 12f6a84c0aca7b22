"""Stored completions: made from SGLang's responses, and the responses and streams made from them.

A stored completion is one sample as SGLang returned it:
- ``/generate``: the response object (``text``, ``output_ids``, ``meta_info``).
- chat and completions: ``{"choice": <choice without index>, "completion_tokens": int,
  "prompt_tokens": int, "envelope": {id, created, model, metadata}}``. SGLang reports only the sum
  of completion tokens for n > 1, so each choice of such a response is stored with an equal share
  (remainder to the first); a replay of the same group sums back to the original exactly.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "all_finished",
    "assemble_openai",
    "chat_replayable",
    "openai_finished",
    "openai_records",
    "repeat",
    "replay_chat_chunks",
    "replay_completion_chunks",
    "replay_generate_chunk",
    "with_cached_usage",
]

JSON = dict[str, Any]


def repeat(records: list[JSON], n: int) -> list[JSON]:
    """``n`` completions from the stored ones: the first ``n``, or (greedy) one repeated."""
    return records[:n] if len(records) >= n else (records * n)[:n]


def all_finished(outputs: Sequence[Mapping[str, Any]]) -> bool:
    """Whether every output finished normally (aborted generations are never stored)."""
    for output in outputs:
        finish = (output.get("meta_info") or {}).get("finish_reason")
        if not isinstance(finish, Mapping) or finish.get("type") not in ("stop", "length"):
            return False
    return True


def openai_finished(records: Sequence[Mapping[str, Any]]) -> bool:
    """Whether every stored chat/completions choice finished normally."""
    return bool(records) and all(
        r["choice"].get("finish_reason") in ("stop", "length", "tool_calls") for r in records
    )


def replay_generate_chunk(completion: Mapping[str, Any], index: int | None) -> JSON:
    """One stream event carrying a whole stored completion.

    The first chunk of an index is the same in cumulative and incremental streaming, so a
    one-chunk replay is valid whichever mode the upstream runs in.
    """
    chunk = dict(completion)
    if index is None:
        chunk.pop("index", None)
    else:
        chunk["index"] = index
    return chunk


def openai_records(response: Mapping[str, Any]) -> list[JSON]:
    """Stored completions for every choice of a chat/completions response."""
    choices = sorted(response.get("choices") or [], key=lambda c: c.get("index", 0))
    usage = response.get("usage") or {}
    total = int(usage.get("completion_tokens") or 0)
    prompt_tokens = int(usage.get("prompt_tokens") or 0)
    share, remainder = divmod(total, max(1, len(choices)))
    thinking, extra = divmod(int(usage.get("reasoning_tokens") or 0), max(1, len(choices)))
    envelope = {
        key: response[key] for key in ("id", "created", "model", "metadata") if key in response
    }
    records = []
    for i, choice in enumerate(choices):
        records.append(
            {
                "choice": {k: v for k, v in choice.items() if k != "index"},
                "completion_tokens": share + (remainder if i == 0 else 0),
                "reasoning_tokens": thinking + (extra if i == 0 else 0),
                "prompt_tokens": prompt_tokens,
                "envelope": envelope,
            }
        )
    return records


def assemble_openai(records: Sequence[Mapping[str, Any]], obj: str, model: object) -> JSON:
    """A chat/completions response built from stored completions (choices re-indexed)."""
    envelope = records[0].get("envelope") or {}
    completion_tokens = sum(int(r.get("completion_tokens") or 0) for r in records)
    reasoning_tokens = sum(int(r.get("reasoning_tokens") or 0) for r in records)
    prompt_tokens = int(records[0].get("prompt_tokens") or 0)
    return {
        "id": uuid.uuid4().hex,
        "object": obj,
        "created": int(time.time()),
        "model": model if isinstance(model, str) else envelope.get("model", "default"),
        "choices": [{"index": i, **r["choice"]} for i, r in enumerate(records)],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens,
            "prompt_tokens_details": None,
            "reasoning_tokens": reasoning_tokens,
            "completion_tokens_details": (
                {"reasoning_tokens": reasoning_tokens} if reasoning_tokens else None
            ),
        },
        "metadata": envelope.get("metadata") or _metadata(records),
    }


def _metadata(records: Sequence[Mapping[str, Any]]) -> JSON:
    """SGLang's ``metadata`` for an answer rebuilt from a stream (which does not carry it)."""
    end = int(records[0].get("completion_tokens") or 0)
    versions = [{"version": "default", "start": 0, "end": end}]
    return {"weight_version": "default", "weight_versions": versions}


def chat_replayable(records: Sequence[Mapping[str, Any]]) -> bool:
    """Whether stored chat completions can be replayed as a stream (tool calls cannot, yet)."""
    return not any((r["choice"].get("message") or {}).get("tool_calls") for r in records)


def replay_chat_chunks(
    records: Sequence[Mapping[str, Any]], model: object, include_usage: bool
) -> list[JSON]:
    """Chat stream events replaying stored completions in SGLang's chat framing (§7.4).

    As in SGLang, each choice's chunks carry that sample's own id (§7.2).
    """
    ids = [uuid.uuid4().hex for _ in records] or [uuid.uuid4().hex]
    created = int(time.time())
    name = model if isinstance(model, str) else "default"

    def chunk(index: int, delta: JSON, finish: object = None, matched: object = None) -> JSON:
        return {
            "id": ids[index],
            "object": "chat.completion.chunk",
            "created": created,
            "model": name,
            "choices": [
                {
                    "index": index,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": finish,
                    "matched_stop": matched,
                }
            ],
        }

    events = []
    for i, record in enumerate(records):
        message = record["choice"].get("message") or {}
        events.append(chunk(i, {"reasoning_content": None, "role": "assistant", "content": ""}))
        if message.get("reasoning_content"):
            events.append(chunk(i, {"reasoning_content": message["reasoning_content"]}))
        logprobs = record["choice"].get("logprobs")
        if message.get("content") or logprobs is not None:
            content = chunk(i, {"reasoning_content": None, "content": message.get("content") or ""})
            content["choices"][0]["logprobs"] = logprobs  # the whole message's, in one chunk
            events.append(content)
        events.append(
            chunk(
                i,
                {"reasoning_content": None},
                record["choice"].get("finish_reason"),
                record["choice"].get("matched_stop"),
            )
        )
    if include_usage:
        assembled = assemble_openai(records, "chat.completion", model)
        events.append({**chunk(0, {}), "choices": [], "usage": assembled["usage"]})
    return events


def replay_completion_chunks(
    records: Sequence[Mapping[str, Any]], model: object, include_usage: bool
) -> list[JSON]:
    """Completions stream events replaying stored completions (§7.4): one chunk per choice.

    The finish reason rides on a choice's last (here: only) text chunk, each choice has its own
    id as in SGLang, and the usage chunk leaves out empty fields.
    """
    created = int(time.time())
    name = model if isinstance(model, str) else "default"
    ids = [uuid.uuid4().hex for _ in records]
    events = []
    for i, record in enumerate(records):
        choice = record["choice"]
        events.append(
            {
                "id": ids[i],
                "object": "text_completion",
                "created": created,
                "model": name,
                "choices": [
                    {
                        "index": i,
                        "text": choice.get("text") or "",
                        "logprobs": choice.get("logprobs"),
                        "finish_reason": choice.get("finish_reason"),
                        "matched_stop": choice.get("matched_stop"),
                    }
                ],
                "usage": None,
            }
        )
    if include_usage:
        usage = assemble_openai(records, "text_completion", model)["usage"]
        usage = {k: v for k, v in usage.items() if v is not None}
        events.append(
            {
                "id": ids[0],
                "object": "text_completion",
                "created": created,
                "model": name,
                "choices": [],
                "usage": usage,
            }
        )
    return events


def with_cached_usage(event: Mapping[str, Any], cached: Sequence[Mapping[str, Any]]) -> JSON:
    """A stream's usage event with the stored completions' tokens added (a partial hit)."""
    usage = dict(event.get("usage") or {})
    extra = sum(int(r.get("completion_tokens") or 0) for r in cached)
    thinking = sum(int(r.get("reasoning_tokens") or 0) for r in cached)
    usage["completion_tokens"] = int(usage.get("completion_tokens") or 0) + extra
    usage["total_tokens"] = int(usage.get("prompt_tokens") or 0) + usage["completion_tokens"]
    if "reasoning_tokens" in usage:
        usage["reasoning_tokens"] = int(usage["reasoning_tokens"] or 0) + thinking
    return {**event, "usage": usage}
