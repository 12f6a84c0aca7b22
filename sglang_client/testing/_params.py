"""Request validation, layers 1 and 3 of SGLang's three (protocol §1.2; layer 2 is ``_contract``).

1. ``lax_type_errors``: the FastAPI/pydantic parse of ``GenerateReqInput`` (lax: ``"stream":
   "yes"`` passes). Errors become the flat ``"type":"Bad Request"`` body.
2. ``_contract.contract_error``: the JSON contract on the raw body (strict types, unknown
   ``sampling_params`` keys rejected). Errors are serde-style strings: ``{"error": "<text>"}``.
3. ``parse_sampling_params``: semantic ranges (``SamplingParams.verify``). Errors are
   ``ValueError``s, sent as ``{"error": {"message": ...}}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "GENERATE_FIELDS",
    "SamplingParams",
    "coerce",
    "lax_type_errors",
    "parse_sampling_params",
]

# --- layer 1: pydantic (lax) -------------------------------------------------------------------

# A type spec: "str" | "int" | "bool" | "dict" | ("list", spec) | ("union", (spec, ...)).
_Spec = Any
_STR_LIST: _Spec = ("union", (("list", "str"), "str"))
_INT_LIST: _Spec = ("union", (("list", "int"), "int"))
_BOOL_LIST: _Spec = ("union", (("list", "bool"), "bool"))
_IDS: _Spec = ("union", (("list", ("list", "int")), ("list", "int")))
_DICTS: _Spec = ("union", (("list", "dict"), "dict"))

GENERATE_FIELDS: dict[str, _Spec] = {
    "text": _STR_LIST,
    "input_ids": _IDS,
    "sampling_params": _DICTS,
    "rid": _STR_LIST,
    "return_logprob": _BOOL_LIST,
    "logprob_start_len": _INT_LIST,
    "top_logprobs_num": _INT_LIST,
    "token_ids_logprob": _IDS,
    "return_text_in_logprobs": "bool",
    "stream": "bool",
    "return_prompt_token_ids": "bool",
    "session_params": _DICTS,
    "session_id": "str",
    "priority": "int",
    "lora_path": _STR_LIST,
}

_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"0", "off", "f", "false", "n", "no"}


def _spec_name(spec: _Spec) -> str:
    if isinstance(spec, str):
        return "dict[any,any]" if spec == "dict" else spec
    if spec[0] == "list":
        return f"list[{_spec_name(spec[1])}]"
    return "union"


def _scalar_error(spec: str, value: object) -> tuple[str, str] | None:
    """Pydantic's (type, msg) for a scalar that fails lax validation, else None."""
    if spec == "str":
        return None if isinstance(value, str) else ("string_type", "Input should be a valid string")
    if spec == "int":
        if isinstance(value, int):
            return None
        if isinstance(value, float):
            if value.is_integer():
                return None
            msg = "Input should be a valid integer, got a number with a fractional part"
            return "int_from_float", msg
        if isinstance(value, str):
            try:
                int(value.strip())
            except ValueError:
                msg = "Input should be a valid integer, unable to parse string as an integer"
                return "int_parsing", msg
            return None
        return "int_type", "Input should be a valid integer"
    if spec == "float":
        if isinstance(value, (int, float)):
            return None
        if isinstance(value, str):
            try:
                float(value.strip())
            except ValueError:
                msg = "Input should be a valid number, unable to parse string as a number"
                return "float_parsing", msg
            return None
        return "float_type", "Input should be a valid number"
    if spec == "bool":
        if isinstance(value, bool) or (isinstance(value, (int, float)) and value in (0, 1)):
            return None
        if isinstance(value, str):
            if value.lower() in _TRUE or value.lower() in _FALSE:
                return None
            return "bool_parsing", "Input should be a valid boolean, unable to interpret input"
        return "bool_type", "Input should be a valid boolean"
    # dict
    return None if isinstance(value, dict) else ("dict_type", "Input should be a valid dictionary")


