"""Benchmark PrefixTree against a naive per-token dict trie and a hash-of-every-prefix table.

Workload (seeded; every structure sees the same sequences): 20 shared system prompts of
500-2000 tokens; N requests, each a random system prompt plus a random suffix of 50-500 tokens;
after about one request in ten, a tree-search style fork group (2-4 children of a recent
sequence, each cut at a random point of its suffix and continued by 20-200 new tokens). Then N
lookups: 40% continue a stored sequence by 20-200 tokens, 30% are new requests, 30% are
prefixes of stored sequences. Keys are lists of fresh int objects, as a tokenizer or a JSON
body yields them.

Each structure inserts every sequence (answering how many leading tokens it already held),
then answers every lookup with the longest stored prefix length. All answers must agree, or
the script exits with status 1. Timing: CPU time of this process spent in the structure calls
only (building key lists is not timed); the structures take turns on the same batches so that
noise from other processes hits them alike; cyclic GC is paused while timing. Memory: the
structure is built alone under tracemalloc (all three from the same first 1,000 inserts, and
the radix tree also from all inserts of the full run); we report the *current* traced size
afterwards (what it retains, key lists freed) per distinct stored token, and the peak.

Usage:
    python benchmarks/prefix_tree.py [--requests N] [--naive-requests M] [--seed S] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import sys
import time
import tracemalloc
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sglang_client.prefix_tree import PrefixTree  # noqa: E402

__all__ = ["NaiveTrie", "PrefixHashTable", "Workload", "main"]

VOCAB = 32_000
POOL = 1 << 21  # random tokens that suffixes are cut from
VOCAB_INTS = list(range(VOCAB))
MEMORY_INSERTS = 1000  # inserts traced by tracemalloc in the 3-way run
Segments = tuple[tuple[int, int], ...]  # (offset, length) slices of the pool
Desc = tuple[int, Segments]  # (system prompt index, suffix segments)
Ops = tuple[Callable[[list[int]], int], Callable[[list[int]], int], Callable[[], int]]


class NaiveTrie:
    """One dict per stored token, children keyed by the next token id."""

    def __init__(self) -> None:
        self.root: dict[int, dict] = {}  # type: ignore[type-arg]
        self.tokens = 0

    def insert(self, key: list[int]) -> int:
        node, matched = self.root, 0
        for token in key:
            child = node.get(token)
            if child is None:
                break
            node, matched = child, matched + 1
        for token in key[matched:]:
            child = node[token] = {}
            node = child
        self.tokens += len(key) - matched
        return matched

    def longest_match(self, key: list[int]) -> int:
        node, matched = self.root, 0
        for token in key:
            node = node.get(token)  # type: ignore[assignment]
            if node is None:
                break
            matched += 1
        return matched


class PrefixHashTable:
    """A set of the hash of every stored prefix, chained as hash((previous, token))."""

    def __init__(self) -> None:
        self.table: set[int] = set()

    def insert(self, key: list[int]) -> int:
        table, h, matched = self.table, 0, 0
        for token in key:
            h = hash((h, token))
            if h not in table:
                table.add(h)
                break
            matched += 1
        for token in key[matched + 1 :]:  # past the first miss every prefix is new
            h = hash((h, token))
            table.add(h)
        return matched

    def longest_match(self, key: list[int]) -> int:
        table, h = self.table, 0
        for i, token in enumerate(key):
            h = hash((h, token))
            if h not in table:
                return i
        return len(key)


def radix() -> Ops:
    tree = PrefixTree()
    return tree.insert, tree.estimate_cached_tokens, lambda: tree.total_tokens


def naive() -> Ops:
    trie = NaiveTrie()
    return trie.insert, trie.longest_match, lambda: trie.tokens


def hashed() -> Ops:
    table = PrefixHashTable()
    return table.insert, table.longest_match, lambda: len(table.table)


STRUCTURES: dict[str, Callable[[], Ops]] = {
    "PrefixTree (radix)": radix,
    "naive dict trie": naive,
    "prefix-hash set": hashed,
}


@dataclass
class Workload:
    """Sequences kept as (prompt, pool segments); ``batches()`` builds the token lists."""

    prompts: list[array[int]]
    pool: array[int]
    inserts: list[Desc] = field(default_factory=list)
    lookups: list[Desc] = field(default_factory=list)
    forks: int = 0
    shared_prompts: list[list[int]] = field(default_factory=list)
    shared_pool: list[int] = field(default_factory=list)

    def key(self, desc: Desc, shared: bool = False) -> list[int]:
        """The token list: fresh int objects (as json.loads makes), or with ``shared`` the
        objects of ``VOCAB_INTS``, so that building it under tracemalloc allocates no ints."""
        if shared:
            if not self.shared_prompts:  # built once, before any tracing
                self.shared_prompts = [[VOCAB_INTS[t] for t in p] for p in self.prompts]
                self.shared_pool = [VOCAB_INTS[t] for t in self.pool]
            out = self.shared_prompts[desc[0]][:]
            for offset, length in desc[1]:
                out += self.shared_pool[offset : offset + length]
            return out
        ids = self.prompts[desc[0]][:]
        for offset, length in desc[1]:
            ids += self.pool[offset : offset + length]
        return ids.tolist()

    def batches(
        self, descs: list[Desc], size: int, shared: bool = False
    ) -> Iterator[list[list[int]]]:
        for start in range(0, len(descs), size):
            yield [self.key(d, shared) for d in descs[start : start + size]]


def make_workload(
    requests: int, seed: int, prompts: list[array[int]], pool: array[int]
) -> Workload:
    rng = random.Random(seed)
    work = Workload(prompts, pool)

    def segment(low: int, high: int) -> tuple[int, int]:
        length = rng.randint(low, high)
        return rng.randrange(POOL - length), length

    def cut(segments: Segments) -> Segments:
        keep, out = rng.randint(0, sum(n for _, n in segments)), []
        for offset, length in segments:
            if keep <= 0:
                break
            out.append((offset, min(length, keep)))
            keep -= length
        return tuple(out)

    for _ in range(requests):
        work.inserts.append((rng.randrange(len(prompts)), (segment(50, 500),)))
        if rng.random() < 0.1:
            prompt, segments = rng.choice(work.inserts[-1000:])
            for _ in range(rng.randint(2, 4)):
                work.inserts.append((prompt, cut(segments) + (segment(20, 200),)))
                work.forks += 1
    for _ in range(requests):
        kind, (prompt, segments) = rng.random(), rng.choice(work.inserts)
        if kind < 0.4:
            work.lookups.append((prompt, segments + (segment(20, 200),)))
        elif kind < 0.7:
            work.lookups.append((rng.randrange(len(prompts)), (segment(50, 500),)))
        else:
            work.lookups.append((prompt, cut(segments)))
    return work


@dataclass
class Result:
    name: str
    insert_s: float = 0.0
    lookup_s: float = 0.0
    stored_tokens: int = 0
    answers: list[int] = field(default_factory=list)
    bytes_per_token: float = 0.0
    peak_bytes: int = 0


def time_all(work: Workload, names: list[str]) -> tuple[list[Result], int, int]:
    """Time every structure on the same batches, taking turns batch by batch."""
    results, built = [Result(n) for n in names], [STRUCTURES[n]() for n in names]
    insert_tokens = lookup_tokens = 0
    gc.collect()
    gc.disable()  # so that no structure pays for collecting another's garbage
    try:
        for keys in work.batches(work.inserts, 500):
            insert_tokens += sum(map(len, keys))
            for result, (insert, _, _) in zip(results, built, strict=True):
                start = time.process_time()
                result.answers += map(insert, keys)
                result.insert_s += time.process_time() - start
        for keys in work.batches(work.lookups, 500):
            lookup_tokens += sum(map(len, keys))
            for result, (_, lookup, _) in zip(results, built, strict=True):
                start = time.process_time()
                result.answers += map(lookup, keys)
                result.lookup_s += time.process_time() - start
    finally:
        gc.enable()
    for result, (_, _, stored) in zip(results, built, strict=True):
        result.stored_tokens = stored()
    return results, insert_tokens, lookup_tokens


def measure_memory(work: Workload, limit: int | None, result: Result) -> None:
    """Build the structure alone from the first ``limit`` inserts under tracemalloc; keep its
    retained (current) size per distinct stored token, and the peak.

    Tracing costs ~1.6 us per allocation, so the 3-way run traces only a prefix of the inserts,
    and keys reuse one int object per vocabulary id. That flatters only the naive trie, whose
    dicts keep their int keys alive (the radix tree packs ids into bytes, the hash set keeps
    hashes): its real cost per token is higher by the size of an int.
    """
    work.key(work.inserts[0], shared=True)  # builds the shared token lists before tracing
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    insert, _, stored = STRUCTURES[result.name]()
    for keys in work.batches(work.inserts[:limit], 100, shared=True):
        for key in keys:
            insert(key)
        del keys
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    result.bytes_per_token, result.peak_bytes = (current - base) / stored(), peak - base


def _rate(x: float) -> str:
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


def report(title: str, work: Workload, results: list[Result], tokens: tuple[int, int]) -> None:
    inserts, lookups = len(work.inserts), len(work.lookups)
    print(f"\n{title}: {inserts:,} inserts ({work.forks:,} of them forks) of {tokens[0]:,} tokens")
    print(f"  ({results[0].stored_tokens:,} distinct), then {lookups:,} lookups of {tokens[1]:,}")
    print(
        f"  {'structure':<20}{'insert seq/s':>13}{'insert tok/s':>13}{'lookup seq/s':>13}"
        f"{'lookup tok/s':>13}{'bytes/token':>12}{'peak MB':>9}"
    )
    for r in results:
        mem = f"{r.bytes_per_token:.1f}" if r.bytes_per_token else "-"
        peak = f"{r.peak_bytes / 1e6:.0f}" if r.peak_bytes else "-"
        print(
            f"  {r.name:<20}{_rate(inserts / r.insert_s):>13}{_rate(tokens[0] / r.insert_s):>13}"
            f"{_rate(lookups / r.lookup_s):>13}{_rate(tokens[1] / r.lookup_s):>13}"
            f"{mem:>12}{peak:>9}"
        )
    tree = results[0]
    for other in results[1:]:
        line = (
            f"  radix vs {other.name}: insert {other.insert_s / tree.insert_s:.2f}x faster,"
            f" lookup {other.lookup_s / tree.lookup_s:.2f}x faster"
        )
        if tree.bytes_per_token and other.bytes_per_token:
            share = tree.bytes_per_token / other.bytes_per_token
            line += f", {share:.3f} of its memory per stored token (1/{1 / share:.0f})"
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000, help="requests, full run")
    parser.add_argument("--naive-requests", type=int, default=10_000, help="requests, 3-way run")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--quick", action="store_true", help="5,000 and 2,000 requests")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.naive_requests = 5_000, 2_000
    wall = time.perf_counter()
    rng = random.Random(args.seed)
    prompts = [
        array("I", [rng.randrange(VOCAB) for _ in range(rng.randint(500, 2000))]) for _ in range(20)
    ]
    pool = array("I", [rng.randrange(VOCAB) for _ in range(POOL)])
    print(f"PrefixTree benchmark: Python {platform.python_version()}, seed {args.seed}")
    print(f"system prompt lengths: {sorted(len(p) for p in prompts)}")
    print(__doc__.split("\n\n")[2].replace("\n", " ").replace(". ", ".\n"))

    ok, checks, naive_bytes_per_token = True, [False], 0.0
    runs = [
        (f"[A] all three, {args.naive_requests:,} requests", args.naive_requests, True),
        (f"[B] full workload, {args.requests:,} requests", args.requests, False),
    ]
    for title, requests, three_way in runs:
        work = make_workload(requests, args.seed + requests, prompts, pool)
        names = list(STRUCTURES) if three_way else ["PrefixTree (radix)", "prefix-hash set"]
        results, *tokens = time_all(work, names)
        for other in results[1:]:
            if (
                other.answers != results[0].answers
                or other.stored_tokens != results[0].stored_tokens
            ):
                print(f"ERROR: {other.name} disagrees with PrefixTree", file=sys.stderr)
                ok = False
        limit = MEMORY_INSERTS if three_way else None
        for result in results if three_way else results[:1]:
            measure_memory(work, limit, result)
        report(title, work, results, (tokens[0], tokens[1]))
        traced = min(limit or len(work.inserts), len(work.inserts))
        print(
            f"  (bytes/token: tracemalloc current after building from the first {traced:,} inserts)"
        )
        if not three_way:
            gigabytes = naive_bytes_per_token * results[0].stored_tokens / 1e9
            print(
                f"  naive dict trie: not run at this scale; at the {naive_bytes_per_token:.0f}"
                f" bytes/token measured in [A] it would need over {gigabytes:.1f} GB here."
                " It is compared in [A], on the same data as the others."
            )
        else:
            tree, trie = results[0], results[1]
            naive_bytes_per_token = trie.bytes_per_token
            checks = [
                trie.insert_s / tree.insert_s >= 3,
                trie.lookup_s / tree.lookup_s >= 3,
                tree.bytes_per_token <= trie.bytes_per_token / 4,
            ]
    verdict = "met" if all(checks) else "NOT met"
    print(f"\nissue 3 targets vs the naive trie (3x insert, 3x lookup, 1/4 memory): {verdict}")
    print(f"wall time {time.perf_counter() - wall:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
