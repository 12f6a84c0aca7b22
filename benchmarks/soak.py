"""Soak: many clients through sglang-cached for a while, with upstream faults, checked answer by
answer.

The fake SGLang runs in this process (so its generations can be watched), the proxy as a
subprocess (so its memory can be read), and ``--clients`` asyncio clients send a mix of native
and OpenAI requests, streaming or not, n = 1..5, greedy and sampled, mostly repeated prompts
and some new ones. The fake injects ``--fault-rate`` faults: 503 queue-full, 500 crashes,
streams and bodies cut mid-way, and stalls past the proxy's timeout.

Printed: requests and their outcomes, errors by kind (an upstream fault the proxy relayed
faithfully, or the proxy's own), wrong answers (a completion that differs from the first seen
for its key and index), stored entries that are truncated or errors, duplicate upstream
generations (two at once for one key), proxy RSS at start/max/end, and p50/p99 latency.
Targets (exit code 1 if missed): no proxy-caused errors, no wrong answers, nothing bad stored,
no duplicates, RSS growth under 50 MB.

    python benchmarks/soak.py                      # 60 s, 64 clients, 5% faults
    python benchmarks/soak.py --seconds 300        # the 5-minute run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import free_port, percentile, print_table, serve_process  # noqa: E402

from sglang_client.cache import SQLiteStore  # noqa: E402
from sglang_client.testing import FakeSGLangServer  # noqa: E402

ROUTES = ("/generate", "/v1/chat/completions", "/v1/completions")
RSS_GROWTH_LIMIT_MB = 50.0


@dataclass
class Tally:
    """What the clients saw."""

    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    wrong: int = 0
    first_seen: dict[tuple[Any, ...], str] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    examples: dict[str, str] = field(default_factory=dict)

    def error(self, kind: str, proxy_caused: bool, detail: str) -> None:
        label = f"{'PROXY' if proxy_caused else 'relayed'}: {kind}"
        self.errors[label] += 1
        self.examples.setdefault(label, detail[:300])


class GenerationWatch:
    """Count generations the fake runs at once for the same key (each one is a duplicate)."""

    def __init__(self, fake: FakeSGLangServer) -> None:
        self.active: Counter[tuple[Any, ...]] = Counter()
        self.duplicates = 0
        self.runs = 0
        self._keys: dict[int, list[tuple[Any, ...]]] = {}  # id(run) -> its keys
        self._lock = threading.Lock()
        engine = fake.app.engine
        make_run, finish = engine.make_run, engine.finish

        def watched_make_run(prompts: Any, params: Any, *args: Any, **kwargs: Any) -> Any:
            run = make_run(prompts, params, *args, **kwargs)
            keys = [self._key(p, s) for p, s in zip(prompts, params, strict=True)]
            with self._lock:
                self._keys[id(run)] = keys
                self.runs += 1
                for key in keys:
                    if self.active[key]:
                        self.duplicates += 1
                    self.active[key] += 1
            return run

        def watched_finish(run: Any) -> None:
            first = not run.booked
            finish(run)
            if first:
                with self._lock:
                    for key in self._keys.pop(id(run), []):
                        self.active[key] -= 1

        engine.make_run = watched_make_run  # type: ignore[method-assign]
        engine.finish = watched_finish  # type: ignore[method-assign]

    @staticmethod
    def _key(prompt: list[int], params: Any) -> tuple[Any, ...]:
        return (tuple(prompt), params.temperature, params.max_new_tokens)


def _body(route: str, prompt: str, n: int, temperature: float, stream: bool) -> dict[str, Any]:
    if route == "/generate":
        params = {"max_new_tokens": 12, "temperature": temperature, "n": n}
        return {"text": prompt, "sampling_params": params, "stream": stream}
    common = {"max_tokens": 12, "temperature": temperature, "n": n, "stream": stream}
    if route == "/v1/chat/completions":
        return {"model": "default", "messages": [{"role": "user", "content": prompt}], **common}
    return {"model": "default", "prompt": prompt, **common}


def _texts(route: str, status: int, raw: bytes, stream: bool) -> dict[int, str] | str:
    """index -> text of a whole answer, or why it is not one."""
    if not stream:
        body = json.loads(raw)
        if route == "/generate":
            items = body if isinstance(body, list) else [body]
            return {i: item["text"] for i, item in enumerate(items)}
        out = {}
        for choice in body["choices"]:
            out[choice["index"]] = (
                choice["message"]["content"] if "message" in choice else choice["text"]
            )
        return out
    text = raw.decode()
    if not text.rstrip().endswith("data: [DONE]"):
        return "stream cut without [DONE]"
    out: dict[int, str] = {}
    for block in text.split("\n\n"):
        if not block.startswith("data: ") or block == "data: [DONE]":
            continue
        event = json.loads(block[6:])
        if "error" in event:
            return "error event: " + json.dumps(event["error"])[:200]
        if route == "/generate":
            finish = (event.get("meta_info") or {}).get("finish_reason") or {}
            if finish.get("type") == "abort":
                return "abort event: " + json.dumps(finish)
            out[event.get("index", 0)] = event["text"]
            continue
        for choice in event.get("choices") or []:
            if choice.get("finish_reason") == "abort":
                return "abort event"
            delta = choice.get("delta")
            piece = (delta or {}).get("content") if delta is not None else choice.get("text")
            out[choice["index"]] = out.get(choice["index"], "") + (piece or "")
    return out


def _classify(status: int, raw: bytes) -> tuple[str, bool]:
    """(kind, proxy_caused) for a non-200 answer."""
    text = raw.decode(errors="replace")
    if status == 500 and "Internal proxy error" in text:
        return "500 proxy bug", True
    if status in (500, 503):
        return f"{status} from upstream", False
    if status in (502, 504) and "upstream" in text.lower():
        return f"{status} upstream down/slow", False
    return f"{status} unexpected", True


async def _client(
    session: Any,
    url: str,
    rng: random.Random,
    tally: Tally,
    deadline: float,
    pools: dict[str, list[str]],
) -> None:
    import aiohttp

    while time.monotonic() < deadline:
        route = rng.choices(ROUTES, weights=(4, 3, 3))[0]
        stream = rng.random() < 0.5
        n = rng.choices((1, 2, 3, 4, 5), weights=(5, 2, 1, 1, 1))[0]
        temperature = 0.0 if rng.random() < 0.3 else 0.8
        if rng.random() < 0.8:
            prompt = rng.choice(pools[route])
        else:
            prompt = f"{route} fresh {rng.getrandbits(64):x}"
        body = _body(route, prompt, n, temperature, stream)
        started = time.perf_counter()
        try:
            async with session.post(url + route, json=body) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            tally.outcomes["transport error"] += 1
            tally.error(f"transport {type(exc).__name__}", True, str(exc))
            continue
        tally.latencies.append(time.perf_counter() - started)
        if status != 200:
            kind, ours = _classify(status, raw)
            tally.outcomes[f"{status}"] += 1
            tally.error(kind, ours, raw.decode(errors="replace"))
            continue
        try:
            texts = _texts(route, status, raw, stream)
        except (ValueError, KeyError, TypeError) as exc:
            tally.outcomes["malformed 200"] += 1
            tally.error("malformed 200", True, f"{exc}: {raw[:200]!r}")
            continue
        if isinstance(texts, str):
            relayed = texts.startswith(("abort event", "error event")) and (
                "upstream" in texts.lower() or "queue is full" in texts.lower() or "abort" in texts
            )
            tally.outcomes["stream error event" if relayed else "broken stream"] += 1
            tally.error(texts.split(":")[0], not relayed, texts)
            continue
        if sorted(texts) != list(range(n)):
            tally.outcomes["wrong choice count"] += 1
            tally.error("wrong choice count", True, f"{n} asked, got {sorted(texts)}")
            continue
        tally.outcomes["200 ok"] += 1
        for index, text in texts.items():
            key = (route, prompt, temperature, 0 if temperature == 0 else index)
            first = tally.first_seen.setdefault(key, text)
            if first != text:
                tally.wrong += 1
                tally.examples.setdefault("wrong", f"{key}: {first!r} then {text!r}")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _store_problems(path: Path) -> tuple[int, int]:
    """(entries, completions stored that are truncated or errors)."""
    store = SQLiteStore(path)
    bad = entries = 0
    offset = 0
    try:
        while True:
            page = await store.iter_entries(offset=offset, limit=1000)
            if not page:
                break
            offset += len(page)
            for entry in page:
                entries += 1
                for c in entry.completions:
                    finish = (c.get("meta_info") or {}).get("finish_reason") or (
                        c.get("choice") or {}
                    ).get("finish_reason")
                    kind = finish.get("type") if isinstance(finish, dict) else finish
                    if kind not in ("stop", "length", "tool_calls"):
                        bad += 1
    finally:
        await store.aclose()
    return entries, bad


def run_soak(
    seconds: float,
    clients: int,
    fault_rate: float,
    *,
    max_entries: int = 20000,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the soak; return the figures (see the module docstring)."""
    import aiohttp

    share = fault_rate / 3  # of upstream requests: 503s, 500s, cuts; stalls come on top
    tmp = Path(tempfile.mkdtemp(prefix="sglang-soak-"))
    with FakeSGLangServer(
        seed=7,
        fail_503_rate=share,
        fail_500_rate=share,
        drop_stream_rate=share,
        latency_per_token=0.001,
    ) as fake:
        watch = GenerationWatch(fake)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        args = [
            "-m", "sglang_client.server.cli", "start",
            "--sglang-url", fake.url,
            "--port", str(port),
            "--cache-path", str(tmp / "cache.db"),
            "--max-entries", str(max_entries),
            "--timeout", "2",
            "--max-retries", "0",
            "--quiet",
        ]  # fmt: skip
        with serve_process(args, url + "/health", log=tmp / "proxy.log") as proc:
            rss = [_rss_mb(proc.pid)]
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(1.0):
                    rss.append(_rss_mb(proc.pid))
                    if random.random() < 0.05:  # now and then, a stall past the --timeout
                        fake.app.faults.fail_next(1, "hang")

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            tally = Tally()
            rng = random.Random(42)
            pools = {r: [f"{r} repeated prompt {i}" for i in range(60)] for r in ROUTES}

            async def drive() -> None:
                timeout = aiohttp.ClientTimeout(total=30)
                connector = aiohttp.TCPConnector(limit=clients)
                async with aiohttp.ClientSession(timeout=timeout, connector=connector) as s:
                    deadline = time.monotonic() + seconds
                    await asyncio.gather(
                        *(
                            _client(s, url, random.Random(rng.random()), tally, deadline, pools)
                            for _ in range(clients)
                        )
                    )

            say(f"soak: {clients} clients for {seconds:g} s, {fault_rate:.0%} upstream faults")
            asyncio.run(drive())
            stop.set()
            sampler.join(5)
            rss.append(_rss_mb(proc.pid))
            injected = sum(fake.app.faults.injected.values())
            upstream_requests = sum(fake.app.stats.requests.values())
    entries, bad_stored = asyncio.run(_store_problems(tmp / "cache.db"))
    requests = sum(tally.outcomes.values())
    relayed = sum(v for k, v in tally.errors.items() if k.startswith("relayed"))
    # An error counts as relayed only while there were as many faults to relay.
    excess = max(0, relayed - injected)
    proxy_errors = excess + sum(v for k, v in tally.errors.items() if k.startswith("PROXY"))
    return {
        "seconds": seconds,
        "clients": clients,
        "requests": requests,
        "outcomes": dict(tally.outcomes),
        "errors": dict(tally.errors),
        "examples": tally.examples,
        "proxy_errors": proxy_errors,
        "relayed_errors": relayed,
        "injected_faults": injected,
        "upstream_requests": upstream_requests,
        "wrong": tally.wrong,
        "entries": entries,
        "bad_stored": bad_stored,
        "upstream_runs": watch.runs,
        "duplicates": watch.duplicates,
        "rss_start": rss[0],
        "rss_max": max(rss),
        "rss_end": rss[-1],
        "p50_ms": percentile(tally.latencies, 50) * 1e3,
        "p99_ms": percentile(tally.latencies, 99) * 1e3,
    }


