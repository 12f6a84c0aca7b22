"""Compare two responses by shape: status, the headers clients read, field names, nesting and
JSON types, SSE framing. Not compared: generated text, ids, counts, timings, message wording.

A shape is built from a body: a JSON object becomes ``{key: shape}``, a list the merged shape
of its elements, a scalar the set of its JSON type names; an SSE body becomes its framing plus
the merged shape of its events. ``diff`` lists the differences as readable paths.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .recorded import Response

__all__ = ["diff_responses"]

# Fields whose type follows the generated content, not the protocol: a greedy answer of the fake
# may end on EOS (matched: an id) where the tiny model ran to its length (null).
_CONTENT_DRIVEN = {"matched_stop"}
# Present, or an object rather than null, only when the content allows: decode speed needs a
# second token, cache details a cached token.
_OPTIONAL = {"decode_throughput"}
_NULLABLE_OBJECTS = {"cached_tokens_details"}
_HEADERS = ("content-type", "vary", "allow")


class Leaf(frozenset[str]):
    """The JSON type names a scalar position took."""


def _type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    raise TypeError(type(value))


def shape(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        merged: Any = None
        for item in value:
            merged = merge(merged, shape(item))
        return ["list", merged]
    return Leaf({_type(value)})


def merge(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: merge(a.get(k), b.get(k)) for k in {*a, *b}}
    if isinstance(a, list) and isinstance(b, list):
        return ["list", merge(a[1], b[1])]
    if isinstance(a, Leaf) and isinstance(b, Leaf):
        return Leaf(a | b)
    # null beside an object or list (a finish_reason before the end): the value not yet there
    if a == Leaf({"null"}):
        return b
    if b == Leaf({"null"}):
        return a
    return Leaf({"mixed"})


def _finish_variant(value: Any) -> Any:
    """SGLang's native finish_reason: its keys depend on its type (length, stop, abort)."""
    if isinstance(value, Mapping) and isinstance(value.get("type"), str):
        return value["type"]
    return None


def diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Where shape ``a`` (the fake's) and shape ``b`` (the reference) differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        if "variant" in a and "variant" in b and a["variant"] != b["variant"]:
            return []  # a stop vs a length: the content decided, both are valid
        out = []
        for key in sorted({*a, *b}):
            where = f"{path}.{key}" if path else key
            if (key not in a or key not in b) and key in _OPTIONAL:
                continue
            if key not in b:
                out.append(f"{where}: only in the fake")
            elif key not in a:
                out.append(f"{where}: missing in the fake")
            elif key in _CONTENT_DRIVEN or (
                key in _NULLABLE_OBJECTS and Leaf({"null"}) in (a[key], b[key])
            ):
                continue
            else:
                out += diff(a[key], b[key], where)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if a[1] is None or b[1] is None:
            return []  # an empty list on one side: nothing to compare
        return diff(a[1], b[1], f"{path}[]")
    if isinstance(a, Leaf) and isinstance(b, Leaf):
        if a == b or "null" in a | b and (a <= {"null"} or b <= {"null"} or a - b <= {"null"}):
            # null on one side is a value not set this time (an unset server argument, a
            # stream's finish_reason before the end)
            return []
        return [f"{path}: {'|'.join(sorted(a))} vs {'|'.join(sorted(b))}"]
    return [f"{path}: {_kind(a)} vs {_kind(b)}"]


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "list"
    return "|".join(sorted(value))


def _json_shape(value: Any) -> Any:
    """The shape, with native finish_reason objects compared only within their variant."""
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if key == "top_logprobs" and isinstance(item, list) and _token_maps(item):
                # completions: one {token: logprob} map per token; the tokens are content
                out[key] = ["list", {"<token>": merge(None, _map_values(item))}]
                continue
            if key == "finish_reason" and _finish_variant(item) is not None:
                out[key] = {"variant": Leaf({f"variant:{_finish_variant(item)}"}), **shape(item)}
            else:
                out[key] = _json_shape(item)
        return out
    if isinstance(value, list):
        merged: Any = None
        for item in value:
            merged = merge(merged, _json_shape(item))
        return ["list", merged]
    return shape(value)


def _token_maps(items: list[Any]) -> bool:
    return all(isinstance(i, Mapping) and "logprob" not in i for i in items) and any(items)


def _map_values(items: list[Any]) -> Any:
    merged: Any = None
    for item in items:
        for value in item.values():
            merged = merge(merged, shape(value))
    return merged


def _sse(body: bytes) -> tuple[list[str], Any]:
    """(framing problems, merged event shape) of an SSE body."""
    problems = []
    text = body.decode("utf-8", errors="replace")
    if not text.endswith("\n\n"):
        problems.append("does not end with a blank line")
    blocks = [b for b in text.split("\n\n") if b]
    if not blocks or blocks[-1] != "data: [DONE]":
        problems.append("does not end with data: [DONE]")
    merged: Any = None
    for block in blocks:
        if not block.startswith("data: ") or "\n" in block:
            problems.append(f"bad event framing: {block[:40]!r}")
            continue
        if block == "data: [DONE]":
            continue
        merged = merge(merged, _json_shape(json.loads(block[6:])))
    return problems, merged


_FAMILY = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? ", re.MULTILINE)


def _metric_families(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    families = {name: (kind, frozenset()) for name, kind in _FAMILY.findall(text)}
    for name, _, labels in _SAMPLE.findall(text):
        base = re.sub(r"_(bucket|sum|count|total|created)$", "", name)
        family = name if name in families else base if base in families else None
        if family is None:
            continue
        keys = frozenset(part.split("=", 1)[0] for part in labels.split(",") if part)
        keys -= {"le", "quantile"}
        kind, seen = families[family]
        families[family] = (kind, seen | keys)
    return families


def diff_responses(fake: Response, reference: Response, *, subset: bool = False) -> list[str]:
    """Differences a client could notice between the fake's answer and the reference's.

    ``subset``: the reference may have more fields (``/server_info``, ``/metrics``).
    """
    out = []
    if fake.status != reference.status:
        out.append(f"status {fake.status} vs {reference.status}")
    for name in _HEADERS:
        ours, theirs = fake.headers.get(name), reference.headers.get(name)
        if name == "allow" and ours and theirs:  # a set: real SGLang's order varies by run
            ours, theirs = sorted(ours.split(", ")), sorted(theirs.split(", "))
        if ours != theirs:
            out.append(f"header {name}: {ours!r} vs {theirs!r}")
    kind = reference.content_type
    if kind.startswith("text/event-stream") and fake.content_type.startswith("text/event-stream"):
        problems, ours = _sse(fake.body)
        out += [f"sse: {p}" for p in problems]
        _, theirs = _sse(reference.body)
        if ours is not None and theirs is not None:
            out += [f"event {d}" for d in diff(ours, theirs)]
        return out
    if "prometheus" in kind or (kind.startswith("text/plain") and b"# TYPE" in reference.body):
        ours_m = _metric_families(fake.body.decode())
        theirs_m = _metric_families(reference.body.decode())
        for name, (kind_, labels) in sorted(ours_m.items()):
            if name not in theirs_m:
                out.append(f"metric {name}: only in the fake")
            elif theirs_m[name][0] != kind_:
                out.append(f"metric {name}: {kind_} vs {theirs_m[name][0]}")
            elif labels != theirs_m[name][1]:
                out.append(f"metric {name}: labels {sorted(labels)} vs {sorted(theirs_m[name][1])}")
        return out
    if kind.startswith("application/json") and fake.content_type.startswith("application/json"):
        ours_j, theirs_j = (
            _json_shape(json.loads(fake.body)),
            _json_shape(json.loads(reference.body)),
        )
        found = diff(ours_j, theirs_j)
        if subset:
            found = [d for d in found if not d.endswith("missing in the fake")]
        return out + found
    if bool(fake.body) != bool(reference.body):
        out.append(f"body: {len(fake.body)} bytes vs {len(reference.body)}")
    return out
