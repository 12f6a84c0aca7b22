"""Cache keys: canonical JSON of what decides a generation, hashed with SHA-256.

Two requests get the same key exactly when they would sample from the same distribution: same
endpoint kind, same upstream model, same input, same generation-affecting parameters. Fields that
only change how many samples come back (``n``), how they are delivered (``stream``,
``stream_options``, ``stream_interval``) or how the request is tracked (``rid``, ``priority``,
routing and logging fields) are left out, so a request for n=5 can reuse completions cached by a
request for n=3. Unknown fields are kept: an unneeded miss is cheap, a wrong hit is not.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "NON_SEMANTIC_FIELDS",
    "NON_SEMANTIC_SAMPLING_FIELDS",
    "cache_key",
    "canonical_json",
    "is_greedy",
    "normalize",
    "semantic_fields",
    "tenant_of",
    "TENANT_FIELD",
]

NON_SEMANTIC_FIELDS = frozenset(
    {
        # how many / how delivered
        "n",
        "stream",
        "stream_options",
        # request tracking, scheduling, routing, logging
        "rid",
        "priority",
        "user",
        "custom_labels",
        "routing_key",
        "routed_dp_rank",
        "data_parallel_rank",
        "disagg_prefill_dp_rank",
        "bootstrap_host",
        "bootstrap_port",
        "bootstrap_room",
        "bootstrap_pair_key",
        "decode_tp_size",
        "no_logs",
        "log_metrics",
        "background",
        "conversation_id",
        "session_id",
        # Not here, on purpose: cache_salt and extra_key. They do not change the output either,
        # but they are how SGLang keeps tenants' prefix caches apart; sharing answers across
        # them would undo that isolation.
    }
)
"""Top-level request fields that never change what is generated."""

NON_SEMANTIC_SAMPLING_FIELDS = frozenset({"n", "stream_interval"})
"""Keys inside ``sampling_params`` that never change what is generated."""

# SGLang treats temperatures below this as greedy decoding (sampling_params.py).
_GREEDY_BELOW = 1e-6


def normalize(value: Any) -> Any:
    """Return ``value`` with integral floats as ints and ``None``-valued keys dropped.

    ``1`` and ``1.0`` sample identically; ``null`` means "default" for every SGLang field.
    """
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot build a cache key from the number {value!r}")
        return int(value) if value.is_integer() else value
    if isinstance(value, int):
        return value
    if isinstance(value, Mapping):
        return {str(k): normalize(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    raise TypeError(f"cannot build a cache key from a {type(value).__name__}")


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys: the same text for the same content, whatever the order."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def semantic_fields(
    body: Mapping[str, Any], *, drop: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The generation-affecting part of a request body (``sampling_params`` trimmed too)."""
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key in NON_SEMANTIC_FIELDS or key in drop or value is None:
            continue
        if key == "sampling_params" and isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k not in NON_SEMANTIC_SAMPLING_FIELDS}
        out[key] = value
    return out


def cache_key(kind: str, model: str, request: Mapping[str, Any]) -> str:
    """SHA-256 hex over the endpoint kind, the model identity and the (already trimmed) request.

    Args:
        kind: ``"generate"``, ``"chat"`` or ``"completion"``.
        model: the upstream's served model name, or the cache's namespace.
        request: the semantic request fields (see ``semantic_fields``), one prompt's worth.
    """
    text = canonical_json({"kind": kind, "model": model, "request": normalize(request)})
    return hashlib.sha256(text.encode()).hexdigest()


TENANT_FIELD = "_tenant"
"""The field of a keyed request that holds its tenant (no SGLang field starts with ``_``)."""


def tenant_of(token: str | None) -> str:
    """The cache namespace of an API key: a salted hash, so that no key is ever stored."""
    if not token:
        return "anonymous"
    digest = hashlib.sha256(b"sglang-client tenant\x00" + token.encode("utf-8", "replace"))
    return digest.hexdigest()[:32]


def is_greedy(temperature: object) -> bool:
    """Whether a temperature means greedy decoding (then one completion serves any ``n``)."""
    return (
        isinstance(temperature, (int, float))
        and not isinstance(temperature, bool)
        and temperature < _GREEDY_BELOW
    )
