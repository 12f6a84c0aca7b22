"""Prometheus text metrics of the proxy (no client library needed for a handful of series)."""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sglang_client.types import ServerLoad

__all__ = ["Metrics"]

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Histogram:
    __slots__ = ("counts", "count", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.count += 1
        self.total += seconds


class Metrics:
    """Request counters by route and cache status, latency histograms, upstream errors."""

    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: defaultdict[str, _Histogram] = defaultdict(_Histogram)
        self.upstream_errors: defaultdict[str, int] = defaultdict(int)

    def observe(self, route: str, cache: str, status: int, seconds: float) -> None:
        """Count one finished request."""
        self.requests[(route, cache, status)] += 1
        self.latency[cache].observe(seconds)

    def upstream_error(self, kind: str) -> None:
        """Count one failed upstream call (``connect``, ``timeout``, ``status``, ``stream``...)."""
        self.upstream_errors[kind] += 1

    def render(
        self,
        hits: int,
        misses: int,
        partial: int,
        pending_writes: int,
        store_errors: int = 0,
        store_failing: bool = False,
        upstream: ServerLoad | None = None,
    ) -> str:
        """The exposition text (with the upstream's load when it could be read)."""
        lines = [
            "# HELP sglang_cached_requests_total Requests served, by route, cache and status.",
            "# TYPE sglang_cached_requests_total counter",
        ]
        for (route, cache, status), value in sorted(self.requests.items()):
            labels = f'route="{route}",cache="{cache}",status="{status}"'
            lines.append(f"sglang_cached_requests_total{{{labels}}} {value}")
        for name, value, text in (
            ("hits", hits, "Requests served entirely from the cache."),
            ("misses", misses, "Requests with nothing cached."),
            ("partial_hits", partial, "Requests served partly from the cache."),
        ):
            lines += [
                f"# HELP sglang_cached_{name}_total {text}",
                f"# TYPE sglang_cached_{name}_total counter",
                f"sglang_cached_{name}_total {value}",
            ]
        lines += [
            "# HELP sglang_cached_pending_writes Cache writes acknowledged but not yet durable.",
            "# TYPE sglang_cached_pending_writes gauge",
            f"sglang_cached_pending_writes {pending_writes}",
            "# HELP sglang_cached_store_errors_total Cache store operations that failed.",
            "# TYPE sglang_cached_store_errors_total counter",
            f"sglang_cached_store_errors_total {store_errors}",
            "# HELP sglang_cached_store_failing 1 while the store fails, until a write works.",
            "# TYPE sglang_cached_store_failing gauge",
            f"sglang_cached_store_failing {int(store_failing)}",
            "# HELP sglang_cached_upstream_errors_total Failed upstream calls, by kind.",
            "# TYPE sglang_cached_upstream_errors_total counter",
        ]
        for kind, value in sorted(self.upstream_errors.items()):
            lines.append(f'sglang_cached_upstream_errors_total{{kind="{kind}"}} {value}')
        lines += [
            "# HELP sglang_cached_request_seconds Request latency, by cache status.",
            "# TYPE sglang_cached_request_seconds histogram",
        ]
        for cache, hist in sorted(self.latency.items()):
            running = 0
            for bound, count in zip((*BUCKETS, float("inf")), hist.counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(
                    f'sglang_cached_request_seconds_bucket{{cache="{cache}",le="{le}"}} {running}'
                )
            lines.append(f'sglang_cached_request_seconds_sum{{cache="{cache}"}} {hist.total}')
            lines.append(f'sglang_cached_request_seconds_count{{cache="{cache}"}} {hist.count}')
        if upstream is not None:
            lines += _upstream_lines(upstream)
        return "\n".join(lines) + "\n"


_UPSTREAM_GAUGES = (
    ("queue_length", "Requests waiting in the upstream's queue."),
    ("running_requests", "Requests the upstream is generating."),
    ("token_usage", "The share of the upstream's KV cache that running requests hold."),
    ("kv_token_capacity", "KV-cache tokens of the upstream."),
    ("cache_hit_rate", "The upstream's prefix cache hit rate."),
    ("gen_throughput", "The upstream's generation throughput (tokens/s)."),
)


def _upstream_lines(load: ServerLoad) -> list[str]:
    """The upstream's load as gauges (only the figures it reported)."""
    lines = []
    for field, text in _UPSTREAM_GAUGES:
        value = getattr(load, field)
        if value is None:
            continue
        name = f"sglang_cached_upstream_{field}"
        lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {float(value)}"]
    return lines