def _validate(
    spec: _Spec, value: object, loc: tuple[object, ...], out: list[dict[str, Any]]
) -> None:
    if isinstance(spec, str):
        error = _scalar_error(spec, value)
        if error is not None:
            out.append({"type": error[0], "loc": loc, "msg": error[1], "input": value})
        return
    if spec[0] == "list":
        if not isinstance(value, list):
            msg = "Input should be a valid list"
            out.append({"type": "list_type", "loc": loc, "msg": msg, "input": value})
            return
        for i, item in enumerate(value):
            _validate(spec[1], item, (*loc, i), out)
        return
    branches: list[dict[str, Any]] = []
    for branch in spec[1]:
        errors: list[dict[str, Any]] = []
        _validate(branch, value, (*loc, _spec_name(branch)), errors)
        if not errors:
            return
        branches.extend(errors)
    out.extend(branches)


_EXACT = {"str": str, "int": int, "bool": bool, "float": float, "dict": dict}


def _plainly_valid(spec: _Spec, value: object) -> bool:
    """A fast check for values of exactly the expected JSON type (the common case)."""
    if isinstance(spec, str):
        return type(value) is _EXACT[spec] or (spec == "float" and type(value) is int)
    if spec[0] == "list":
        if type(value) is not list:
            return False
        inner = spec[1]
        if isinstance(inner, str):
            exact = _EXACT[inner]
            return all(type(item) is exact for item in value)
        return all(_plainly_valid(inner, item) for item in value)
    return any(_plainly_valid(branch, value) for branch in spec[1])


def _scalar_types(spec: _Spec) -> frozenset[type]:
    if isinstance(spec, str):
        return frozenset({_EXACT[spec], int} if spec == "float" else {_EXACT[spec]})
    if spec[0] == "union":
        return frozenset().union(*(_scalar_types(b) for b in spec[1]))
    return frozenset()


_SCALARS: dict[int, dict[str, frozenset[type]]] = {}


def lax_type_errors(body: dict[str, Any], fields: dict[str, _Spec]) -> list[dict[str, Any]]:
    """Pydantic-style error dicts for top-level fields of the wrong type (``null`` is fine)."""
    scalars = _SCALARS.get(id(fields))
    if scalars is None:
        scalars = _SCALARS[id(fields)] = {k: _scalar_types(v) for k, v in fields.items()}
    errors: list[dict[str, Any]] = []
    for name, value in body.items():
        spec = fields.get(name)
        if spec is None or value is None or type(value) in scalars[name]:
            continue
        if not _plainly_valid(spec, value):
            _validate(spec, value, ("body", name), errors)
    return errors


def coerce(spec: str, value: Any) -> Any:
    """Convert a value that passed lax validation to ``spec``'s Python type (``None`` stays)."""
    if value is None or spec == "str" or spec == "dict":
        return value
    if spec == "int":
        return int(value.strip()) if isinstance(value, str) else int(value)
    if spec == "float":
        return float(value)
    if spec == "bool":
        return value.lower() in _TRUE if isinstance(value, str) else bool(value)
    return value


# --- layer 3: semantic checks ------------------------------------------------------------------


@dataclass(slots=True)
class SamplingParams:
    """Normalised sampling parameters of one request (defaults from SGLang's ``SamplingParams``)."""

    max_new_tokens: int | None = 128
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 1 << 30
    min_p: float = 0.0
    stop: tuple[str, ...] = ()
    stop_token_ids: frozenset[int] = frozenset()
    n: int = 1
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    sampling_seed: int | None = None
    stream_interval: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()

    @property
    def is_greedy(self) -> bool:
        """SGLang turns temperatures below 1e-6 (or ``top_k == 1``) into greedy decoding."""
        return self.temperature < 1e-6 or self.top_k == 1


def _number(raw: dict[str, Any], key: str, default: float) -> float:
    value = raw.get(key)
    return default if value is None else float(value)


_PARAMS_CACHE: dict[tuple[Any, ...], SamplingParams] = {}


