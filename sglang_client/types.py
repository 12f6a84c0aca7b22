"""Typed responses (pydantic v2).

Every model allows extra fields: SGLang adds ``meta_info`` keys often (logprobs, speculative
decoding stats, metrics timestamps), and a client must ignore
what it does not know rather than fail.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

__all__ = [
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatChoice",
    "ChatChunkChoice",
    "ChatDelta",
    "ChatLogprobs",
    "ChatMessage",
    "Completion",
    "CompletionChoice",
    "CompletionChunk",
    "CompletionLogprobs",
    "CompletionUsage",
    "FinishReason",
    "GatewayWorker",
    "GatewayWorkers",
    "GenerateResponse",
    "HealthStatus",
    "MetaInfo",
    "ModelInfo",
    "ServerInfo",
    "ServerLoad",
    "StreamChunk",
    "TokenLogprob",
    "TopLogprob",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=False)


class FinishReason(_Model):
    """Why generation stopped: ``type`` is ``"stop"``, ``"length"`` or ``"abort"``.

    ``matched`` is the EOS/stop token id or the stop string, ``length`` the token budget that
    ran out; aborts carry ``message`` and, when the server turned them into an HTTP
    error, ``status_code``.
    """

    type: str
    matched: Union[int, str, list[int], None] = None  # noqa: UP007 (pydantic on 3.10 needs Union)
    length: int | None = None
    message: str | None = None
    status_code: int | None = None
    err_type: str | None = None


class MetaInfo(_Model):
    """Per-request metadata SGLang returns with each output (``meta_info``)."""

    id: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    e2e_latency: float | None = None
    weight_version: str | None = None


class GenerateResponse(_Model):
    """One output of native ``/generate``."""

    text: str = ""
    output_ids: list[int] = Field(default_factory=list)
    meta_info: MetaInfo
    index: int | None = None


GENERATE_ONE: TypeAdapter[GenerateResponse] = TypeAdapter(GenerateResponse)
GENERATE_MANY: TypeAdapter[list[GenerateResponse]] = TypeAdapter(list[GenerateResponse])


class StreamChunk(_Model):
    """One event of a ``/generate`` stream, normalised whatever the server's streaming mode.

    Attributes:
        index: position in the flattened batch (``prompt_i * n + sample_j``; 0 when single).
        delta: only the text that is new in this chunk.
        text: all text generated so far for this ``index``.
        delta_output_ids: only the token ids that are new in this chunk.
        output_ids: all token ids so far for this ``index``.
        meta_info: the chunk's ``meta_info`` (counters are cumulative in both streaming modes).
        finish_reason: ``None`` until the last chunk of this ``index``.
    """

    index: int = 0
    delta: str = ""
    text: str = ""
    delta_output_ids: list[int] = Field(default_factory=list)
    output_ids: list[int] = Field(default_factory=list)
    meta_info: MetaInfo
    finish_reason: FinishReason | None = None


class ServerLoad(_Model):
    """How busy a server is, from ``SGLangClient.load()``; ``None``: the server did not say.

    Attributes:
        source: ``"metrics"`` (``/metrics``, with ``--enable-metrics``) or ``"server_info"``
            (no queue or running counts there).
        read_at: when it was read (epoch seconds).
        queue_length: requests waiting for the scheduler.
        running_requests: requests being generated.
        token_usage: the share (0..1) of the KV cache running requests hold.
        kv_tokens_used: KV-cache tokens in use.
        kv_token_capacity: KV-cache tokens in all (``max_total_num_tokens``).
        memory_gb: GPU (or CPU) memory by kind: ``weight``, ``kvcache``, ``graph``.
        cache_hit_rate: the prefix cache's hit rate (0..1).
        gen_throughput: tokens generated per second, lately.
    """

    source: str
    read_at: float
    queue_length: int | None = None
    running_requests: int | None = None
    token_usage: float | None = None
    kv_tokens_used: int | None = None
    kv_token_capacity: int | None = None
    memory_gb: dict[str, float] = Field(default_factory=dict)
    cache_hit_rate: float | None = None
    gen_throughput: float | None = None


class HealthStatus(_Model):
    """The outcome of ``SGLangClient.health()``; never an exception.

    ``load`` is filled by ``health(detailed=True)`` (``None`` if it could not be read).
    """

    available: bool
    latency: float
    error: str | None = None
    status_code: int | None = None
    load: ServerLoad | None = None


class ModelInfo(_Model):
    """``GET /model_info``: what the server serves (``embedding``: SGLang 0.5.23's block of
    embedding support, also present for generation models)."""

    model_path: str
    served_model_name: str | None = None
    tokenizer_path: str | None = None
    is_generation: bool = True
    weight_version: str | None = None
    model_type: str | None = None
    architectures: list[str] | None = None
    embedding: dict[str, Any] | None = None


class ServerInfo(_Model):
    """``GET /server_info``: resolved server arguments and scheduler state (many extra keys)."""

    version: str | None = None
    model_path: str | None = None
    context_length: int | None = None
    incremental_streaming_output: bool | None = None
    internal_states: list[dict[str, Any]] = Field(default_factory=list)


class GatewayWorker(_Model):
    """One worker in ``GET /workers`` of SGLang's Model Gateway (``smg``)."""

    url: str
    id: str | None = None
    model_id: str | None = None
    worker_type: str | None = None
    is_healthy: bool = True
    load: int = 0


