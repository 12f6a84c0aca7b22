"""Layer 2 of SGLang's request validation: the generated JSON contract (protocol §1.2).

SGLang checks the raw ``/generate`` body against a contract shared with its Rust front end:
strict JSON types, unknown ``sampling_params`` keys rejected, ``null`` meaning "default". Its
errors mimic Rust serde (``invalid type: string "5", expected i64``) and are sent as
``{"error": "<text>"}``: a plain string, unlike the other two layers.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SAMPLING_KEYS", "ContractError", "contract_error", "unexpected"]


class ContractError(ValueError):
    """The raw JSON violates SGLang's ``/generate`` contract."""


def unexpected(value: object) -> str:
    """serde's ``Unexpected`` wording for a JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f'string "{value}"'
    return "sequence" if isinstance(value, list) else "map"


def _invalid(value: object, expected: str) -> ContractError:
    return ContractError(f"invalid type: {unexpected(value)}, expected {expected}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: object, expected: str = "i64") -> None:
    if not _is_int(value):
        raise _invalid(value, expected)


def _float(value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _invalid(value, "f64")


def _str(value: object, expected: str = "a string") -> None:
    if not isinstance(value, str):
        raise _invalid(value, expected)


def _bool(value: object, expected: str = "a boolean") -> None:
    if not isinstance(value, bool):
        raise _invalid(value, expected)


def _seq(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise _invalid(value, "a sequence")
    return value


def _str_or_list(value: object, name: str = "StringOrList") -> None:
    if isinstance(value, list):
        for item in value:
            _str(item)
    else:
        _str(value, f"a value or an array of values for {name}")


def _token_ids_or_list(value: object) -> None:
    if not isinstance(value, list):
        raise _invalid(value, "a value or an array of values for TokenIdsOrList")
    if not value or (isinstance(value[0], (int, float)) and not isinstance(value[0], bool)):
        for item in value:
            _int(item, "i32")
        return
    for row in value:
        for item in _seq(row):
            _int(item, "i32")


def _scalar_or_list(value: object, check: Any, name: str) -> None:
    if isinstance(value, list):
        for item in value:
            check(item)
    else:
        check(value, f"a value or an array of values for {name}")


def _stop_ids(value: object) -> None:
    for item in _seq(value):
        _int(item)


def _logit_bias(value: object) -> None:
    if not isinstance(value, dict):
        raise _invalid(value, "a map")
    for item in value.values():
        _float(item)


def _watermark(value: object) -> None:
    if not isinstance(value, dict):
        raise _invalid(value, "struct Watermark")


def _choice(value: object) -> None:
    for item in _seq(value):
        _str(item)


_SAMPLING_CHECKS: dict[str, Any] = {
    "max_new_tokens": _int,
    "stop": _str_or_list,
    "stop_token_ids": _stop_ids,
    "stop_regex": _str_or_list,
    "temperature": _float,
    "top_p": _float,
    "top_k": _int,
    "min_p": _float,
    "frequency_penalty": _float,
    "presence_penalty": _float,
    "repetition_penalty": _float,
    "min_new_tokens": _int,
    "n": _int,
    "json_schema": _str,
    "regex": _str,
    "ebnf": _str,
    "structural_tag": _str,
    "ignore_eos": _bool,
    "skip_special_tokens": _bool,
    "spaces_between_special_tokens": _bool,
    "no_stop_trim": _bool,
    "stream_interval": _int,
    "logit_bias": _logit_bias,
    "sampling_seed": _int,
    "custom_params": lambda value: None,
    "beam_width": _int,
    "watermark": _watermark,
    "choice": _choice,
}
SAMPLING_KEYS: tuple[str, ...] = tuple(_SAMPLING_CHECKS)


def _sampling_params(value: object) -> None:
    if not isinstance(value, dict):
        raise _invalid(value, "struct SamplingParams")
    for key, item in value.items():
        check = _SAMPLING_CHECKS.get(key)
        if check is None:
            listed = ", ".join(f"`{k}`" for k in SAMPLING_KEYS)
            raise ContractError(f"unknown field `{key}`, expected one of {listed}")
        if item is not None:
            check(item)


def _sampling_params_or_list(value: object) -> None:
    if isinstance(value, list):
        for item in value:
            _sampling_params(item)
    elif isinstance(value, dict):
        _sampling_params(value)
    else:
        raise _invalid(value, "a value or an array of values for SamplingParamsOrList")


_GENERATE_CHECKS: dict[str, Any] = {
    "rid": _str_or_list,
    "text": _str_or_list,
    "input_ids": _token_ids_or_list,
    "stream": _bool,
    "sampling_params": _sampling_params_or_list,
    "return_logprob": lambda v: _scalar_or_list(v, _bool, "BoolOrList"),
    "logprob_start_len": lambda v: _scalar_or_list(v, _int, "Int64OrList"),
    "top_logprobs_num": lambda v: _scalar_or_list(v, _int, "Int64OrList"),
    "token_ids_logprob": _token_ids_or_list,
    "return_hidden_states": lambda v: _scalar_or_list(v, _bool, "BoolOrList"),
    "return_text_in_logprobs": _bool,
    "routed_dp_rank": _int,
    "disagg_prefill_dp_rank": _int,
}


def contract_error(body: dict[str, Any]) -> str | None:
    """The contract's serde-style message for ``body``, or ``None`` when it conforms.

    Unknown top-level keys are ignored; unknown ``sampling_params`` keys are not.
    """
    try:
        for key, value in body.items():
            check = _GENERATE_CHECKS.get(key)
            if check is not None and value is not None:
                check(value)
    except ContractError as exc:
        return str(exc)
    return None
