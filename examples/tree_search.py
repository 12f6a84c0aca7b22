"""Best-first search over continuations, with forked sessions sharing the server's prefix cache.

Each step expands the most promising open node: it forks that node's session K times, samples
one short continuation per branch (concurrently), scores the branches, and keeps only the best
BEAM open nodes; the losers' sessions are deleted. Every branch re-sends its whole history, so
the server's radix cache serves the shared part: the table at the end shows how much of the
prompt tokens the server reported as cached.

The score is a stand-in for a verifier or reward model: it prefers continuations with many
distinct words and few repeats (deterministic, so runs are reproducible against the fake).

Runs against a fake SGLang server started in-process, or against ``SGLANG_URL`` when set.
Exits non-zero if something the server must guarantee did not hold.

    .venv/bin/python examples/tree_search.py
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import os
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sglang_client import GenerateResponse, SGLangClient
from sglang_client.sessions import SessionManager

PROBLEM = "Plan a one-day walk through Paris. Step 1:"
K = 3  # branches per expansion
BEAM = 3  # open nodes kept
STEPS = 4  # expansions
SAMPLING = {"temperature": 0.9, "max_new_tokens": 12}


@contextlib.asynccontextmanager
async def server_url() -> AsyncIterator[tuple[str, str]]:
    url = os.environ.get("SGLANG_URL")
    if url:
        yield url.rstrip("/"), "SGLANG_URL"
        return
    from sglang_client.testing import FakeSGLangServer

    async with FakeSGLangServer(latency_per_token=0.001) as server:
        yield server.url, "fake, in-process"


@dataclass
class Node:
    """One node of the search tree; ``session_id`` is None once its session is gone."""

    name: str
    text: str
    score: float
    depth: int
    session_id: str | None
    children: list[Node] = field(default_factory=list)
    state: str = "open"  # open | expanded | pruned
    prompt_tokens: int = 0
    cached_tokens: int = 0


def score(text: str) -> float:
    words = [w.strip(".,;:!?").lower() for w in text.split()]
    words = [w for w in words if w]
    if not words:
        return 0.0
    return round(len(set(words)) / len(words) + 0.02 * len(words), 3)


def render(node: Node, best: Node, prefix: str = "", last: bool = True) -> list[str]:
    mark = {"open": "o", "expanded": "+", "pruned": "x"}[node.state]
    star = "  <== best" if node is best else ""
    snippet = " ".join(node.text.split())[:36]
    cached = f"cached {node.cached_tokens:>3}/{node.prompt_tokens:<3}"
    head = "" if node.depth == 0 else ("`-- " if last else "|-- ")
    label = f"{prefix}{head}{node.name} [{mark}]"
    lines = [f"{label:<28} {node.score:5.2f}  {cached}  {snippet!r}{star}"]
    child_prefix = prefix + ("" if node.depth == 0 else ("    " if last else "|   "))
    for i, child in enumerate(node.children):
        lines += render(child, best, child_prefix, i == len(node.children) - 1)
    return lines


class Failed(Exception):
    """A check the example makes did not hold."""


async def search(manager: SessionManager) -> tuple[Node, Node, list[GenerateResponse]]:
    session = await manager.create_session(PROBLEM)
    # The root's own first step puts the problem (and that step) in the server's cache.
    first = await manager.generate(session.id, "", sampling_seed=0, **SAMPLING)
    meta = first.meta_info
    root = Node("root", first.text, score(first.text), 0, session.id)
    root.prompt_tokens, root.cached_tokens = meta.prompt_tokens, meta.cached_tokens
    # Max-heap by score; the counter keeps ties in creation order.
    frontier: list[tuple[float, int, Node]] = [(-root.score, 0, root)]
    open_nodes = [root]
    responses = [first]  # every generation, the root's first
    order = itertools.count(1)
    for step in range(1, STEPS + 1):
        while frontier and frontier[0][2].state != "open":
            heapq.heappop(frontier)  # pruned after it was pushed
        if not frontier:
            break
        parent = heapq.heappop(frontier)[2]
        assert parent.session_id is not None
        kids = await manager.fork_session(parent.session_id, n=K)
        assert isinstance(kids, list)
        # The expanded node's history lives on in its children.
        await manager.delete_session(parent.session_id)
        parent.session_id, parent.state = None, "expanded"
        open_nodes.remove(parent)
        results = await asyncio.gather(
            *(
                manager.generate(kid.id, "", sampling_seed=1000 * step + i, **SAMPLING)
                for i, kid in enumerate(kids)
            )
        )
        responses += results
        for i, (kid, r) in enumerate(zip(kids, results, strict=True)):
            path = manager.get_session(kid.id).prefix[len(PROBLEM) :]
            node = Node(
                (parent.name if parent.depth else "") + chr(ord("a") + i),
                r.text,
                score(path),
                parent.depth + 1,
                kid.id,
                prompt_tokens=r.meta_info.prompt_tokens,
                cached_tokens=r.meta_info.cached_tokens,
            )
            parent.children.append(node)
            open_nodes.append(node)
            heapq.heappush(frontier, (-node.score, next(order), node))
        open_nodes.sort(key=lambda n: -n.score)
        for loser in open_nodes[BEAM:]:
            assert loser.session_id is not None
            await manager.delete_session(loser.session_id)
            loser.session_id, loser.state = None, "pruned"
        del open_nodes[BEAM:]
        kept = ", ".join(f"{n.name} {n.score:.2f}" for n in open_nodes)
        print(f"  step {step}: expanded {parent.name:<5} -> {K} branches; open: {kept}")
    return root, open_nodes[0], responses


async def main() -> int:
    async with server_url() as (url, origin), SGLangClient(url) as client:
        await client.wait_for_ready(timeout=60)
        print(f"SGLang server at {url} ({origin})")
        print(f"best-first search: {K} branches per step, {BEAM} open nodes kept, {STEPS} steps\n")
        async with SessionManager(client) as manager:
            root, best, responses = await search(manager)
            print("\nsearch tree  ([+] expanded, [o] open, [x] pruned; score; new text)\n")
            print("\n".join("  " + line for line in render(root, best)))
            prompt = sum(r.meta_info.prompt_tokens for r in responses)
            cached = sum(r.meta_info.cached_tokens for r in responses)
            share = cached / prompt if prompt else 0.0
            print(
                f"\n  generations: {len(responses)}   prompt tokens: {prompt}   "
                f"cached by the server: {cached} ({share:.0%})"
            )
            best_session = manager.get_session(best.session_id or "")
            print(
                f"  live sessions: {len(manager)}   best path ({len(best_session.history)} turns):"
            )
            indent = " " * 4
            path = textwrap.fill(best_session.prefix, 96, initial_indent=indent)
            print(path.replace("\n", "\n" + indent))
            problems = []
            if len(manager) != BEAM:
                problems.append(f"{len(manager)} live sessions, expected {BEAM}")
            if any(r.meta_info.cached_tokens <= 0 for r in responses[1:]):
                problems.append("a fork's first turn reported no cached tokens")
            if manager.prefix_tree.stats().total_sessions != len(manager):
                problems.append("the prefix tree holds deleted sessions")
            if problems:
                print("\nFAILED: " + "; ".join(problems), file=sys.stderr)
                return 1
    print("\nDone.")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