class GatewayWorkers(_Model):
    """``GET /workers`` of SGLang's Model Gateway."""

    workers: list[GatewayWorker] = Field(default_factory=list)


class CompletionUsage(_Model):
    """Token accounting of an OpenAI-compatible response."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: dict[str, Any] | None = None


class ChatMessage(_Model):
    """An assistant message in a chat completion."""

    role: str = "assistant"
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class TopLogprob(_Model):
    """One candidate token of a chat ``logprobs`` entry."""

    token: str
    bytes: list[int] | None = None
    logprob: float


class TokenLogprob(TopLogprob):
    """One generated token of a chat ``logprobs.content`` list, with its top candidates."""

    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(_Model):
    """A chat choice's ``logprobs`` (``logprobs: true``, ``top_logprobs: k``)."""

    content: list[TokenLogprob] | None = None


class CompletionLogprobs(_Model):
    """A completions choice's ``logprobs`` (``logprobs: k``); SGLang sends every
    ``text_offset`` as -1, and a prompt token (``echo``) may have a ``None`` logprob."""

    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class ChatChoice(_Model):
    """One choice of ``/v1/chat/completions``."""

    index: int
    message: ChatMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    matched_stop: Union[int, str, None] = None  # noqa: UP007


class ChatCompletion(_Model):
    """``/v1/chat/completions`` response."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = 0
    model: str = ""
    choices: list[ChatChoice]
    usage: CompletionUsage | None = None


class ChatDelta(_Model):
    """The new part of a message in a chat stream chunk."""

    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChunkChoice(_Model):
    """One choice of a chat stream chunk."""

    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    matched_stop: Union[int, str, None] = None  # noqa: UP007


class ChatCompletionChunk(_Model):
    """One event of a ``/v1/chat/completions`` stream (``choices`` is empty on the usage chunk)."""

    id: str
    object: str = "chat.completion.chunk"
    created: int = 0
    model: str = ""
    choices: list[ChatChunkChoice]
    usage: CompletionUsage | None = None


class CompletionChoice(_Model):
    """One choice of ``/v1/completions`` (a stream chunk's choice has the same shape)."""

    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    matched_stop: Union[int, str, None] = None  # noqa: UP007


class Completion(_Model):
    """``/v1/completions`` response."""

    id: str
    object: str = "text_completion"
    created: int = 0
    model: str = ""
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None


class CompletionChunk(Completion):
    """One event of a ``/v1/completions`` stream."""
