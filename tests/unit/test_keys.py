"""Cache keys: canonical, order-independent, blind to n/stream/rid, sensitive to the rest."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sglang_client.cache.keys import (
    cache_key,
    canonical_json,
    is_greedy,
    normalize,
    semantic_fields,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), json_values))
def test_key_ignores_dict_order(request: dict[str, object]) -> None:
    reordered = dict(reversed(list(request.items())))
    assert cache_key("generate", "m", request) == cache_key("generate", "m", reordered)


def test_integral_floats_and_nulls_normalise() -> None:
    assert normalize({"t": 1.0, "x": None, "l": [2.0, 0.5]}) == {"t": 1, "l": [2, 0.5]}
    assert cache_key("generate", "m", {"t": 1}) == cache_key("generate", "m", {"t": 1.0})


def test_non_finite_numbers_are_refused() -> None:
    with pytest.raises(ValueError, match="inf"):
        normalize({"t": float("inf")})


def test_non_semantic_fields_are_dropped() -> None:
    body = {
        "text": "hi",
        "rid": "r",
        "stream": True,
        "stream_options": {"include_usage": True},
        "n": 4,
        "priority": 3,
        "sampling_params": {"n": 3, "stream_interval": 2, "temperature": 0.5},
    }
    assert semantic_fields(body) == {"text": "hi", "sampling_params": {"temperature": 0.5}}


def test_key_depends_on_kind_model_input_and_params() -> None:
    base = {"text": "hi", "sampling_params": {"temperature": 0.5}}
    key = cache_key("generate", "m", base)
    assert key != cache_key("chat", "m", base)
    assert key != cache_key("generate", "other-model", base)
    assert key != cache_key("generate", "m", {**base, "text": "ho"})
    assert key != cache_key("generate", "m", {**base, "sampling_params": {"temperature": 0.6}})
    assert key != cache_key("generate", "m", {**base, "return_logprob": True})
    assert len(key) == 64


def test_canonical_json_is_compact_and_sorted() -> None:
    assert canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'


@pytest.mark.parametrize(
    ("temperature", "greedy"),
    [(0, True), (0.0, True), (1e-7, True), (0.5, False), (None, False), (True, False)],
)
def test_is_greedy(temperature: object, greedy: bool) -> None:
    assert is_greedy(temperature) is greedy
