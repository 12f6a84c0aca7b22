"""A server's load, read from its Prometheus ``/metrics`` or its ``/server_info`` (pure).

SGLang publishes its scheduler gauges on ``/metrics`` when started with ``--enable-metrics``
(``sglang:num_running_reqs``, ``sglang:num_queue_reqs``, ``sglang:token_usage``, ...; one
series per scheduler rank, summed or averaged here), and a part of them in ``/server_info``'s
``internal_states`` always. A figure a source does not give stays ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sglang_client.types import ServerLoad

__all__ = ["load_from_metrics", "load_from_server_info"]

# sglang:<gauge> -> (ServerLoad field, how several ranks combine)
_GAUGES = {
    "num_running_reqs": ("running_requests", "sum"),
    "num_queue_reqs": ("queue_length", "sum"),
    "token_usage": ("token_usage", "max"),
    "num_used_tokens": ("kv_tokens_used", "sum"),
    "kv_used_tokens": ("kv_tokens_used", "sum"),
    "max_total_num_tokens": ("kv_token_capacity", "sum"),
    "cache_hit_rate": ("cache_hit_rate", "mean"),
    "gen_throughput": ("gen_throughput", "sum"),
}
_MEMORY = {
    "weight_memory_usage_gb": "weight",
    "kv_cache_memory_usage_gb": "kvcache",
    "graph_memory_usage_gb": "graph",
}
_INTS = {"running_requests", "queue_length", "kv_tokens_used", "kv_token_capacity"}


def _combine(values: list[float], how: str) -> float:
    if how == "sum":
        return sum(values)
    if how == "max":
        return max(values)
    return sum(values) / len(values)


def load_from_metrics(text: str, read_at: float) -> ServerLoad:
    """The load in a ``/metrics`` exposition (parsed by ``prometheus_client``)."""
    from prometheus_client.parser import text_string_to_metric_families

    series: dict[str, list[float]] = {}
    memory: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        name = family.name.removeprefix("sglang:")
        for sample in family.samples:
            if sample.name.removeprefix("sglang:") != name:
                continue  # _bucket, _sum, _created ... of other kinds
            if name in _GAUGES:
                series.setdefault(name, []).append(float(sample.value))
            elif name in _MEMORY:
                kind = _MEMORY[name]
                memory[kind] = memory.get(kind, 0.0) + float(sample.value)
    fields: dict[str, Any] = {}
    for name, values in series.items():
        field, how = _GAUGES[name]
        if field in fields:
            continue  # num_used_tokens and kv_used_tokens say the same
        value = _combine(values, how)
        fields[field] = int(value) if field in _INTS else value
    return ServerLoad(source="metrics", read_at=read_at, memory_gb=memory, **fields)


def load_from_server_info(info: Mapping[str, Any], read_at: float) -> ServerLoad:
    """The load in ``/server_info`` (no queue or running counts: those are on /metrics)."""
    states = [s for s in info.get("internal_states") or [] if isinstance(s, Mapping)]
    memory: dict[str, float] = {}
    capacity = 0
    throughput: float | None = None
    for state in states:
        usage = state.get("memory_usage")
        if isinstance(usage, Mapping):
            for kind in ("weight", "kvcache"):
                if isinstance(usage.get(kind), (int, float)):
                    memory[kind] = memory.get(kind, 0.0) + float(usage[kind])
            graph = usage.get("graph")
            if isinstance(graph, Mapping):
                parts = [float(v) for v in graph.values() if isinstance(v, (int, float))]
                memory["graph"] = memory.get("graph", 0.0) + sum(parts)
            if isinstance(usage.get("token_capacity"), int):
                capacity += usage["token_capacity"]
        if isinstance(state.get("last_gen_throughput"), (int, float)):
            throughput = (throughput or 0.0) + float(state["last_gen_throughput"])
    top = info.get("max_total_num_tokens")
    return ServerLoad(
        source="server_info",
        read_at=read_at,
        kv_token_capacity=capacity or (top if isinstance(top, int) else None),
        gen_throughput=throughput,
        memory_gb=memory,
    )
