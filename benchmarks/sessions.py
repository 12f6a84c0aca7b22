"""How much earlier context each kind of session gets from SGLang's radix cache.

Two workloads, each with a long system prompt shared by its sessions:

* **chat**: ``--sessions`` conversations of ``--turns`` turns each, run concurrently;
* **tree**: a tree search from one root turn, ``--depth`` levels of ``--branching`` forks each,
  every level's nodes run concurrently (3 + 9 + 27 + 81 turns for depth 4, branching 3).

Each runs with four kinds of session: text (history re-sent as text, re-tokenized by the
server), token-exact (ids kept; only new text tokenized, by ``/tokenize``), chat
(``/v1/chat/completions``) and SGLang's server sessions (``session_params``); on the fake also
token-exact with a local tokenizer (no ``/tokenize`` request). The server's cache is flushed
before each.

For every turn that continues earlier context (all but the first of a conversation, every
fork's turn): *reusable* = the tokens of that context (the previous request's prompt and
output, less a final stop token a session does not re-send), *cached* = the server's
``cached_tokens``, counted up to *reusable* (a sibling may have cached part of the new text).
*Prefill* = prompt tokens the server computed (prompt - cached). Wall and client CPU
(this process) are per turn, ``/tokenize`` requests included. SGLang never caches a request's
last generated token (it has no KV yet), so a length-finished turn costs one token at best.

Against the fake server (a separate process, BPE-faithful tokenizer) by default; against a
real server when ``SGLANG_URL`` is set (``make bench-real`` starts one on this CPU).

Usage:
    python benchmarks/sessions.py [--sessions 4] [--turns 10] [--depth 4] [--branching 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import free_port, print_table, serve_process  # noqa: E402
from sglang_client import GenerateResponse, SGLangClient  # noqa: E402
from sglang_client.sessions import Session, SessionManager  # noqa: E402

SYSTEM = (
    "You are a careful assistant for a geography quiz. Answer in one short paragraph, name"
    " the river and the city, and say how sure you are.\n"
) * 12
ANSWER = {"max_new_tokens": 24, "temperature": 0}
BRANCH = {"max_new_tokens": 16, "temperature": 0.9}


@dataclass
class Tally:
    """What one (workload, kind) run measured."""

    turns: int = 0
    continued: int = 0
    reusable: int = 0
    cached: int = 0
    prefill: int = 0
    wall: float = 0.0
    cpu: float = 0.0
    first_cached: list[int] = field(default_factory=list)

    def add(self, result: GenerateResponse, before: GenerateResponse | None) -> None:
        meta = result.meta_info
        prompt, cached = meta.prompt_tokens or 0, meta.cached_tokens or 0
        self.turns += 1
        self.prefill += prompt - cached
        if before is None:
            self.first_cached.append(cached)
            return
        whole = reusable(before)
        self.continued += 1
        self.reusable += whole
        self.cached += min(cached, whole)


def reusable(before: GenerateResponse) -> int:
    """The earlier context a turn continues: the last request's prompt and output, less a final
    stop token (which a session does not send again)."""
    meta = before.meta_info
    finish = meta.finish_reason
    eos = finish is not None and finish.type == "stop" and isinstance(finish.matched, int)
    return (meta.prompt_tokens or 0) + (meta.completion_tokens or 0) - int(eos)


KINDS: dict[str, dict[str, Any]] = {
    "text": {"token_exact": False},
    "token-exact": {"token_exact": True},
    "token-exact, local tokenizer": {"token_exact": True, "local": True},
    "chat": {"chat": True, "token_exact": False},
    "server sessions": {"server_sessions": True},
}


def manager_for(client: SGLangClient, kind: dict[str, Any]) -> SessionManager:
    options: dict[str, Any] = {}
    if "server_sessions" in kind:
        options["server_sessions"] = True
    else:
        options["token_exact"] = kind["token_exact"]
    if kind.get("local"):
        from sglang_client.testing._tokenizer import TOKENIZER  # the fake's own

        options["tokenizer"] = TOKENIZER
    return SessionManager(client, **options)


async def chat_workload(
    manager: SessionManager, kind: dict[str, Any], tally: Tally, sessions: int, turns: int
) -> None:
    async def converse(index: int) -> None:
        s = await manager.create_session(SYSTEM, chat=bool(kind.get("chat")))
        before = None
        for turn in range(turns):
            question = f"\nQ{turn} (conversation {index}): which river runs through city {turn}?"
            result = await manager.generate(s.id, question + "\nA:", **ANSWER)
            tally.add(result, before)
            before = result

    await asyncio.gather(*(converse(i) for i in range(sessions)))


async def tree_workload(
    manager: SessionManager, kind: dict[str, Any], tally: Tally, depth: int, branching: int
) -> None:
    root = await manager.create_session(SYSTEM, chat=bool(kind.get("chat")))
    first = await manager.generate(root.id, "\nProblem: plan a trip along the river.\n", **ANSWER)
    tally.add(first, None)
    frontier: list[tuple[Session, GenerateResponse]] = [(root, first)]
    for level in range(1, depth + 1):

        async def expand(parent: Session, before: GenerateResponse, level: int) -> list[Any]:
            kids = await manager.fork_session(parent.id, n=branching)
            assert isinstance(kids, list)

            async def step(i: int, kid: Session) -> tuple[Session, GenerateResponse]:
                result = await manager.generate(kid.id, f"\nStep {level}.{i}:", **BRANCH)
                tally.add(result, before)
                return kid, result

            return list(await asyncio.gather(*(step(i, k) for i, k in enumerate(kids))))

        grown = await asyncio.gather(*(expand(p, b, level) for p, b in frontier))
        frontier = [node for group in grown for node in group]


async def tokenize_cost(client: SGLangClient, calls: int = 50) -> tuple[float, float]:
    """Median wall and client CPU (ms) of one ``/tokenize`` of a turn's new text."""
    walls, cpus = [], []
    for i in range(calls):
        cpu, wall = time.process_time(), time.perf_counter()
        await client.tokenize(
            f"\nQ{i}: which river runs through city {i}?\nA:", add_special_tokens=False
        )
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return 1000 * sorted(walls)[calls // 2], 1000 * sorted(cpus)[calls // 2]


async def run(
    url: str, args: argparse.Namespace, fake: bool
) -> tuple[list[tuple[str, str, Tally]], tuple[float, float]]:
    results = []
    async with SGLangClient(url, timeout=300) as client:
        # Warm up (connections, first-use costs) so that no kind pays them alone.
        for kind in KINDS.values():
            if kind.get("local") and not fake:
                continue
            async with manager_for(client, kind) as manager:
                await chat_workload(manager, kind, Tally(), 1, 2)
        cost = await tokenize_cost(client)
        for workload in ("chat", "tree"):
            for name, kind in KINDS.items():
                if kind.get("local") and not fake:
                    continue  # the served model's tokenizer is not in this environment
                await client.flush_cache()
                tally = Tally()
                cpu, wall = time.process_time(), time.perf_counter()
                async with manager_for(client, kind) as manager:
                    if workload == "chat":
                        await chat_workload(manager, kind, tally, args.sessions, args.turns)
                    else:
                        await tree_workload(manager, kind, tally, args.depth, args.branching)
                tally.wall = time.perf_counter() - wall
                tally.cpu = time.process_time() - cpu
                results.append((workload, name, tally))
    return results, cost


@contextlib.contextmanager
def server() -> Iterator[tuple[str, bool]]:
    url = os.environ.get("SGLANG_URL")
    if url:
        yield url.rstrip("/"), False
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # --enable-cache-report: chat usage reports cached tokens, as SGLang does with that flag.
    args = ["-m", "sglang_client.testing", "--port", str(port), "--enable-cache-report"]
    with serve_process(args, url + "/health"):
        yield url, True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--branching", type=int, default=3)
    args = parser.parse_args()
    with server() as (url, fake):
        print(f"server: {'the fake (BPE-faithful tokenizer)' if fake else url}")
        results, (tokenize_wall, tokenize_cpu) = asyncio.run(run(url, args, fake))
    rows = []
    exact_ok = True
    for workload, name, t in results:
        share = t.cached / t.reusable if t.reusable else float("nan")
        if name == "chat" and not t.cached:
            share = float("nan")  # the server did not report cached tokens on its chat route
        if name.startswith("token-exact"):
            exact_ok &= share >= 0.99
        rows.append(
            [
                workload,
                name,
                t.turns,
                t.reusable,
                t.cached,
                f"{100 * share:.2f}%",
                t.prefill,
                f"{1000 * t.wall / t.turns:.1f}",
                f"{1000 * t.cpu / t.turns:.2f}",
            ]
        )
    headers = ["workload", "session", "turns", "reusable", "cached", "share", "prefill"]
    print_table([*headers, "wall ms/turn", "client CPU ms/turn"], rows)
    print(
        f"/tokenize of one turn's new text (token-exact, server tokenizer): {tokenize_wall:.2f} ms"
        f" wall, {tokenize_cpu:.2f} ms client CPU (median of 50)"
    )
    print(f"token-exact sessions at >= 99% of reusable tokens cached: {exact_ok}")
    return 0 if exact_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
