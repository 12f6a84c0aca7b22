"""A small scripted SGLang upstream (httpx.MockTransport) that counts what it generates.

It speaks just enough of the protocol for the cache tests, and numbers every completion it
generates, so a test can tell a cached completion from a fresh one.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from sglang_client import SGLangClient


@dataclass
class Upstream:
    generated: int = 0
    calls: list[dict[str, Any]] = field(default_factory=list)

    def _completion(self, prompt: object, temperature: object) -> dict[str, Any]:
        self.generated += 1
        text = f" greedy({prompt})" if temperature == 0 else f" sample#{self.generated}"
        return {
            "text": text,
            "output_ids": [7, 8, 9],
            "meta_info": {
                "id": uuid.uuid4().hex,
                "finish_reason": {"type": "length", "length": 3},
                "prompt_tokens": 4,
                "completion_tokens": 3,
                "cached_tokens": 0,
            },
        }

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/model_info":
            return httpx.Response(200, json={"model_path": "mock/model"})
        if request.method == "GET" or not request.content:
            return httpx.Response(404, json={"detail": "Not Found"})  # /metrics, /server_info
        body = json.loads(request.content)
        self.calls.append({"path": path, **body})
        if path == "/generate":
            return self._generate(body)
        if path == "/v1/chat/completions":
            return self._chat(body)
        if path == "/v1/completions":
            return self._completions(body)
        return httpx.Response(404, json={"detail": "Not Found"})

    def _generate(self, body: dict[str, Any]) -> httpx.Response:
        text = body.get("text")
        if text == "FAIL":
            return httpx.Response(400, json={"error": {"message": "bad prompt"}})
        params = body.get("sampling_params") or {}
        if isinstance(params, list):
            params = params[0]
        n = params.get("n", 1)
        prompts = text if isinstance(text, list) else [text]
        outputs = [
            self._completion(p, params.get("temperature")) for p in prompts for _ in range(n)
        ]
        if text == "ABORT":
            for o in outputs:
                o["meta_info"]["finish_reason"] = {"type": "abort", "message": "Aborted"}
        if body.get("stream"):
            return self._sse(outputs, indexed=isinstance(text, list) or n > 1)
        single = not isinstance(text, list) and n == 1
        return httpx.Response(200, json=outputs[0] if single else outputs)

    @staticmethod
    def _sse(outputs: list[dict[str, Any]], indexed: bool) -> httpx.Response:
        events = []
        for i, output in enumerate(outputs):
            words = output["text"].split(" ")[1:]
            for w, _ in enumerate(words):
                chunk = json.loads(json.dumps(output))
                chunk["text"] = "".join(" " + x for x in words[: w + 1])
                chunk["output_ids"] = output["output_ids"][: w + 1]
                last = w == len(words) - 1
                if last:
                    chunk["output_ids"] = output["output_ids"]
                chunk["meta_info"]["completion_tokens"] = len(chunk["output_ids"])
                if not last:
                    chunk["meta_info"]["finish_reason"] = None
                if indexed:
                    chunk["index"] = i
                events.append(f"data: {json.dumps(chunk)}\n\n")
        events.append("data: [DONE]\n\n")
        return httpx.Response(
            200, content="".join(events).encode(), headers={"content-type": "text/event-stream"}
        )

    def _chat(self, body: dict[str, Any]) -> httpx.Response:
        """Last message ``think``: reasoning first; ``tool``: a tool call; ``logprobs`` honoured."""
        n = body.get("n", 1)
        last = body["messages"][-1].get("content")
        logprobs = {"content": [{"token": "x", "logprob": -0.1}]} if body.get("logprobs") else None
        choices = []
        for i in range(n):
            self.generated += 1
            message: dict[str, Any] = {"role": "assistant", "content": f"reply#{self.generated}"}
            message["reasoning_content"] = "because" if last == "think" else None
            message["tool_calls"] = None
            if last == "tool":
                call = {"name": "f", "arguments": "{}"}
                message["tool_calls"] = [{"id": "c1", "type": "function", "function": call}]
            choices.append(
                {
                    "index": i,
                    "message": message,
                    "logprobs": logprobs,
                    "finish_reason": "tool_calls" if last == "tool" else "stop",
                    "matched_stop": None,
                }
            )
        usage = {"prompt_tokens": 5, "completion_tokens": 2 * n, "total_tokens": 5 + 2 * n}
        rid = uuid.uuid4().hex
        if not body.get("stream"):
            response = {"id": rid, "object": "chat.completion", "created": 1, "model": "m"}
            return httpx.Response(200, json={**response, "choices": choices, "usage": usage})
        events = []
        for c in choices:
            base = {"id": rid, "object": "chat.completion.chunk", "created": 1, "model": "m"}
            deltas: list[tuple[dict[str, Any], Any, Any]] = [
                ({"role": "assistant", "content": ""}, None, None)
            ]
            if c["message"]["reasoning_content"]:
                deltas.append(
                    ({"reasoning_content": c["message"]["reasoning_content"]}, None, None)
                )
            deltas.append(({"content": c["message"]["content"]}, None, logprobs))
            deltas.append(({}, c["finish_reason"], None))
            for delta, finish, lp in deltas:
                choice = {"index": c["index"], "delta": delta, "finish_reason": finish}
                choice["logprobs"] = lp
                events.append({**base, "choices": [choice]})
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(
                {"id": rid, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            )
        wire = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return httpx.Response(
            200, content=wire.encode(), headers={"content-type": "text/event-stream"}
        )

    def _completions(self, body: dict[str, Any]) -> httpx.Response:
        """Prompt ``CUT``: the stream ends without a finish reason (the upstream died)."""
        n = body.get("n", 1)
        texts = []
        for _ in range(n):
            self.generated += 1
            texts.append(f" words of draft {self.generated}")
        usage = {"prompt_tokens": 4, "completion_tokens": 4 * n, "total_tokens": 4 + 4 * n}
        rid = uuid.uuid4().hex
        logprobs = {"tokens": ["x"], "token_logprobs": [-0.5]} if body.get("logprobs") else None
        if not body.get("stream"):
            choices = [
                {"index": i, "text": t, "logprobs": logprobs, "finish_reason": "length"}
                for i, t in enumerate(texts)
            ]
            response = {"id": rid, "object": "text_completion", "created": 1, "model": "m"}
            return httpx.Response(200, json={**response, "choices": choices, "usage": usage})
        events = []
        for i, text in enumerate(texts):
            words = [" " + w for w in text.split(" ")[1:]]
            for w, word in enumerate(words):
                last = w == len(words) - 1 and body.get("prompt") != "CUT"
                choice = {
                    "index": i,
                    "text": word,
                    "logprobs": logprobs,
                    "finish_reason": "length" if last else None,
                    "matched_stop": None,
                }
                base = {"id": rid, "object": "text_completion", "created": 1, "model": "m"}
                events.append({**base, "choices": [choice], "usage": None})
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({"id": rid, "object": "text_completion", "choices": [], "usage": usage})
        wire = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return httpx.Response(
            200, content=wire.encode(), headers={"content-type": "text/event-stream"}
        )


def client_for(upstream: Upstream) -> SGLangClient:
    return SGLangClient(
        "http://upstream.test", transport=httpx.MockTransport(upstream.handle), max_retries=0
    )
