"""Stream recorders: whole completions rebuilt from SGLang's streams, and the greedy fan-out."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sglang_client.cache.records import all_finished
from sglang_client.errors import StreamError
from sglang_client.streaming import DeltaTracker

__all__ = ["GreedyFanOut", "OpenAIRecorder", "StreamRecorder"]

JSON = dict[str, Any]


class StreamRecorder:
    """Rebuild whole ``/generate`` completions from a raw stream, whatever its mode."""

    def __init__(self) -> None:
        self._tracker = DeltaTracker()
        self._final: dict[int, JSON] = {}
        self._failed = False

    def feed(self, event: Mapping[str, Any]) -> None:
        if "error" in event or "meta_info" not in event:
            self._failed = True
            return
        try:
            chunk = self._tracker.update(dict(event))
        except StreamError:
            self._failed = True  # pass it through; store nothing
            return
        if chunk.finish_reason is not None:
            self._final[chunk.index] = {
                "text": chunk.text,
                "output_ids": list(chunk.output_ids),
                "meta_info": event["meta_info"],
            }

    def completions(self, k: int) -> list[JSON] | None:
        """The k finished completions in index order, or ``None`` if any is missing or aborted."""
        if self._failed or sorted(self._final) != list(range(k)):
            return None
        outputs = [self._final[i] for i in range(k)]
        return outputs if all_finished(outputs) else None


class OpenAIRecorder:
    """Rebuild a chat or ``/v1/completions`` response from its stream's chunks.

    Tool calls and logprobs arrive in pieces; a stream carrying them passes through unstored.
    """

    def __init__(self, chat: bool) -> None:
        self._chat = chat
        self._text: dict[int, list[str]] = {}  # chat: delta.content; completions: text
        self._reasoning: dict[int, list[str]] = {}
        self._finish: dict[int, tuple[object, object]] = {}
        self._usage: JSON | None = None
        self._envelope: JSON = {}
        self._unstorable = False

    def feed(self, event: Mapping[str, Any]) -> None:
        if not self._envelope and "id" in event:
            self._envelope = {k: event[k] for k in ("id", "created", "model") if k in event}
        if event.get("usage"):
            self._usage = dict(event["usage"])
        for choice in event.get("choices") or []:
            index = int(choice.get("index") or 0)
            part = (choice.get("delta") or {}) if self._chat else choice
            if part.get("tool_calls") or choice.get("logprobs") is not None:
                self._unstorable = True
            text = part.get("content") if self._chat else part.get("text")
            if text:
                self._text.setdefault(index, []).append(text)
            if part.get("reasoning_content"):
                self._reasoning.setdefault(index, []).append(part["reasoning_content"])
            if choice.get("finish_reason") is not None:
                self._finish[index] = (choice["finish_reason"], choice.get("matched_stop"))

    def response(self, n: int) -> JSON | None:
        if self._unstorable or sorted(self._finish) != list(range(n)) or self._usage is None:
            return None
        choices = []
        for i in range(n):
            finish, matched = self._finish[i]
            text = "".join(self._text.get(i, []))
            if self._chat:
                reasoning = "".join(self._reasoning[i]) if i in self._reasoning else None
                # As SGLang answers: no tool_calls key (streams with tool calls are not stored).
                message = {"role": "assistant", "content": text, "reasoning_content": reasoning}
                body: JSON = {"message": message}
            else:
                body = {"text": text}
            choices.append(
                {
                    "index": i,
                    **body,
                    "logprobs": None,
                    "finish_reason": finish,
                    "matched_stop": matched,
                }
            )
        return {**self._envelope, "choices": choices, "usage": self._usage}


class GreedyFanOut:
    """Greedy ``n > 1``: the one upstream completion streamed as the ``n`` equal choices.

    SGLang would stream ``n`` identical greedy samples; the cache generates one and sends each
    of its events once per choice index, each index with its own id (as SGLang's per-sample
    ids). A usage event counts the ``n`` completions, as SGLang's would.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._ids = [uuid.uuid4().hex for _ in range(n)]

    def generate(self, event: JSON) -> list[JSON]:
        """A native ``/generate`` event, once per index."""
        return [{**event, "index": i} for i in range(self.n)]

    def openai(self, event: JSON) -> list[JSON]:
        """A chat or completions chunk, once per index (a usage chunk once, scaled)."""
        choices = event.get("choices")
        if not choices:
            usage = event.get("usage")
            if not isinstance(usage, Mapping):
                return [event]
            scaled = dict(usage)
            for field in ("completion_tokens", "reasoning_tokens"):
                if isinstance(scaled.get(field), int):
                    scaled[field] *= self.n
            if isinstance(scaled.get("completion_tokens"), int):
                scaled["total_tokens"] = int(scaled.get("prompt_tokens") or 0) + int(
                    scaled["completion_tokens"]
                )
            return [{**event, "usage": scaled}]
        return [
            {
                **event,
                "id": event.get("id") if i == 0 else self._ids[i],
                "choices": [{**c, "index": i} for c in choices],
            }
            for i in range(self.n)
        ]