def parse_sampling_params(raw: dict[str, Any], vocab_size: int) -> SamplingParams:
    """Build and verify ``SamplingParams`` from a contract-checked dict (cached: clients repeat
    the same few parameter sets, and the result is never mutated).

    Raises:
        ValueError: A value is out of range (SGLang's ``SamplingParams.verify`` messages).
    """
    try:
        key = (vocab_size, *sorted(raw.items()))
        cached = _PARAMS_CACHE.get(key)
    except TypeError:  # unhashable values (lists, dicts): no caching
        return _parse_sampling_params(raw, vocab_size)
    if cached is None:
        cached = _parse_sampling_params(raw, vocab_size)
        if len(_PARAMS_CACHE) >= 512:
            _PARAMS_CACHE.clear()
        _PARAMS_CACHE[key] = cached
    return cached


def _parse_sampling_params(raw: dict[str, Any], vocab_size: int) -> SamplingParams:
    get = raw.get
    temperature = _number(raw, "temperature", 1.0)
    top_p = _number(raw, "top_p", 1.0)
    min_p = _number(raw, "min_p", 0.0)
    top_k = get("top_k")
    top_k = 1 << 30 if top_k is None or top_k == -1 else top_k
    max_new = get("max_new_tokens", 128)
    min_new = get("min_new_tokens") or 0
    if not math.isfinite(temperature) or temperature < 0.0:
        raise ValueError(f"temperature must be non-negative, got {temperature}.")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
    if not 0.0 <= min_p <= 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {min_p}.")
    if top_k < 1:
        raise ValueError(f"top_k must be -1 (disable), or at least 1, got {top_k}.")
    for key in ("frequency_penalty", "presence_penalty"):
        value = _number(raw, key, 0.0)
        if not -2.0 <= value <= 2.0:
            raise ValueError(f"{key} must be in [-2, 2], got {value}.")
    repetition = _number(raw, "repetition_penalty", 1.0)
    if not 0.0 < repetition <= 2.0:
        raise ValueError(f"repetition_penalty must be in (0, 2], got {repetition}.")
    if min_new < 0:
        raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {min_new}.")
    if max_new is not None:
        if max_new < 0:
            raise ValueError(f"max_new_tokens must be at least 0, got {max_new}.")
        if min_new > max_new:
            raise ValueError(
                f"min_new_tokens must be in [0, max_new_tokens({max_new})], got {min_new}."
            )
    bias: list[tuple[int, float]] = []
    for token, value in (get("logit_bias") or {}).items():
        try:
            valid = 0 <= int(token) < vocab_size
        except ValueError:
            valid = False
        if not valid:
            raise ValueError(f"logit_bias must has keys in [0, {vocab_size - 1}], got {token}.")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"logit_bias values must be numbers, got {value!r} for {token}.")
        bias.append((int(token), float(value)))
    grammars = [get(k) for k in ("json_schema", "regex", "ebnf", "structural_tag")]
    if sum(1 for g in grammars if g) > 1:
        raise ValueError("Only one of json_schema, regex, ebnf, or structural_tag can be set.")
    stop = get("stop")
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if len(stops) > 32:
        raise ValueError(f"stop must contain at most 32 strings, got {len(stops)}.")
    stop_regex = get("stop_regex")
    regexes = (stop_regex,) if isinstance(stop_regex, str) else tuple(stop_regex or ())
    if len(regexes) > 32 or any(len(r.encode()) > 256 for r in regexes):
        raise ValueError("stop_regex must contain at most 32 patterns of at most 256 bytes each.")
    n = get("n")
    n = 1 if n is None else n
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    beam_width = get("beam_width")
    if beam_width is not None and beam_width < 1:
        raise ValueError(f"beam_width must be at least 1, got {beam_width}.")
    interval = get("stream_interval")
    if interval is not None and interval < 1:
        raise ValueError(f"stream_interval must be at least 1, got {interval}.")
    return SamplingParams(
        max_new_tokens=max_new,
        min_new_tokens=min_new,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        stop=tuple(s for s in stops if s),
        stop_token_ids=frozenset(get("stop_token_ids") or ()),
        n=n,
        ignore_eos=bool(get("ignore_eos")),
        skip_special_tokens=get("skip_special_tokens") is not False,
        no_stop_trim=bool(get("no_stop_trim")),
        sampling_seed=get("sampling_seed"),
        stream_interval=interval,
        logit_bias=tuple(sorted(bias)),
    )