def failures(result: dict[str, Any]) -> list[str]:
    """The targets a soak result misses."""
    missed = []
    for name in ("proxy_errors", "wrong", "bad_stored", "duplicates"):
        if result[name]:
            missed.append(f"{name} = {result[name]}")
    growth = result["rss_end"] - result["rss_start"]
    if growth >= RSS_GROWTH_LIMIT_MB:
        missed.append(f"RSS grew {growth:.0f} MB")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--fault-rate", type=float, default=0.05)
    parser.add_argument("--max-entries", type=int, default=20000, help="the proxy's store bound")
    args = parser.parse_args()
    result = run_soak(args.seconds, args.clients, args.fault_rate, max_entries=args.max_entries)
    rows = [
        ["requests", f"{result['requests']:,}"],
        *[[f"  {k}", f"{v:,}"] for k, v in sorted(result["outcomes"].items())],
        [
            "upstream faults injected",
            f"{result['injected_faults']:,}"
            f" ({result['injected_faults'] / max(1, result['upstream_requests']):.1%}"
            " of upstream requests)",
        ],
        ["errors relayed from upstream faults", f"{result['relayed_errors']:,}"],
        ["errors caused by the proxy", f"{result['proxy_errors']:,}"],
        *[[f"  {k}", f"{v:,}"] for k, v in sorted(result["errors"].items())],
        ["wrong answers", result["wrong"]],
        ["stored entries", f"{result['entries']:,}"],
        ["stored truncated or error", result["bad_stored"]],
        ["upstream generations", f"{result['upstream_runs']:,}"],
        ["duplicate generations", result["duplicates"]],
        [
            "proxy RSS start/max/end MB",
            f"{result['rss_start']:.0f} / {result['rss_max']:.0f} / {result['rss_end']:.0f}",
        ],
        ["latency p50 / p99 ms", f"{result['p50_ms']:.1f} / {result['p99_ms']:.1f}"],
    ]
    print_table(["soak", "value"], rows)
    for label, example in sorted(result["examples"].items()):
        if label.startswith("PROXY") or label == "wrong":
            print(f"example of {label}: {example}")
    missed = failures(result)
    print("targets: " + ("all met" if not missed else "MISSED: " + "; ".join(missed)))
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
