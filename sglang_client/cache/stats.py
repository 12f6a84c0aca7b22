"""Cache counters and latency percentiles."""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

__all__ = ["CacheStats", "CacheStatus", "Counters"]

_SAMPLES = 10_000


class CacheStatus(str, enum.Enum):
    """How a request was served; the proxy sends it as ``X-Cache``."""

    HIT = "HIT"
    MISS = "MISS"
    PARTIAL = "PARTIAL"
    BYPASS = "BYPASS"


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@dataclass
class Counters:
    """Running counters of one CachedClient (kept in memory, reset on restart)."""

    hits: int = 0
    misses: int = 0
    partial_hits: int = 0
    bypassed: int = 0
    completions_from_cache: int = 0
    completions_generated: int = 0
    store_errors: int = 0
    latencies: dict[CacheStatus, deque[float]] = field(
        default_factory=lambda: {s: deque(maxlen=_SAMPLES) for s in CacheStatus}
    )

    def record(self, status: CacheStatus, seconds: float, cached: int, generated: int) -> None:
        """Count one request."""
        if status is CacheStatus.HIT:
            self.hits += 1
        elif status is CacheStatus.MISS:
            self.misses += 1
        elif status is CacheStatus.PARTIAL:
            self.partial_hits += 1
        else:
            self.bypassed += 1
        self.completions_from_cache += cached
        self.completions_generated += generated
        self.latencies[status].append(seconds)

    def percentiles(self, status: CacheStatus) -> dict[str, float | None]:
        """p50/p95/p99 of the recent latencies (seconds) of one kind of request."""
        ordered = sorted(self.latencies[status])
        return {f"p{q}": _percentile(ordered, q) for q in (50, 95, 99)}


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of a CachedClient: what the store holds and how requests were served.

    ``hit_rate`` is hits / (hits + misses + partial hits); bypassed requests do not count.
    ``completions_saved`` counts completions served from the cache instead of generated.
    Latencies are in seconds over the last 10,000 requests of each kind.
    """

    num_keys: int | None
    total_responses: int | None
    hits: int
    misses: int
    partial_hits: int
    bypassed: int
    hit_rate: float
    completions_saved: int
    completions_generated: int
    pending_writes: int
    store_errors: int
    store_kind: str
    store_location: str
    hit_latency: dict[str, float | None]
    miss_latency: dict[str, float | None]
    partial_latency: dict[str, float | None]

    def as_dict(self) -> dict[str, object]:
        """The snapshot as a JSON-ready dict."""
        return dict(self.__dict__)
