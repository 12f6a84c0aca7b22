"""A short SGLangClient session against the built-in fake SGLang server.

Starts the fake server on a free loopback port (or uses SGLANG_URL), then shows health, model
info, a generation, a batch, n > 1 samples, a stream, an OpenAI-style chat call, prefix-cache
reuse and a typed error; prints what each step did and how long it took; stops what it started.

    .venv/bin/python examples/client_session.py
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator

from sglang_client import BadRequestError, GenerateResponse, SGLangClient
from sglang_client.testing import FakeSGLangServer


@contextlib.asynccontextmanager
async def server_url() -> AsyncIterator[str]:
    url = os.environ.get("SGLANG_URL")
    if url:
        yield url
        return
    async with FakeSGLangServer(latency_per_token=0.002) as server:
        yield server.url


def step(name: str, started: float, detail: str) -> None:
    print(f"  {name:<28} {(time.perf_counter() - started) * 1e3:7.1f} ms  {detail}")


async def main() -> None:
    async with server_url() as url, SGLangClient(url) as client:
        print(f"SGLang server at {url}\n")
        t = time.perf_counter()
        await client.wait_for_ready(timeout=60)
        status = await client.health()
        step("health", t, f"available={status.available}")

        t = time.perf_counter()
        info = await client.get_model_info()
        step("model_info", t, f"model_path={info.model_path}")

        prompt = "The capital of France is"
        t = time.perf_counter()
        r = await client.generate(prompt, sampling_params={"temperature": 0, "max_new_tokens": 16})
        assert isinstance(r, GenerateResponse)
        step("generate", t, f"{r.text!r} ({r.meta_info.completion_tokens} tokens)")

        t = time.perf_counter()
        again = await client.generate(
            prompt + r.text + " It is known for",
            sampling_params={"temperature": 0, "max_new_tokens": 8},
        )
        assert isinstance(again, GenerateResponse)
        step(
            "generate (shared prefix)",
            t,
            f"cached_tokens={again.meta_info.cached_tokens} of {again.meta_info.prompt_tokens}",
        )

        t = time.perf_counter()
        batch = await client.generate(["Hello", "Goodbye"], sampling_params={"max_new_tokens": 6})
        assert isinstance(batch, list)
        step("generate (batch of 2)", t, " | ".join(repr(b.text) for b in batch))

        t = time.perf_counter()
        samples = await client.generate(
            "Once upon a time", sampling_params={"n": 3, "max_new_tokens": 6, "temperature": 0.9}
        )
        assert isinstance(samples, list)
        step("generate (n=3)", t, f"{len(samples)} samples: " + " | ".join(s.text for s in samples))

        t = time.perf_counter()
        pieces = []
        async for chunk in client.generate_stream(
            "Tell me a story", sampling_params={"max_new_tokens": 12}
        ):
            pieces.append(chunk.delta)
        step("generate_stream", t, f"{len(pieces)} chunks -> {''.join(pieces)!r}")

        t = time.perf_counter()
        chat = await client.chat_completion(
            messages=[{"role": "user", "content": "Say hello."}], max_tokens=12
        )
        step("chat_completion", t, repr(chat.choices[0].message.content))

        t = time.perf_counter()
        try:
            await client.generate("x", sampling_params={"seed": 1})
        except BadRequestError as exc:
            step("bad request (typed error)", t, f"{type(exc).__name__}: {str(exc)[:60]}...")
    print("\nDone; the fake server has stopped.")


if __name__ == "__main__":
    asyncio.run(main())
