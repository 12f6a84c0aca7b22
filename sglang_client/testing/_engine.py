"""The fake scheduler: builds runs of sub-requests, paces them, aborts them, and books results.

A run is one HTTP request's work: ``len(prompts) * n`` sub-requests in prompt-major order. All
sub-requests of a run advance in lockstep, one token per tick, which is what a real server's
continuous batching looks like from the outside. Both ``/generate`` and the OpenAI routes drive
runs through ``ticks()`` (paced) or ``run_to_end()`` (no latency configured).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio

from sglang_client.testing._config import FakeServerConfig
from sglang_client.testing._generation import Generation, sample_seed
from sglang_client.testing._logprobs import LogprobTracker
from sglang_client.testing._params import SamplingParams
from sglang_client.testing._radix import RadixCache
from sglang_client.testing._sessions import SessionStore
from sglang_client.testing._tokenizer import Tokenizer

__all__ = ["ABORTED", "Engine", "FakeServerStats", "Run", "Sub", "new_rid"]

# SGLang's FINISH_ABORT.to_json(): all four keys, status and error type null for a plain abort.
ABORTED: dict[str, Any] = {
    "type": "abort",
    "message": "Aborted",
    "status_code": None,
    "err_type": None,
}
_RID_RNG = random.Random()


def new_rid() -> str:
    """A random uuid4 in hex, as SGLang's rids, minus ``uuid.UUID``'s per-call overhead."""
    bits = _RID_RNG.getrandbits(128)
    bits = (bits & ~(0xF000 << 64)) | (0x4000 << 64)  # version 4
    bits = (bits & ~(0xC000 << 48)) | (0x8000 << 48)  # RFC 4122 variant
    return f"{bits:032x}"


@dataclass
class FakeServerStats:
    """Counters a test can read (``app.stats``); updated by the server's event loop."""

    requests: Counter[str] = field(default_factory=Counter)
    """Requests per path (every route, also errors)."""
    http: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Requests per (path, method), as ``sglang:http_requests_total`` counts them."""
    routing_keys: Counter[str] = field(default_factory=Counter)
    """Requests per ``X-SMG-Routing-Key`` (which SGLang's Model Gateway passes on): behind a
    gateway, where each key's requests landed."""
    streamed: Counter[str] = field(default_factory=Counter)
    """The streamed share of ``completions_generated``, ``prompt_tokens``, ``generation_tokens``."""
    generate_requests: int = 0
    chat_completion_requests: int = 0
    completion_requests: int = 0
    completions_generated: int = 0
    """Finished sub-requests (one per prompt and sample), aborted ones included."""
    prompt_tokens: int = 0
    generation_tokens: int = 0
    cached_tokens: int = 0
    aborted_requests: int = 0
    error_responses: int = 0

    def reset(self) -> None:
        """Zero every counter."""
        fresh = FakeServerStats()
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(fresh, name))


@dataclass(slots=True, eq=False)
class Sub:
    """One sub-request: one prompt, one sample."""

    index: int
    rid: str
    prompt_ids: list[int]
    gen: Generation
    session: tuple[str, str] | None = None  # (session id, node rid)
    cached_tokens: int = 0
    abort_requested: bool = False
    done: bool = False
    sent_chars: int = 0
    sent_ids: int = 0
    chunks: int = 0
    logprobs: LogprobTracker | None = None
    first_sent: float | None = None  # when its first chunk went out (SGLang repeats it last)


@dataclass(slots=True, eq=False)
class Run:
    """The sub-requests of one HTTP request and its clocks."""

    subs: list[Sub]
    started: float = field(default_factory=time.perf_counter)
    received: float = field(default_factory=time.time)  # wall clock, for the telemetry
    first_token: float | None = None  # wall clock of the first generated token
    wake: anyio.Event | None = None
    booked: bool = False
    stream: bool = False  # answered as SSE (metrics split by it)

    def elapsed(self) -> float:
        """Seconds since the request arrived (``e2e_latency``)."""
        return time.perf_counter() - self.started

    def mark_progress(self) -> None:
        """Note the first token's time (the end of prefill)."""
        if self.first_token is None:
            self.first_token = time.time()


