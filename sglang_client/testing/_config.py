"""``FakeServerConfig``: every knob of the fake server, validated once at construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

__all__ = ["FakeServerConfig"]

_RATES = ("fail_503_rate", "fail_500_rate", "drop_stream_rate")
_DURATIONS = (
    "latency_per_token",
    "time_to_first_token",
    "prefill_time_per_token",
    "startup_delay",
)


@dataclass
class FakeServerConfig:
    """Settings of the fake SGLang server; names mirror ``sglang.launch_server`` flags.

    Args:
        model_path: What ``/model_info`` reports as ``model_path``.
        served_model_name: The OpenAI model id (``/v1/models``); defaults to ``model_path``.
        api_key: When set, requests need ``Authorization: Bearer <api_key>`` (``--api-key``).
        incremental_streaming_output: Stream only new text/ids (``--incremental-streaming-output``).
        latency_per_token: Seconds between two generated tokens.
        time_to_first_token: Seconds before the first token (prefill).
        prefill_time_per_token: More seconds before the first token per prompt token the radix
            cache did not hold, as a GPU's prefill costs (a run pays for all its prompts).
        fail_503_rate: Probability that a generation request is refused as queue-full (503).
        fail_500_rate: Probability that a generation request crashes (plain-text 500).
        drop_stream_rate: Probability that a response's connection is cut after some body.
        startup_delay: Seconds after start during which ``/health`` answers 503.
        context_length: The model's context length in tokens.
        enable_metrics: Serve Prometheus text at ``/metrics`` (``--enable-metrics``).
        enable_cache_report: Fill OpenAI ``usage.prompt_tokens_details``
            (``--enable-cache-report``).
        seed: Seed of the server RNG (faults, and sampling without ``sampling_seed``).
        radix_cache_tokens: Token budget of the simulated radix (prefix) cache, LRU-evicted.
        stream_interval: Default tokens per stream chunk (``--stream-interval``).
        weight_version: What ``meta_info.weight_version`` reports (``--weight-version``).
        max_running_requests: Sub-requests generated at once (``--max-running-requests``);
            with latency, the rest wait in the queue (``None``: no limit).
        tokenizer: ``"bpe"`` (default): tokenizing a concatenation can differ from joining
            tokenizations at seams, and generated ids do not always re-encode the same, as with
            a real BPE tokenizer, so re-sent text loses radix-cache hits. ``"words"``: the older
            word-or-bytes tokenizer, for which both always agree.

    Example:
        ```python
        config = FakeServerConfig(latency_per_token=0.01, incremental_streaming_output=True)
        app = create_fake_app(config)
        ```
    """

    model_path: str = "fake/sglang-tiny"
    served_model_name: str | None = None
    api_key: str | None = None
    incremental_streaming_output: bool = False
    latency_per_token: float = 0.0
    time_to_first_token: float = 0.0
    prefill_time_per_token: float = 0.0
    fail_503_rate: float = 0.0
    fail_500_rate: float = 0.0
    drop_stream_rate: float = 0.0
    startup_delay: float = 0.0
    context_length: int = 4096
    enable_metrics: bool = False
    enable_cache_report: bool = False
    seed: int | None = None
    radix_cache_tokens: int = 1_000_000
    stream_interval: int = 1
    weight_version: str = "default"
    max_running_requests: int | None = None
    tokenizer: str = "bpe"

    def __post_init__(self) -> None:
        if self.served_model_name is None:
            self.served_model_name = self.model_path
        for name in _RATES:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        for name in _DURATIONS:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.context_length < 2:
            raise ValueError(f"context_length must be >= 2, got {self.context_length}")
        if self.radix_cache_tokens < 0:
            raise ValueError(f"radix_cache_tokens must be >= 0, got {self.radix_cache_tokens}")
        if self.stream_interval < 1:
            raise ValueError(f"stream_interval must be >= 1, got {self.stream_interval}")
        if self.tokenizer not in ("bpe", "words"):
            raise ValueError(f"tokenizer must be 'bpe' or 'words', got {self.tokenizer!r}")
        if self.max_running_requests is not None and self.max_running_requests < 1:
            raise ValueError(
                f"max_running_requests must be >= 1 or None, got {self.max_running_requests}"
            )

    @property
    def model_name(self) -> str:
        """The served model name (``served_model_name`` after its default was applied)."""
        return self.served_model_name or self.model_path

    @classmethod
    def build(
        cls, config: FakeServerConfig | None, overrides: dict[str, object]
    ) -> FakeServerConfig:
        """Return ``config`` (or a default one) with ``overrides`` applied, re-validated.

        Raises:
            TypeError: An override names no field.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown FakeServerConfig field(s): {', '.join(unknown)}")
        values: dict[str, object] = {}
        if config is not None:
            values = {f.name: getattr(config, f.name) for f in fields(cls)}
            # The served name follows a new model path unless it was set explicitly.
            if (
                overrides.get("model_path") is not None
                and "served_model_name" not in overrides
                and config.served_model_name == config.model_path
            ):
                values["served_model_name"] = None
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
