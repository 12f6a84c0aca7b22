"""The OpenAI routes' request fields as SGLang's pydantic models type them, and how each
sampling field maps onto SGLang's native ``sampling_params``."""

from __future__ import annotations

from typing import Any

__all__ = ["CHAT_FIELDS", "COMMON_FIELDS", "COMPLETION_FIELDS", "SAMPLING_MAP"]

COMMON_FIELDS: dict[str, Any] = {
    "model": "str",
    "max_tokens": "int",
    "temperature": "float",
    "top_p": "float",
    "top_k": "int",
    "min_p": "float",
    "n": "int",
    "stream": "bool",
    "stop": ("union", (("list", "str"), "str")),
    "stop_token_ids": ("list", "int"),
    "seed": "int",
    "min_tokens": "int",
    "ignore_eos": "bool",
    "no_stop_trim": "bool",
    "skip_special_tokens": "bool",
    "frequency_penalty": "float",
    "presence_penalty": "float",
    "repetition_penalty": "float",
    "logit_bias": "dict",
    "stream_options": "dict",
    "rid": "str",
}
CHAT_FIELDS = {
    **COMMON_FIELDS,
    "messages": ("list", "dict"),
    "max_completion_tokens": "int",
    "logprobs": "bool",
    "top_logprobs": "int",
}
COMPLETION_FIELDS = {
    **COMMON_FIELDS,
    "logprobs": "int",
    "echo": "bool",
    "prompt": (
        "union",
        (("list", ("list", "int")), ("list", "int"), ("list", "str"), "str"),
    ),
}
# OpenAI name -> SGLang sampling key.
SAMPLING_MAP = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "n": "n",
    "stop": "stop",
    "stop_token_ids": "stop_token_ids",
    "seed": "sampling_seed",
    "min_tokens": "min_new_tokens",
    "ignore_eos": "ignore_eos",
    "no_stop_trim": "no_stop_trim",
    "skip_special_tokens": "skip_special_tokens",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "repetition_penalty": "repetition_penalty",
    "logit_bias": "logit_bias",
}
