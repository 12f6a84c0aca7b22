"""The fake server's small routes: health, info, cache, tokenizer, aborts, sessions, metrics."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sglang_client.testing._asgi import (
    HTTPError,
    Receive,
    Scope,
    Send,
    flat_error,
    parse_json,
    read_body,
    require_object,
    send_bytes,
    send_json,
    validation_error,
)
from sglang_client.testing._openai import require_json_content_type
from sglang_client.testing._params import coerce, lax_type_errors
from sglang_client.testing._sessions import SessionError

if TYPE_CHECKING:
    from sglang_client.testing.app import FakeSGLangApp

__all__ = ["SGLANG_VERSION", "MiscRoutes"]

SGLANG_VERSION = "0.5.23"
_FLUSHED = (
    b"Cache flushed.\nPlease check backend logs for more details. (When there are running or "
    b"waiting requests, the operation will not be performed.)\n"
)
_OPEN_SESSION = {"capacity_of_str_len": "int", "session_id": "str", "timeout": "float"}
# SGLang 0.5.23's families the fake keeps, with its help texts; label sets as it sends them.
_METRICS: tuple[tuple[str, str, str], ...] = (
    ("num_running_reqs", "gauge", "The number of running requests."),
    ("num_queue_reqs", "gauge", "The number of requests in the waiting queue."),
    ("gen_throughput", "gauge", "The generation throughput (token/s)."),
    ("cache_hit_rate", "gauge", "The prefix cache hit rate."),
    ("token_usage", "gauge", "The token usage."),
    ("num_used_tokens", "gauge", "The number of used tokens."),
    ("max_total_num_tokens", "gauge", "Maximum total number of tokens in the KV cache pool."),
    ("weight_memory_usage_gb", "gauge", "Memory used by model weights in GB."),
    ("kv_cache_memory_usage_gb", "gauge", "Memory used by the KV cache pools in GB."),
    ("http_requests_total", "counter", "Total number of HTTP requests by endpoint and method"),
    ("prompt_tokens_total", "counter", "Number of prefill tokens processed."),
    ("generation_tokens_total", "counter", "Number of generation tokens processed."),
    ("num_requests_total", "counter", "Number of requests processed."),
    (
        "cached_tokens_total",
        "counter",
        "Number of cached prompt tokens by source (device/host/storage).",
    ),
    ("num_aborted_requests_total", "counter", "Number of requests aborted."),
)


async def _empty(send: Send, status: int = 200) -> None:
    await send_bytes(send, status, b"", None)


# What /model_info says of a generation model's embedding support (SGLang 0.5.23).
_NO_EMBEDDING: dict[str, Any] = {
    "family": "none",
    "task": "none",
    "execution": "none",
    "attention": "none",
    "pooling": "model_defined",
    "normalize": False,
    "postprocessor": "none",
    "tokenizer_special_tokens": "model_default",
    "supports_dimensions": False,
    "supports_token_embeddings": False,
    "supports_multimodal": False,
    "requires_embedding_flag": False,
    "auto_enable_embedding": False,
    "bcg_eligibility": "disabled",
    "safe_disable_kv_cache": False,
    "safe_disable_radix_cache": False,
    "safe_disable_chunked_prefill": False,
    "enabled": False,
    "matryoshka_dimensions": [],
    "bcg": {
        "prefill_backend": "disabled",
        "enabled": False,
        "capture_token_budget": 4096,
        "capture_batch_sizes": [4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096],
    },
    "cache": {
        "kv_cache_disabled": False,
        "radix_cache_disabled": False,
        "chunked_prefill_disabled": False,
    },
}


class MiscRoutes:
    """Handlers that need only the app's state, not the generation machinery."""

    def __init__(self, app: FakeSGLangApp) -> None:
        self.app = app
        self.config = app.config
        self.engine = app.engine
        self.tokenizer = app.tokenizer

    async def health(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/health``, ``/health_generate``, ``/ready``: 503 while starting, then 200 (fact 17)."""
        await _empty(send, 200 if self.app.is_ready else 503)

    async def root(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/``."""
        await send_json(send, "SGLang is running")

    async def model_info(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/model_info`` and ``/get_model_info`` (fact 18)."""
        config = self.config
        await send_json(
            send,
            {
                "model_path": config.model_path,
                "served_model_name": config.model_name,
                "tokenizer_path": config.model_path,
                "is_generation": True,
                "preferred_sampling_params": None,
                "weight_version": config.weight_version,
                "load_format": "auto",
                "reasoning_parser": None,
                "tool_call_parser": None,
                "disaggregation_mode": "null",
                "has_image_understanding": False,
                "has_audio_understanding": False,
                "model_type": "fake",
                "architectures": ["FakeForCausalLM"],
                "embedding": _NO_EMBEDDING,
            },
        )

    async def server_info(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/server_info`` and ``/get_server_info``: server args, scheduler info, states."""
        config = self.config
        host, port = (scope.get("server") or ("127.0.0.1", 0))[:2]
        stats = self.app.stats
        elapsed = max(time.monotonic() - self.app.started_at, 1e-9)
        await send_json(
            send,
            {
                "model_path": config.model_path,
                "tokenizer_path": config.model_path,
                "served_model_name": config.model_name,
                "host": host,
                "port": port,
                # A server argument: null unless given on the command line (the model's own
                # length is in /v1/models' max_model_len).
                "context_length": None,
                "incremental_streaming_output": config.incremental_streaming_output,
                "stream_interval": config.stream_interval,
                "enable_metrics": config.enable_metrics,
                "enable_cache_report": config.enable_cache_report,
                "weight_version": config.weight_version,
                "tp_size": 1,
                "dp_size": 1,
                "skip_tokenizer_init": False,
                "max_total_num_tokens": config.radix_cache_tokens,
                "max_req_input_len": config.context_length - 1,
                "launch_command": "python -m sglang_client.testing",
                "internal_states": [
                    {
                        "last_gen_throughput": stats.generation_tokens / elapsed,
                        "memory_usage": {
                            "weight": 0.0,
                            "kvcache": 0.0,
                            "token_capacity": config.radix_cache_tokens,
                            "token_capacity_swa": None,
                            "graph": {"prefill": 0.0, "decode": 0.0},
                        },
                        "effective_max_running_requests_per_dp": 4096,
                    }
                ],
                "version": SGLANG_VERSION,
                "frontend": "python",
            },
        )

    async def flush_cache(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/flush_cache``: text/plain; refused (400) while requests run, as SGLang does."""
        # A bare Response in SGLang: no content type.
        if self.engine.inflight:
            await send_bytes(send, 400, _FLUSHED, None)
            return
        self.engine.cache.flush()
        await send_bytes(send, 200, _FLUSHED, None)

    async def tokenize(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/tokenize`` and ``/v1/tokenize`` (fact 27)."""
        require_json_content_type(scope)
        data = require_object(parse_json(await read_body(receive)), "TokenizeRequest")
        prompt, messages = data.get("prompt"), data.get("messages")
        if (prompt is None) == (messages is None):
            raise _value_error("Exactly one of 'prompt' or 'messages' must be given.", data)
        tok = self.tokenizer
        tokens: Any
        if messages is not None:
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise _value_error("'messages' must be a list of objects.", messages)
            turns = [(str(m.get("role", "user")), str(m.get("content") or "")) for m in messages]
            tokens = tok.encode(tok.apply_chat_template(turns))
            count: Any = len(tokens)
        elif isinstance(prompt, str):
            tokens = tok.encode(prompt)
            count = len(tokens)
        elif isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
            tokens = [tok.encode(p) for p in prompt]
            count = [len(t) for t in tokens]
        else:
            raise _value_error("'prompt' must be a string or a list of strings.", prompt)
        await send_json(
            send, {"tokens": tokens, "count": count, "max_model_len": self.config.context_length}
        )

    async def detokenize(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/detokenize`` and ``/v1/detokenize`` (fact 27)."""
        require_json_content_type(scope)
        data = require_object(parse_json(await read_body(receive)), "DetokenizeRequest")
        tokens: Any = data.get("tokens")
        skip = data.get("skip_special_tokens") is not False
        batch = isinstance(tokens, list) and bool(tokens) and isinstance(tokens[0], list)
        rows = tokens if batch else [tokens]
        if not isinstance(tokens, list) or not all(
            isinstance(row, list) and all(_is_int(t) for t in row) for row in rows
        ):
            message = "'tokens' must be a list of ints or a list of lists of ints."
            raise _value_error(message, tokens)
        for row in rows:
            bad = self.tokenizer.first_invalid(row)
            if bad is not None:
                size = self.tokenizer.vocab_size
                message = f"Token id {bad} is outside the vocabulary [0, {size})."
                raise HTTPError(400, flat_error(message, "BadRequestError", 400))
        texts = [self.tokenizer.decode(row, skip_special_tokens=skip) for row in rows]
        await send_json(send, {"text": texts if batch else texts[0]})

    async def abort_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/abort_request {"rid": R}`` or ``{"abort_all": true}``: 200 empty (fact 15)."""
        data = require_object(parse_json(await read_body(receive)), "AbortReq")
        errors = lax_type_errors(data, {"rid": "str", "abort_all": "bool"})
        if errors:
            raise validation_error(errors)
        if coerce("bool", data.get("abort_all")):
            self.engine.abort(None)
        elif data.get("rid") is not None:
            self.engine.abort([data["rid"]])
        await _empty(send)

    async def open_session(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/open_session``: a JSON string id; duplicate id or bad body → 400 (fact 21)."""
        data = require_object(parse_json(await read_body(receive)), "OpenSessionReqInput")
        errors = lax_type_errors(data, _OPEN_SESSION)
        if data.get("capacity_of_str_len") is None:
            missing = {"type": "missing", "loc": ("body", "capacity_of_str_len")}
            errors.insert(0, {**missing, "msg": "Field required", "input": data})
        if errors:
            raise validation_error(errors)
        if data.get("streaming"):
            message = (
                "Streaming sessions are disabled. Please relaunch with --enable-streaming-session."
            )
            raise HTTPError(400, {"error": {"message": message}})
        try:
            session_id = self.engine.sessions.open(
                data.get("session_id"),
                coerce("int", data["capacity_of_str_len"]),
                coerce("float", data.get("timeout")),
            )
        except SessionError as exc:
            raise HTTPError(400, {"error": {"message": str(exc)}}) from None
        await send_json(send, session_id)

    async def close_session(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/close_session``: 200 empty, also for unknown ids (fact 21)."""
        data = require_object(parse_json(await read_body(receive)), "CloseSessionReqInput")
        session_id = data.get("session_id")
        if not isinstance(session_id, str):
            kind = "missing" if session_id is None else "string_type"
            message = "Field required" if session_id is None else "Input should be a valid string"
            raise validation_error(
                [{"type": kind, "loc": ("body", "session_id"), "msg": message, "input": data}]
            )
        self.engine.sessions.close(session_id)
        await _empty(send)

    async def metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/metrics``: Prometheus text when ``enable_metrics``, else 404."""
        if not self.config.enable_metrics:
            raise HTTPError(404, {"detail": "Not Found"})
        stats = self.app.stats
        engine, config = self.engine, self.config
        elapsed = max(time.monotonic() - self.app.started_at, 1e-9)
        used = engine.tokens_in_use()
        model = f'model_name="{config.model_name}"'
        sched = f'engine_type="unified",{model},moe_ep_rank="0",pp_rank="0",tp_rank="0"'
        streamed = stats.streamed
        split = {
            "prompt_tokens_total": (stats.prompt_tokens, streamed["prompt_tokens"]),
            "generation_tokens_total": (stats.generation_tokens, streamed["generation_tokens"]),
            "num_requests_total": (stats.completions_generated, streamed["completions_generated"]),
        }
        gauges = {
            "num_running_reqs": len(engine.inflight) - engine.queued,
            "num_queue_reqs": engine.queued,
            "gen_throughput": stats.generation_tokens / elapsed,
            "cache_hit_rate": stats.cached_tokens / max(stats.prompt_tokens, 1),
            # As SGLang: the share of the KV cache that running requests hold.
            "token_usage": used / max(config.radix_cache_tokens, 1),
            "num_used_tokens": used,
            "max_total_num_tokens": config.radix_cache_tokens,
            "weight_memory_usage_gb": 0.0,
            "kv_cache_memory_usage_gb": 0.0,
        }
        lines = []
        for name, kind, help_text in _METRICS:
            lines.append(f"# HELP sglang:{name} {help_text}")
            lines.append(f"# TYPE sglang:{name} {kind}")
            metric = f"sglang:{name}"
            if name in gauges:
                lines.append(f"{metric}{{{sched}}} {float(gauges[name])}")
            elif name in split:
                total, streaming = split[name]
                for flag, value in (("false", total - streaming), ("true", streaming)):
                    labels = f'engine_type="unified",is_streaming="{flag}",{model}'
                    lines.append(f"{metric}{{{labels}}} {float(value)}")
            elif name == "cached_tokens_total":
                labels = f'cache_source="device",engine_type="unified",{model}'
                lines.append(f"{metric}{{{labels}}} {float(stats.cached_tokens)}")
            elif name == "num_aborted_requests_total":
                labels = f'engine_type="unified",{model}'
                lines.append(f"{metric}{{{labels}}} {float(stats.aborted_requests)}")
            else:  # http_requests_total
                for (path, method), count in sorted(stats.http.items()):
                    endpoint = path.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
                    labels = f'endpoint="{endpoint}",method="{method}"'
                    lines.append(f"{metric}{{{labels}}} {float(count)}")
        body = ("\n".join(lines) + "\n").encode()
        await send_bytes(send, 200, body, b"text/plain; version=0.0.4; charset=utf-8")

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/v1/models`` (fact 19)."""
        await send_json(send, {"object": "list", "data": [self.app.model_card()]})

    async def model(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/v1/models/{id}``: the card, or OpenAI's nested 404."""
        model_id = scope["path"][len("/v1/models/") :]
        if model_id != self.config.model_name:
            error = {
                "message": f"The model '{model_id}' does not exist",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
            raise HTTPError(404, {"error": error})
        await send_json(send, self.app.model_card())


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _value_error(message: str, value: object) -> HTTPError:
    error = {"type": "value_error", "loc": ("body",), "msg": f"Value error, {message}"}
    return validation_error([{**error, "input": value}])
