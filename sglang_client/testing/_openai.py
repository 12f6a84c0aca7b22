"""OpenAI-compatible routes: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``.

Shapes follow SGLang's OpenAI layer (protocol §7, facts 23-26): raw 32-hex ids, ``matched_stop``,
``metadata.weight_version``, flat error bodies, a separate finish chunk in chat streams and the
finish reason on the last text chunk of completion streams.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sglang_client.testing._asgi import (
    DONE_EVENT,
    HTTPError,
    Receive,
    Scope,
    Send,
    flat_error,
    parse_json,
    require_object,
    sse_event,
    start_sse,
    validation_error,
)
from sglang_client.testing._engine import Engine, Run, Sub
from sglang_client.testing._native import QUEUE_FULL, FaultDraw, NativeGenerate
from sglang_client.testing._openai_fields import CHAT_FIELDS, COMPLETION_FIELDS, SAMPLING_MAP
from sglang_client.testing._openai_logprobs import attach, chat_logprobs, completion_logprobs
from sglang_client.testing._params import (
    SamplingParams,
    coerce,
    lax_type_errors,
    parse_sampling_params,
)

__all__ = ["OpenAIRoutes", "require_json_content_type"]


_FINISH = {"stop": "stop", "length": "length", "abort": "abort"}


def require_json_content_type(scope: Scope) -> None:
    """SGLang's ``validate_json_request``: only ``application/json`` bodies (fact 26).

    Raises:
        HTTPError: 400 in the validation-error shape.
    """
    content_type = b""
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value
            break
    media = content_type.decode("latin-1").split(";", 1)[0].strip().lower()
    if media != "application/json":
        error = {
            "loc": ["header", "content-type"],
            "msg": "Unsupported Media Type: Only 'application/json' is allowed",
            "type": "value_error",
        }
        raise validation_error([error])


def _bad_request(message: str) -> HTTPError:
    return HTTPError(400, flat_error(message, "BadRequestError", 400))


def _finish(sub: Sub) -> tuple[str | None, Any]:
    finish = sub.gen.finish_reason
    if finish is None:
        return None, None
    reason = _FINISH.get(finish["type"], finish["type"])
    return reason, finish.get("matched") if finish["type"] == "stop" else None


class OpenAIRoutes:
    """The OpenAI-compatible generation routes over the shared ``Engine``."""

    def __init__(self, engine: Engine, native: NativeGenerate) -> None:
        self.engine = engine
        self.native = native
        self.config = engine.config
        self.tokenizer = engine.tokenizer

    def model_card(self) -> dict[str, Any]:
        """The one ``/v1/models`` card of the served model."""
        name = self.config.model_name
        return {
            "id": name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "sglang",
            "root": name,
            "parent": None,
            "max_model_len": self.config.context_length,
        }

    def usage(self, run: Run, n: int, *, drop_none: bool = False) -> dict[str, Any]:
        """Token usage: prompt (and cached) tokens once per prompt, completion tokens summed."""
        firsts = run.subs[::n]
        prompt = sum(len(s.prompt_ids) for s in firsts)
        completion = sum(len(s.gen.output_ids) for s in run.subs)
        details = None
        if self.config.enable_cache_report:
            details = {"cached_tokens": sum(s.cached_tokens for s in firsts)}
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "total_tokens": prompt + completion,
            "completion_tokens": completion,
            "prompt_tokens_details": details,
            "reasoning_tokens": 0,
            "completion_tokens_details": None,
        }
        if drop_none:
            usage = {k: v for k, v in usage.items() if v is not None}
        return usage

    # -- request parsing ---------------------------------------------------------------------

    def _body(self, scope: Scope, body: bytes, fields: dict[str, Any], name: str) -> dict[str, Any]:
        require_json_content_type(scope)
        data = require_object(parse_json(body), name)
        errors = lax_type_errors(data, fields)
        if errors:
            raise validation_error(errors)
        for key, spec in fields.items():
            if isinstance(spec, str) and key in data:
                data[key] = coerce(spec, data[key])
        return data

    def _params(self, data: dict[str, Any], max_tokens: int | None) -> SamplingParams:
        raw: dict[str, Any] = {"max_new_tokens": max_tokens}
        for name, key in SAMPLING_MAP.items():
            if data.get(name) is not None:
                raw[key] = data[name]
        try:
            return parse_sampling_params(raw, self.tokenizer.vocab_size)
        except ValueError as exc:
            raise _bad_request(str(exc)) from None

    def _chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        if not messages:
            raise _bad_request("Messages cannot be empty.")
        turns: list[tuple[str, str]] = []
        for message in messages:
            role = message.get("role")
            if role not in ("system", "user", "assistant", "tool", "developer"):
                raise _bad_request(f"Invalid message role: {role!r}.")
            content = message.get("content")
            if isinstance(content, list):
                texts = []
                for part in content:
                    if not isinstance(part, dict) or part.get("type") != "text":
                        raise _bad_request("Only text content parts are supported by this model.")
                    texts.append(str(part.get("text", "")))
                content = "".join(texts)
            elif content is None:
                content = ""
            elif not isinstance(content, str):
                raise _bad_request("Message content must be a string or a list of parts.")
            turns.append((str(role), content))
        return self.tokenizer.encode(self.tokenizer.apply_chat_template(turns))

    def _completion_prompts(self, prompt: Any) -> list[list[int]]:
        if prompt is None:
            error = {"type": "missing", "loc": ("body", "prompt"), "msg": "Field required"}
            raise validation_error([{**error, "input": None}])
        if prompt == "" or prompt == []:
            raise _bad_request("Prompt cannot be empty")
        if isinstance(prompt, str):
            return [self.tokenizer.encode(prompt)]
        if isinstance(prompt[0], str):
            return [self.tokenizer.encode(p) for p in prompt]
        prompts = [list(p) for p in prompt] if isinstance(prompt[0], list) else [list(prompt)]
        for ids in prompts:
            if not ids:
                raise _bad_request("Prompt cannot be empty")
            bad = self.tokenizer.first_invalid(ids)
            if bad is not None:
                raise _bad_request(f"Token id {bad} is outside the vocabulary.")
        return prompts

    def _start(self, prompts: list[list[int]], params: SamplingParams, rid: Any) -> Run:
        rids = [rid] if isinstance(rid, str) and len(prompts) == 1 else None
        try:
            return self.engine.make_run(prompts, [params] * len(prompts), rids)
        except ValueError as exc:
            raise _bad_request(str(exc)) from None

    async def _overloaded(self, send: Send, stream: bool) -> None:
        if not stream:
            raise HTTPError(503, flat_error(QUEUE_FULL, "503", 503))
        error = flat_error(QUEUE_FULL, "SERVICE_UNAVAILABLE", 503)
        await start_sse(send)
        await send({"type": "http.response.body", "body": sse_event({"error": error}) + DONE_EVENT})

    # -- chat --------------------------------------------------------------------------------

    async def chat(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, draw: FaultDraw
    ) -> None:
        """Serve ``POST /v1/chat/completions``."""
        data = self._body(scope, body, CHAT_FIELDS, "ChatCompletionRequest")
        if data.get("messages") is None:
            missing = {"type": "missing", "loc": ("body", "messages"), "msg": "Field required"}
            raise validation_error([{**missing, "input": data}])
        stream = bool(data.get("stream"))
        fault = await draw(stream)
        if fault == "503":
            await self._overloaded(send, stream)
            return
        prompt = self._chat_prompt(data["messages"])
        max_tokens = data.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = data.get("max_tokens")
        params = self._params(data, max_tokens)
        run = self._start([prompt], params, data.get("rid"))
        run.stream = stream
        if data.get("logprobs"):
            attach(run, self.tokenizer, int(data.get("top_logprobs") or 0))
        model = data.get("model") or "default"
        created = int(time.time())
        try:
            if stream:
                await self._chat_stream(receive, send, run, data, model, created, fault)
            else:
                await self._send_whole(
                    receive,
                    send,
                    run,
                    "chat.completion",
                    model,
                    created,
                    params.n,
                    lambda sub: {"message": _message(sub), "logprobs": chat_logprobs(sub)},
                    fault,
                )
        finally:
            self.engine.finish(run)

    async def _send_whole(
        self,
        receive: Receive,
        send: Send,
        run: Run,
        obj: str,
        model: str,
        created: int,
        n: int,
        content: Callable[[Sub], dict[str, Any]],
        fault: str | None,
    ) -> None:
        """Finish ``run`` and send it as one chat or completions response."""
        await self.native.complete(receive, run)
        choices = []
        for sub in run.subs:
            reason, matched = _finish(sub)
            choices.append(
                {
                    "index": sub.index,
                    **content(sub),
                    "finish_reason": reason,
                    "matched_stop": matched,
                }
            )
        version = self.config.weight_version
        end = len(run.subs[0].gen.output_ids)
        response = {
            "id": run.subs[0].rid,
            "object": obj,
            "created": created,
            "model": model,
            "choices": choices,
            "usage": self.usage(run, n),
            "metadata": {
                "weight_version": version,
                "weight_versions": [{"version": version, "start": 0, "end": end}],
            },
        }
        await self.native.send_final(send, response, fault)

    async def _chat_stream(
        self,
        receive: Receive,
        send: Send,
        run: Run,
        data: dict[str, Any],
        model: str,
        created: int,
        fault: str | None,
    ) -> None:
        def chunk(
            sub: Sub, delta: dict[str, Any], reason: str | None, matched: Any, logprobs: Any = None
        ) -> bytes:
            choice = {
                "index": sub.index,
                "delta": delta,
                "logprobs": logprobs,
                "finish_reason": reason,
                "matched_stop": matched,
            }
            return sse_event(
                {
                    "id": sub.rid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [choice],
                }
            )

        def events(sub: Sub) -> list[bytes]:
            out = []
            if sub.chunks == 0:
                role = {"reasoning_content": None, "role": "assistant", "content": ""}
                out.append(chunk(sub, role, None, None))
            sub.chunks += 1
            text = sub.gen.visible_text()
            if len(text) > sub.sent_chars:
                delta = {"reasoning_content": None, "content": text[sub.sent_chars :]}
                tokens = len(sub.gen.output_ids)
                logprobs = chat_logprobs(sub, sub.sent_ids, tokens)
                out.append(chunk(sub, delta, None, None, logprobs))
                sub.sent_chars, sub.sent_ids = len(text), tokens
            if sub.done:
                reason, matched = _finish(sub)
                out.append(chunk(sub, {"reasoning_content": None}, reason, matched))
            return out

        await self.native.stream_events(receive, send, run, events, fault)
        tail = b""
        if (data.get("stream_options") or {}).get("include_usage"):
            usage_chunk = {
                "id": run.subs[0].rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": self.usage(run, self._n(run)),
            }
            tail = sse_event(usage_chunk)
        await send({"type": "http.response.body", "body": tail + DONE_EVENT})

    @staticmethod
    def _n(run: Run) -> int:
        return run.subs[0].gen.params.n

    # -- completions -------------------------------------------------------------------------

    async def completions(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, draw: FaultDraw
    ) -> None:
        """Serve ``POST /v1/completions``."""
        data = self._body(scope, body, COMPLETION_FIELDS, "CompletionRequest")
        max_tokens = data.get("max_tokens", 16)
        if max_tokens is not None and max_tokens <= 0:
            error = {
                "type": "value_error",
                "loc": ("body", "max_tokens"),
                "msg": "Value error, max_tokens must be positive",
                "input": max_tokens,
            }
            raise validation_error([error])
        stream = bool(data.get("stream"))
        fault = await draw(stream)
        if fault == "503":
            await self._overloaded(send, stream)
            return
        prompts = self._completion_prompts(data.get("prompt"))
        params = self._params(data, max_tokens)
        run = self._start(prompts, params, data.get("rid"))
        run.stream = stream
        echo = bool(data.get("echo"))
        if data.get("logprobs") is not None:
            attach(run, self.tokenizer, int(data["logprobs"]), echo)
        # echo: each choice's text starts with its prompt, as SGLang sends it.
        echoed = [self.tokenizer.decode(p) if echo else "" for p in prompts]
        model = data.get("model") or "default"
        created = int(time.time())

        def content(sub: Sub) -> dict[str, Any]:
            text = echoed[sub.index // params.n] + sub.gen.text
            return {"text": text, "logprobs": completion_logprobs(sub, echo=echo)}

        try:
            if stream:
                await self._completion_stream(
                    receive, send, run, data, model, created, fault, echoed
                )
            else:
                await self._send_whole(
                    receive,
                    send,
                    run,
                    "text_completion",
                    model,
                    created,
                    params.n,
                    content,
                    fault,
                )
        finally:
            self.engine.finish(run)

    async def _completion_stream(
        self,
        receive: Receive,
        send: Send,
        run: Run,
        data: dict[str, Any],
        model: str,
        created: int,
        fault: str | None,
        echoed: list[str],
    ) -> None:
        n = self._n(run)
        echo = bool(data.get("echo"))

        def events(sub: Sub) -> list[bytes]:
            text = sub.gen.visible_text()
            if len(text) == sub.sent_chars and not sub.done:
                return []
            reason, matched = _finish(sub) if sub.done else (None, None)
            first = sub.chunks == 0
            sub.chunks += 1
            tokens = len(sub.gen.output_ids)
            logprobs = completion_logprobs(sub, sub.sent_ids, tokens, echo=echo and first)
            prefix = echoed[sub.index // n] if first else ""
            choice = {
                "index": sub.index,
                "text": prefix + text[sub.sent_chars :],
                "logprobs": logprobs,
                "finish_reason": reason,
                "matched_stop": matched,
            }
            sub.sent_chars, sub.sent_ids = len(text), tokens
            chunk = {
                "id": sub.rid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": None,
            }
            return [sse_event(chunk)]

        await self.native.stream_events(receive, send, run, events, fault)
        tail = b""
        if (data.get("stream_options") or {}).get("include_usage"):
            usage_chunk = {
                "id": run.subs[0].rid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [],
                "usage": self.usage(run, self._n(run), drop_none=True),
            }
            tail = sse_event(usage_chunk)
        await send({"type": "http.response.body", "body": tail + DONE_EVENT})


def _message(sub: Sub) -> dict[str, Any]:
    # No tool_calls key unless there are tool calls: SGLang leaves it out.
    return {"role": "assistant", "content": sub.gen.text, "reasoning_content": None}
