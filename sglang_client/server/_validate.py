"""Checks on client requests before they reach the cache or the upstream.

The proxy rejects what can never be a valid request: a body that is not a JSON object, a known
field of the wrong JSON type, ``n`` outside ``1..max_n``, no input at all. Such requests get a 400
and are neither cached nor forwarded. Ranges and unknown fields stay SGLang's to judge (they
depend on the model and the server version), so its own messages reach the client. Each check
returns an error message or ``None``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["parse_json", "validate_generate", "validate_openai"]

_Check = Callable[[object], bool]
_INT64 = 1 << 63
_INT32 = 1 << 31


def _reject_constant(name: str) -> Any:
    # SGLang parses with orjson, which refuses bare NaN/Infinity (§1.1).
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf; orjson refuses it
        raise ValueError(f"the number {text} is out of range")
    return value


def parse_json(raw: bytes) -> tuple[Any, str | None]:
    """Decode a request body; return ``(value, None)`` or ``(None, message)``.

    Refused as SGLang's orjson refuses them: invalid UTF-8, ``NaN``/``Infinity``, numbers out
    of range, lone surrogate escapes (``"\\ud800"``: no UTF-8 text can hold one), and nesting
    deeper than the parser's limit.
    """
    if not raw.strip():
        return None, "The request body is empty; send a JSON object."
    try:
        value = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except UnicodeDecodeError:
        return None, "The request body is not UTF-8 text."
    except ValueError as exc:
        return None, f"The request body is not valid JSON: {exc}"
    except RecursionError:
        return None, "The request body is nested too deeply."
    # Only a \uD800-\uDFFF escape makes a surrogate, and a valid pair decodes to one character.
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(value):
        return None, "The request body is not valid JSON: a lone surrogate (\\ud800-\\udfff)."
    return value, None


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    except RecursionError:  # too deep to re-encode: the key builder refuses it later
        return False
    return False


def _int(value: object) -> bool:
    return type(value) is int and -_INT64 <= value < _INT64


def _token(value: object) -> bool:
    return type(value) is int and -_INT32 <= value < _INT32


def _number(value: object) -> bool:
    return type(value) is float or _int(value)


def _str(value: object) -> bool:
    return isinstance(value, str)


def _bool(value: object) -> bool:
    return type(value) is bool


def _object(value: object) -> bool:
    return isinstance(value, dict)


def _list_of(check: _Check) -> _Check:
    return lambda value: isinstance(value, list) and all(map(check, value))


def _either(*checks: _Check) -> _Check:
    return lambda value: any(check(value) for check in checks)


def _one_or_list(check: _Check) -> _Check:
    return _either(check, _list_of(check))


_STRINGS = _one_or_list(_str)
_TOKEN_IDS = _either(_list_of(_token), _list_of(_list_of(_token)))

_Spec = tuple[_Check, str]
_GENERATE_FIELDS: dict[str, _Spec] = {
    "text": (_STRINGS, "a string or a list of strings"),
    "input_ids": (_TOKEN_IDS, "a list of token ids or a list of such lists"),
    "sampling_params": (_one_or_list(_object), "an object or a list of objects"),
    "rid": (_STRINGS, "a string or a list of strings"),
    "stream": (_bool, "a boolean"),
    "return_logprob": (_one_or_list(_bool), "a boolean or a list of booleans"),
    "logprob_start_len": (_one_or_list(_int), "an integer or a list of integers"),
    "top_logprobs_num": (_one_or_list(_int), "an integer or a list of integers"),
    "token_ids_logprob": (_TOKEN_IDS, "a list of token ids or a list of such lists"),
    "return_text_in_logprobs": (_bool, "a boolean"),
    "session_params": (_one_or_list(_object), "an object or a list of objects"),
    "priority": (_int, "an integer"),
}
# Sampling knobs that both the native sampling_params and the OpenAI bodies take.
_SHARED_SAMPLING: dict[str, _Spec] = {
    "temperature": (_number, "a number"),
    "top_p": (_number, "a number"),
    "top_k": (_int, "an integer"),
    "min_p": (_number, "a number"),
    "frequency_penalty": (_number, "a number"),
    "presence_penalty": (_number, "a number"),
    "repetition_penalty": (_number, "a number"),
    "stop": (_STRINGS, "a string or a list of strings"),
    "stop_token_ids": (_list_of(_int), "a list of integers"),
    "ignore_eos": (_bool, "a boolean"),
    "logit_bias": (_object, "an object"),
}
_SAMPLING_FIELDS: dict[str, _Spec] = {
    **_SHARED_SAMPLING,
    "max_new_tokens": (_int, "an integer"),
    "min_new_tokens": (_int, "an integer"),
    "skip_special_tokens": (_bool, "a boolean"),
    "spaces_between_special_tokens": (_bool, "a boolean"),
    "no_stop_trim": (_bool, "a boolean"),
    "json_schema": (_str, "a string"),
    "regex": (_str, "a string"),
    "ebnf": (_str, "a string"),
    "structural_tag": (_str, "a string"),
    "sampling_seed": (_int, "an integer"),
    "stream_interval": (_int, "an integer"),
}
_OPENAI_FIELDS: dict[str, _Spec] = {
    "model": (_str, "a string"),
    "stream": (_bool, "a boolean"),
    "stream_options": (_object, "an object"),
    **_SHARED_SAMPLING,
    "max_tokens": (_int, "an integer"),
    "seed": (_int, "an integer"),
    "user": (_str, "a string"),
}
_CHAT_FIELDS: dict[str, _Spec] = {
    **_OPENAI_FIELDS,
    "messages": (_list_of(_object), "a list of message objects"),
    "max_completion_tokens": (_int, "an integer"),
    "logprobs": (_bool, "a boolean"),
    "top_logprobs": (_int, "an integer"),
    "tools": (_list_of(_object), "a list of objects"),
}
_COMPLETION_FIELDS: dict[str, _Spec] = {
    **_OPENAI_FIELDS,
    "prompt": (
        _either(_str, _list_of(_str), _list_of(_token), _list_of(_list_of(_token))),
        "a string, a list of strings, a list of token ids or a list of such lists",
    ),
    "logprobs": (_int, "an integer"),
    "echo": (_bool, "a boolean"),
    "suffix": (_str, "a string"),
}


def _shown(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_fields(body: Mapping[str, Any], fields: dict[str, _Spec], where: str) -> str | None:
    for name, value in body.items():
        spec = fields.get(name)
        # null means "the default" for every SGLang field; unknown fields are SGLang's to judge.
        if spec is not None and value is not None and not spec[0](value):
            return f"{where}{name} must be {spec[1]}, got {_shown(value)}."
    return None


def _check_n(n: object, max_n: int, where: str) -> str | None:
    if n is None:
        return None
    if not _int(n):
        return f"{where} must be an integer, got {_shown(n)}."
    assert isinstance(n, int)
    if not 1 <= n <= max_n:
        return f"{where} must be between 1 and {max_n} on this proxy, got {n}."
    return None


def validate_generate(body: object, max_n: int) -> str | None:
    """Check a ``/generate`` body (§1): JSON types of known fields, an input, ``n``."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    error = _check_fields(body, _GENERATE_FIELDS, "")
    if error is not None:
        return error
    if all(body.get(name) is None for name in ("text", "input_ids", "input_embeds")):
        return "Either text, input_ids or input_embeds should be provided."
    params = body.get("sampling_params")
    for p in params if isinstance(params, list) else [params] if params is not None else []:
        error = _check_fields(p, _SAMPLING_FIELDS, "sampling_params.") or _check_n(
            p.get("n"), max_n, "sampling_params.n"
        )
        if error is not None:
            return error
    return None


def validate_openai(body: object, max_n: int, chat: bool) -> str | None:
    """Check a ``/v1/chat/completions`` or ``/v1/completions`` body (§7)."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    error = _check_fields(body, _CHAT_FIELDS if chat else _COMPLETION_FIELDS, "")
    if error is not None:
        return error
    if chat:
        messages = body.get("messages")
        if messages is None:
            return "messages is required."
        if not messages:
            return "Messages cannot be empty."
        for i, message in enumerate(messages):
            if not isinstance(message.get("role"), str):
                return f"messages[{i}].role must be a string."
    else:
        prompt = body.get("prompt")
        if prompt is None:
            return "prompt is required."
        if prompt == []:
            return "Prompt cannot be empty."
    return _check_n(body.get("n"), max_n, "n")