class Engine:
    """Owns in-flight requests, the radix cache, sessions and counters of one fake server."""

    def __init__(
        self,
        config: FakeServerConfig,
        tokenizer: Tokenizer,
        rng: random.Random,
        stats: FakeServerStats,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.rng = rng
        self.stats = stats
        self.cache = RadixCache(config.radix_cache_tokens)
        self.sessions = SessionStore()
        self.inflight: dict[str, tuple[Sub, Run]] = {}
        self.running = 0  # sub-requests holding a slot (paced runs)
        self.queued = 0  # sub-requests waiting for one (max_running_requests)
        self._freed: anyio.Event | None = None  # set when a slot frees or a run aborts

    # -- building ----------------------------------------------------------------------------

    def check_length(self, prompt_len: int, max_new_tokens: int | None) -> None:
        """Reject prompts that do not fit the context (SGLang's messages).

        Raises:
            ValueError: The prompt, or prompt plus ``max_new_tokens``, is too long.
        """
        limit = self.config.context_length
        if prompt_len >= limit:
            raise ValueError(
                f"The input ({prompt_len} tokens) is longer than the model's context length "
                f"({limit} tokens)."
            )
        if max_new_tokens is not None and prompt_len + max_new_tokens > limit:
            raise ValueError(
                f"Requested token count exceeds the model's maximum context length of {limit} "
                f"tokens. You requested a total of {prompt_len + max_new_tokens} tokens: "
                f"{prompt_len} tokens from the input messages and {max_new_tokens} tokens for "
                "the completion. Please reduce the number of tokens in the input messages or the "
                "completion to fit within the limit."
            )

    def make_run(
        self,
        prompts: list[list[int]],
        params: list[SamplingParams],
        rids: list[str] | None,
        session_params: list[dict[str, Any] | None] | None = None,
        check: Callable[[int, list[int]], None] | None = None,
    ) -> Run:
        """Build, check and register a run: ``len(prompts) * n`` sub-requests, prompt-major.

        With ``n > 1`` every sample gets a fresh uuid rid (SGLang's ``regenerate_rid``);
        otherwise ``rids`` (or fresh uuids) name the prompts. ``check(prompt index, context)``
        may refuse a request (``ValueError``) once its context (with a session's history) is
        known, as SGLang's scheduler does.

        Raises:
            ValueError: Context too long, or a rid is already in flight.
            SessionError: A session request cannot be continued.
        """
        n = params[0].n
        subs: list[Sub] = []
        begun: list[tuple[str, str]] = []
        try:
            for p, prompt in enumerate(prompts):
                sp = params[p]
                session = session_params[p] if session_params else None
                for s in range(n):
                    index = p * n + s
                    rid = rids[p] if rids is not None and n == 1 else new_rid()
                    context = prompt
                    key = None
                    if session is not None:
                        context, discarded = self.sessions.begin(session, prompt, rid)
                        key = (str(session.get("id")), rid)
                        begun.append(key)
                        self.abort(discarded)
                    self.check_length(len(context), sp.max_new_tokens)
                    if check is not None:
                        check(p, context)
                    limit = self.config.context_length - len(context)
                    max_tokens = limit if sp.max_new_tokens is None else sp.max_new_tokens
                    gen = Generation(self.tokenizer, context, sp, max_tokens, self._seed(sp, s))
                    subs.append(Sub(index, rid, context, gen, key))
            duplicates = [sub.rid for sub in subs if sub.rid in self.inflight]
            if duplicates:
                raise ValueError(f"Duplicate request ID detected: {duplicates[0]}")
        except ValueError:
            for session_id, rid in begun:
                self.sessions.discard(session_id, rid)
            raise
        run = Run(subs)
        warmed: set[int] = set()
        # Without latency runs never overlap, so caching prompts at commit time is enough.
        store = self.paced or len(subs) > 1
        for sub in subs:
            if n > 1 and sub.index // n not in warmed:
                # SGLang sends one hidden prefill-only request per prompt before the n samples.
                warmed.add(sub.index // n)
                self.cache.prefill(sub.prompt_ids)
            sub.cached_tokens = self.cache.prefill(sub.prompt_ids, store)
            self.inflight[sub.rid] = (sub, run)
        return run

    def _seed(self, params: SamplingParams, sample_index: int) -> int | None:
        if params.is_greedy:
            return None
        if params.sampling_seed is not None:
            return sample_seed(params.sampling_seed, sample_index)
        return self.rng.getrandbits(64)

    # -- running -----------------------------------------------------------------------------

    @property
    def paced(self) -> bool:
        """Whether any latency is configured (otherwise runs complete without awaiting)."""
        config = self.config
        return bool(
            config.time_to_first_token or config.latency_per_token or config.prefill_time_per_token
        )

    @staticmethod
    def advance(run: Run) -> list[Sub]:
        """Advance every unfinished sub-request by one token; return those that moved."""
        moved: list[Sub] = []
        run.mark_progress()
        for sub in run.subs:
            if sub.done:
                continue
            gen = sub.gen
            if sub.abort_requested:
                gen.abort(ABORTED)
            elif gen.finish_reason is None:
                gen.step()
            if gen.finish_reason is not None:
                sub.done = True
            moved.append(sub)
        return moved

    @staticmethod
    def run_to_end(run: Run) -> None:
        """Generate everything at once (no latency configured, so nothing can abort)."""
        run.mark_progress()
        for sub in run.subs:
            gen = sub.gen
            while gen.finish_reason is None:
                gen.step()
            sub.done = True

    async def ticks(self, run: Run) -> AsyncGenerator[list[Sub], None]:
        """Yield the sub-requests that moved at each token step, sleeping as configured."""
        config = self.config
        prefill = config.time_to_first_token
        if config.prefill_time_per_token:
            uncached = sum(len(sub.prompt_ids) - sub.cached_tokens for sub in run.subs)
            prefill += config.prefill_time_per_token * uncached
        if prefill:
            await self._sleep(run, prefill)
        while True:
            moved = self.advance(run)
            if not moved:
                return
            yield moved
            if all(sub.done for sub in run.subs):
                return
            if config.latency_per_token:
                await self._sleep(run, config.latency_per_token)

    async def _sleep(self, run: Run, seconds: float) -> None:
        if run.wake is None or run.wake.is_set():
            run.wake = anyio.Event()
        # An abort wakes the run at once instead of after the whole delay.
        with anyio.move_on_after(seconds):
            await run.wake.wait()

    @asynccontextmanager
    async def slot(self, run: Run) -> AsyncIterator[None]:
        """Hold ``run``'s sub-requests among the running ones, queueing while the server is
        full (``max_running_requests``); an aborted run leaves the queue at once."""
        need = len(run.subs)
        limit = self.config.max_running_requests
        self.queued += need
        try:
            while (
                limit is not None
                and self.running
                and self.running + need > limit
                and not all(sub.abort_requested for sub in run.subs)
            ):
                if self._freed is None or self._freed.is_set():
                    self._freed = anyio.Event()
                await self._freed.wait()
        finally:
            self.queued -= need
        self.running += need
        try:
            yield
        finally:
            self.running -= need
            self._wake_queue()

    def _wake_queue(self) -> None:
        if self._freed is not None:
            self._freed.set()

    def tokens_in_use(self) -> int:
        """KV-cache tokens the in-flight sub-requests hold (prompt plus output)."""
        return sum(
            len(sub.prompt_ids) + len(sub.gen.output_ids) for sub, _ in self.inflight.values()
        )

    def abort(self, rids: list[str] | None) -> None:
        """Abort in-flight sub-requests by rid (``None``: all); unknown rids are ignored."""
        targets = (
            list(self.inflight.values())
            if rids is None
            else [self.inflight[rid] for rid in rids if rid in self.inflight]
        )
        for sub, run in targets:
            sub.abort_requested = True
            if run.wake is not None:
                run.wake.set()
        self._wake_queue()

    def finish(self, run: Run) -> None:
        """Book a run that ended: cache, sessions, counters; forget its rids (once).

        Handlers book a run as soon as it ended, before its last bytes go out, so that a client
        that has its answer also sees it counted.
        """
        if run.booked:
            return
        run.booked = True
        stats = self.stats
        for sub in run.subs:
            if self.inflight.get(sub.rid, (None,))[0] is sub:
                del self.inflight[sub.rid]
            output = sub.gen.output_ids
            # As SGLang: the last generated token was never run through the model, so it has
            # no KV to cache; a turn continuing this answer recomputes that one token.
            self.cache.commit(sub.prompt_ids + output[:-1])
            if sub.session is not None:
                self.sessions.finish(sub.session[0], sub.session[1], output)
            stats.completions_generated += 1
            stats.prompt_tokens += len(sub.prompt_ids)
            stats.generation_tokens += len(output)
            if run.stream:
                stats.streamed["completions_generated"] += 1
                stats.streamed["prompt_tokens"] += len(sub.prompt_ids)
                stats.streamed["generation_tokens"] += len(output)
            stats.cached_tokens += sub.cached_tokens
            finish = sub.gen.finish_reason
            if finish is not None and finish["type"] == "abort":
                stats.aborted_requests += 1

    def abort_unfinished(self, run: Run) -> None:
        """Mark every unfinished sub-request of ``run`` aborted (client gone, stream cut)."""
        for sub in run.subs:
            if not sub.done:
                sub.gen.abort(ABORTED)
                sub.done = True
