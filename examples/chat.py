"""A multi-turn conversation with SessionManager, streamed, then replayed over native /generate.

Part 1 is a chat session (``/v1/chat/completions``): each reply streams in as it is generated.
Part 2 has the same conversation as a text session (native ``/generate``): every prompt is the
whole history plus the new question, so the server's radix cache serves the history and
``cached_tokens`` grows turn by turn. Part 3 forks the conversation to ask two different
follow-ups from the same point.

Runs against a fake SGLang server started in-process, or against ``SGLANG_URL`` when set.
Exits non-zero if something the server must guarantee did not hold.

    .venv/bin/python examples/chat.py
    SGLANG_URL=http://127.0.0.1:30000 .venv/bin/python examples/chat.py
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import textwrap
import time
from collections.abc import AsyncIterator

from sglang_client import SGLangClient
from sglang_client.sessions import SessionManager

QUESTIONS = [
    "What is the capital of France?",
    "Which river runs through it?",
    "Name one thing to see there.",
]
SAMPLING = {"temperature": 0, "max_new_tokens": 24}


@contextlib.asynccontextmanager
async def server_url() -> AsyncIterator[tuple[str, str]]:
    url = os.environ.get("SGLANG_URL")
    if url:
        yield url.rstrip("/"), "SGLANG_URL"
        return
    from sglang_client.testing import FakeSGLangServer

    async with FakeSGLangServer(latency_per_token=0.002, enable_cache_report=True) as server:
        yield server.url, "fake, in-process"


def wrap(text: str, prefix: str) -> str:
    body = " ".join(text.split()) or "(empty)"
    return textwrap.fill(body, 88, initial_indent=prefix, subsequent_indent=" " * len(prefix))


class Failed(Exception):
    """A check the example makes did not hold."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


async def chat_part(manager: SessionManager) -> None:
    print("1. Chat session (/v1/chat/completions), replies streamed\n")
    session = await manager.create_session("You are a concise travel guide.", chat=True)
    for question in QUESTIONS:
        print(wrap(question, "   you > "))
        print("   bot > ", end="", flush=True)
        started = time.perf_counter()
        async with manager.generate_stream(session.id, question, **SAMPLING) as stream:
            async for chunk in stream:
                print(chunk.delta.replace("\n", " "), end="", flush=True)
        meta = session.history[-1].meta_info
        print(
            f"\n         [{meta.prompt_tokens} prompt tokens, {meta.cached_tokens} cached,"
            f" {meta.completion_tokens} generated, {time.perf_counter() - started:.2f} s]\n"
        )
    check(len(session.history) == len(QUESTIONS), "every chat turn is recorded")
    check(len(session.messages) == 1 + 2 * len(QUESTIONS), "messages = system + 2 per turn")


async def text_part(manager: SessionManager) -> str:
    print("2. The same questions as a text session (native /generate)\n")
    session = await manager.create_session("A conversation with a concise travel guide.\n")
    print("   turn  prompt tokens  cached  share  reply")
    for i, question in enumerate(QUESTIONS, 1):
        r = await manager.generate(session.id, f"\nQ: {question}\nA:", **SAMPLING)
        meta = r.meta_info
        share = meta.cached_tokens / meta.prompt_tokens if meta.prompt_tokens else 0.0
        reply = " ".join(r.text.split())[:40]
        print(
            f"   {i:>4}  {meta.prompt_tokens:>13}  {meta.cached_tokens:>6}  {share:>5.0%}  {reply}"
        )
        if i > 1:
            check(meta.cached_tokens > 0, f"turn {i} reuses the history from the radix cache")
    prompts = [t.meta_info.prompt_tokens for t in session.history]
    check(prompts == sorted(prompts), "each prompt carries the whole history")
    return session.id


async def fork_part(manager: SessionManager, session_id: str) -> None:
    print("\n3. Two follow-ups forked from the same conversation\n")
    branches = await manager.fork_session(session_id, n=2)
    assert isinstance(branches, list)
    follow_ups = ["\nQ: And the best season to visit?\nA:", "\nQ: How do I get there by train?\nA:"]
    replies = await asyncio.gather(
        *(manager.generate(b.id, q, **SAMPLING) for b, q in zip(branches, follow_ups, strict=True))
    )
    for question, r in zip(follow_ups, replies, strict=True):
        print(wrap(question.split("Q: ")[1].split("\n")[0], "   you > "))
        print(wrap(r.text, "   bot > "))
        meta = r.meta_info
        print(f"         [{meta.cached_tokens} of {meta.prompt_tokens} prompt tokens cached]\n")
        check(meta.cached_tokens > 0, "a fork's first turn reuses the shared history")
    parent = manager.get_session(session_id)
    check(len(parent.history) == len(QUESTIONS), "forks do not change their parent")
    sharing = manager.prefix_tree.find_sharing_sessions(parent.prefix)
    print(f"   sessions sharing the conversation so far: {len(sharing)} (parent + 2 forks)")
    check(len(sharing) == 3, "the prefix tree sees the parent and both forks")


async def main() -> int:
    async with server_url() as (url, origin), SGLangClient(url) as client:
        await client.wait_for_ready(timeout=60)
        print(f"SGLang server at {url} ({origin})\n")
        async with SessionManager(client) as manager:
            try:
                await chat_part(manager)
                session_id = await text_part(manager)
                await fork_part(manager, session_id)
            except Failed as exc:
                print(f"\nFAILED: {exc}", file=sys.stderr)
                return 1
            print(f"\nDone: {len(manager)} sessions, deleted on exit.")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
