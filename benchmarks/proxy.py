"""sglang-cached throughput and latency, against a floor measured in the same run.

Everything runs on loopback, each server in its own process, against the fake SGLang server with
zero latency:

1. Cache hits: requests/s, p50 and p99 through the proxy (memory and SQLite stores, and SQLite
   with the hit memo off) at concurrency 1, 32 and 64, next to the FLOOR: a bare ASGI app that
   returns a fixed body of the same size as the cached response, served by the same uvicorn
   settings as the proxy (``sglang_client.server.cli.UVICORN_OPTIONS``: uvloop, httptools, one
   worker). Ratios are taken per round between adjacent runs, then the median is shown.
2. Misses at concurrency 32 (every request a new prompt): straight to the fake, and through the
   proxy with each store, the SQLite one also on a cache pre-filled with many entries. The CPU
   each process used shows which one is the bottleneck.
3. Added latency of a miss at concurrency 1: direct and proxied requests interleaved one by one,
   p50 of each and of the difference.

Load comes from ``wrk`` (C, one thread, POST bodies from Lua), not from Python. With every figure
come the CPU steal (/proc/stat), the CPU the servers used (``cpu us/req`` is robust to other
load), ``runq %``: how long a server was runnable but waiting for a CPU, and ``others %``: CPU
used meanwhile by processes outside the benchmark, in % of one core.
This machine's speed swings several-fold between runs. The proxies run with ``--quiet``.

    apt-get install -y wrk        # or: benchmarks/proxy.py --install-wrk   (as root)
    .venv/bin/python benchmarks/proxy.py [--duration 4] [--rounds 3] [--prefill 50000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    WRK_INSTALL,
    StealMeter,
    WrkRun,
    busy_seconds,
    ensure_wrk,
    free_port,
    percentile,
    print_table,
    run_wrk,
    serve_process,
)

REQUEST = {
    "text": "The capital of France is",
    "sampling_params": {"max_new_tokens": 8, "temperature": 0.7},
}


def _columns(spec: str) -> list[str]:
    return spec.split("|")


HIT_COLUMNS = _columns(
    "server|conc|req/s|p50 ms|p99 ms|x floor|cpu %|cpu us/req|x floor by cpu|runq %|"
    "steal %|others %|errors"
)
MISS_COLUMNS = _columns(
    "path|req/s|p50 ms|p99 ms|x direct|fake cpu %|proxy cpu %|fake us/req|"
    "proxy us/req|proxy runq %|steal %|others %|errors"
)
LATENCY_COLUMNS = _columns(
    "proxy|direct p50 ms|proxied p50 ms|added p50 ms|p50 of diffs ms|added p99 ms|"
    "steal %|machine busy %"
)


# ---------------------------------------------------------------------- the floor server


def serve_floor(port: int, body_file: str) -> None:
    """The floor: a raw ASGI app with a fixed JSON body, on the proxy's uvicorn settings."""
    import uvicorn

    from sglang_client.server.cli import UVICORN_OPTIONS

    body = Path(body_file).read_bytes()
    headers = [
        (b"content-type", b"application/json"),
        (b"x-cache", b"HIT"),
        (b"content-length", str(len(body)).encode()),
    ]

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].replace("lifespan.", "")
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(app, host="127.0.0.1", port=port, **UVICORN_OPTIONS)


# ---------------------------------------------------------------------- wrk


def hit_script(directory: Path, body: bytes) -> Path:
    path = directory / "hit.lua"
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [==[{body.decode()}]==]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    return path


def miss_script(directory: Path) -> Path:
    """Every request a new prompt (a fresh salt per run keeps runs apart)."""
    path = directory / f"miss-{uuid.uuid4().hex[:8]}.lua"
    params = json.dumps(REQUEST["sampling_params"], separators=(",", ":"))
    path.write_text(
        f'local salt = "{uuid.uuid4().hex}"\n'
        "local counter = 0\n"
        "request = function()\n"
        "  counter = counter + 1\n"
        "  local body = '{\"text\":\"miss ' .. salt .. ' ' .. counter .. '\",'\n"
        f"    .. '\"sampling_params\":{params}}}'\n"
        '  return wrk.format("POST", "/generate", {["Content-Type"] = "application/json"}, body)\n'
        "end\n"
    )
    return path


# ---------------------------------------------------------------------- servers


def post(url: str, body: bytes) -> tuple[bytes, str]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
        return response.read(), response.headers.get("x-cache", "")


def stats(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url + "/cache/stats", timeout=30) as response:  # noqa: S310
        data: dict[str, object] = json.loads(response.read())
        return data


@contextlib.contextmanager
def proxy(upstream: str, *args: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = ["-m", "sglang_client.server.cli", "start", "--sglang-url", upstream, "--quiet"]
    with serve_process([*cmd, "--port", str(port), *args], url + "/health") as proc:
        yield url, proc.pid


def prefill(path: Path, entries: int, completion: dict[str, object]) -> None:
    """Fill a SQLite cache with ``entries`` keys of one completion each, as misses would."""
    from sglang_client.cache import SQLiteStore

    async def fill() -> None:
        store = SQLiteStore(path / "cache.db")
        for i in range(entries):
            request = {"text": f"prefill {i}", "sampling_params": REQUEST["sampling_params"]}
            await store.append(f"{i:064x}", [completion], request=request)
            if i % 1000 == 999:
                await store.flush()
        await store.aclose()

    asyncio.run(fill())


# ---------------------------------------------------------------------- measurements


def fmt(value: float, digits: int = 2) -> str:
    return "-" if value != value else f"{value:.{digits}f}"


def measure_hits(
    targets: dict[str, tuple[str, int]], script: Path, seconds: float, rounds: int
) -> dict[tuple[str, int], list[WrkRun]]:
    runs: dict[tuple[str, int], list[WrkRun]] = {}
    for connections in (1, 32, 64):
        for _ in range(rounds):
            for name, (url, pid) in targets.items():
                run = run_wrk(url + "/generate", script, connections, seconds, {"server": pid})
                runs.setdefault((name, connections), []).append(run)
    return runs


def _cpu_us(run: WrkRun, process: str) -> float:
    """CPU microseconds one process spent per request (robust to other tenants' load)."""
    return 1e4 * run.cpu[process] / run.rps if run.rps else float("nan")


def print_hits(runs: dict[tuple[str, int], list[WrkRun]], names: list[str]) -> dict[str, float]:
    rows = []
    ratios_at_64: dict[str, float] = {}
    for connections in (1, 32, 64):
        floor = runs[("floor", connections)]
        for name in names:
            mine = runs[(name, connections)]
            ratio = statistics.median(m.rps / f.rps for m, f in zip(mine, floor, strict=True))
            by_cpu = statistics.median(
                _cpu_us(f, "server") / _cpu_us(m, "server")
                for m, f in zip(mine, floor, strict=True)
            )
            if connections == 64:
                ratios_at_64[name] = ratio
                ratios_at_64[name + " (cpu)"] = by_cpu
            rows.append(
                [
                    name,
                    connections,
                    fmt(statistics.median(r.rps for r in mine), 0),
                    fmt(statistics.median(r.p50_ms for r in mine)),
                    fmt(statistics.median(r.p99_ms for r in mine)),
                    "1.00" if name == "floor" else fmt(ratio),
                    fmt(statistics.median(r.cpu["server"] for r in mine), 0),
                    fmt(statistics.median(_cpu_us(r, "server") for r in mine), 0),
                    "1.00" if name == "floor" else fmt(by_cpu),
                    fmt(statistics.median(r.runq["server"] for r in mine), 0),
                    fmt(statistics.median(r.steal for r in mine), 1),
                    fmt(statistics.median(r.others for r in mine), 0),
                    sum(r.errors for r in mine),
                ]
            )
    print("\nCache hits (same request body every time), medians over rounds:")
    print_table(
        HIT_COLUMNS,
        rows,
    )
    return ratios_at_64


def measure_misses(
    targets: dict[str, tuple[str, dict[str, int]]], directory: Path, seconds: float, rounds: int
) -> dict[str, list[WrkRun]]:
    runs: dict[str, list[WrkRun]] = {}
    for _ in range(rounds):
        for name, (url, pids) in targets.items():
            run = run_wrk(url + "/generate", miss_script(directory), 32, seconds, pids)
            runs.setdefault(name, []).append(run)
    return runs


def print_misses(runs: dict[str, list[WrkRun]], title: str) -> None:
    direct = runs["upstream direct"]
    rows = []
    for name, mine in runs.items():
        ratio = statistics.median(m.rps / d.rps for m, d in zip(mine, direct, strict=True))
        cpu = mine[0].cpu
        rows.append(
            [
                name,
                fmt(statistics.median(r.rps for r in mine), 0),
                fmt(statistics.median(r.p50_ms for r in mine)),
                fmt(statistics.median(r.p99_ms for r in mine)),
                fmt(ratio),
                fmt(statistics.median(r.cpu["upstream"] for r in mine), 0),
                fmt(statistics.median(r.cpu.get("proxy", float("nan")) for r in mine), 0)
                if "proxy" in cpu
                else "-",
                fmt(statistics.median(_cpu_us(r, "upstream") for r in mine), 0),
                fmt(statistics.median(_cpu_us(r, "proxy") for r in mine), 0)
                if "proxy" in cpu
                else "-",
                fmt(statistics.median(r.runq["proxy"] for r in mine), 0) if "proxy" in cpu else "-",
                fmt(statistics.median(r.steal for r in mine), 1),
                fmt(statistics.median(r.others for r in mine), 0),
                sum(r.errors for r in mine),
            ]
        )
    print(f"\n{title}")
    print_table(
        MISS_COLUMNS,
        rows,
    )


def added_latency(direct: str, proxies: dict[str, str], pairs: int) -> list[list[object]]:
    """Interleave direct and proxied misses one by one; p50s and the p50 of the differences."""

    def connect(url: str) -> http.client.HTTPConnection:
        host, port = url.removeprefix("http://").split(":")
        return http.client.HTTPConnection(host, int(port), timeout=30)

    def once(conn: http.client.HTTPConnection, text: str) -> float:
        body = json.dumps({"text": text, "sampling_params": REQUEST["sampling_params"]})
        started = time.perf_counter()
        conn.request("POST", "/generate", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"miss failed with {response.status}")
        return elapsed

    rows: list[list[object]] = []
    for name, url in proxies.items():
        near, far = connect(direct), connect(url)
        salt = uuid.uuid4().hex
        direct_ms, proxy_ms, diff_ms = [], [], []
        meter = StealMeter()
        for i in range(20):  # warm both connections and code paths
            once(near, f"warm {salt} d{i}")
            once(far, f"warm {salt} p{i}")
        meter.start()
        busy, started = busy_seconds(), time.monotonic()
        for i in range(pairs):
            if i % 2:
                p = once(far, f"lat {salt} p{i}")
                d = once(near, f"lat {salt} d{i}")
            else:
                d = once(near, f"lat {salt} d{i}")
                p = once(far, f"lat {salt} p{i}")
            direct_ms.append(d * 1e3)
            proxy_ms.append(p * 1e3)
            diff_ms.append((p - d) * 1e3)
        steal = meter.stop()
        machine = 100 * (busy_seconds() - busy) / (time.monotonic() - started)
        near.close()
        far.close()
        rows.append(
            [
                name,
                fmt(percentile(direct_ms, 50), 3),
                fmt(percentile(proxy_ms, 50), 3),
                fmt(percentile(proxy_ms, 50) - percentile(direct_ms, 50), 3),
                fmt(percentile(diff_ms, 50), 3),
                fmt(percentile(proxy_ms, 99) - percentile(direct_ms, 99), 3),
                fmt(steal, 1),
                fmt(machine, 0),
            ]
        )
    return rows


# ---------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per figure")
    parser.add_argument("--prefill", type=int, default=50_000, help="entries in the big cache")
    parser.add_argument("--pairs", type=int, default=400, help="miss pairs for added latency")
    parser.add_argument(
        "--token-latency", type=float, default=0.01, help="s/token of the slow upstream"
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s, small prefill")
    parser.add_argument("--install-wrk", action="store_true", help=f"run `{WRK_INSTALL}` if root")
    parser.add_argument(
        "--serve-floor", nargs=2, metavar=("PORT", "BODY_FILE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.serve_floor:
        serve_floor(int(args.serve_floor[0]), args.serve_floor[1])
        return 0
    if args.quick:
        args.duration, args.rounds, args.prefill, args.pairs = 2.0, 1, 5000, 150
    ensure_wrk(args.install_wrk)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-proxy-")))
        fake_port = free_port()
        fake_url = f"http://127.0.0.1:{fake_port}"
        fake = stack.enter_context(
            serve_process(
                ["-m", "sglang_client.testing", "--host", "127.0.0.1", "--port", str(fake_port)],
                fake_url + "/health",
            )
        )
        memory = stack.enter_context(proxy(fake_url, "--store", "memory"))
        sqlite = stack.enter_context(proxy(fake_url, "--cache-path", str(tmp / "sqlite")))
        no_memo = stack.enter_context(
            proxy(fake_url, "--cache-path", str(tmp / "nomemo"), "--hit-memo-mb", "0")
        )
        request = json.dumps(REQUEST, separators=(",", ":")).encode()
        hit_body = b""
        for url, _ in (memory, sqlite, no_memo):
            for _ in range(3):  # a miss, a hit through the full path, then memo hits
                body, cache = post(url + "/generate", request)
            assert cache == "HIT", cache
            hit_body = body
        (tmp / "body.json").write_bytes(hit_body)
        floor_port = free_port()
        floor = stack.enter_context(
            serve_process(
                [__file__, "--serve-floor", str(floor_port), str(tmp / "body.json")],
                f"http://127.0.0.1:{floor_port}/",
            )
        )
        completion = json.loads(hit_body)
        print(
            f"fake SGLang (zero latency) at {fake_url}; cached /generate response "
            f"{len(hit_body)} bytes; wrk -t1, {args.duration:g} s per run, {args.rounds} round(s)"
        )
        hits = measure_hits(
            {
                "floor": (f"http://127.0.0.1:{floor_port}", floor.pid),
                "proxy memory": (memory[0], memory[1]),
                "proxy sqlite": (sqlite[0], sqlite[1]),
                "sqlite, no memo": (no_memo[0], no_memo[1]),
            },
            hit_script(tmp, request),
            args.duration,
            args.rounds,
        )
        for url, _ in (memory, sqlite, no_memo):
            served = stats(url)
            assert served["misses"] == 1, served  # every measured request was a hit
        names = ["floor", "proxy memory", "proxy sqlite", "sqlite, no memo"]
        ratios = print_hits(hits, names)

        print(f"\nPre-filling a SQLite cache with {args.prefill} entries...", flush=True)
        prefill(tmp / "big", args.prefill, completion)
        big = stack.enter_context(proxy(fake_url, "--cache-path", str(tmp / "big")))
        misses = measure_misses(
            {
                "upstream direct": (fake_url, {"upstream": fake.pid}),
                "proxy memory": (memory[0], {"upstream": fake.pid, "proxy": memory[1]}),
                "proxy sqlite": (sqlite[0], {"upstream": fake.pid, "proxy": sqlite[1]}),
                f"proxy sqlite, {args.prefill} entries": (
                    big[0],
                    {"upstream": fake.pid, "proxy": big[1]},
                ),
            },
            tmp,
            args.duration,
            args.rounds,
        )
        print_misses(
            misses, "Misses at concurrency 32 (a new prompt every request), medians over rounds:"
        )
        big_stats = stats(big[0])

        slow_port = free_port()
        slow_url = f"http://127.0.0.1:{slow_port}"
        slow = stack.enter_context(
            serve_process(
                [
                    "-m",
                    "sglang_client.testing",
                    "--port",
                    str(slow_port),
                    "--latency-per-token",
                    str(args.token_latency),
                ],
                slow_url + "/health",
            )
        )
        slow_proxy = stack.enter_context(proxy(slow_url, "--cache-path", str(tmp / "slow")))
        bounded = measure_misses(
            {
                "upstream direct": (slow_url, {"upstream": slow.pid}),
                "proxy sqlite": (slow_proxy[0], {"upstream": slow.pid, "proxy": slow_proxy[1]}),
            },
            tmp,
            args.duration,
            args.rounds,
        )
        print_misses(
            bounded, f"The same with an upstream taking {args.token_latency * 1e3:g} ms per token:"
        )

        rows = added_latency(
            fake_url, {"proxy memory": memory[0], "proxy sqlite": sqlite[0]}, args.pairs
        )
        print(f"\nAdded latency of a miss at concurrency 1 ({args.pairs} interleaved pairs):")
        print_table(
            LATENCY_COLUMNS,
            rows,
        )
    print(
        f"\nSummary: hits at c=64 vs floor: memory {ratios['proxy memory']:.2f}x "
        f"({ratios['proxy memory (cpu)']:.2f}x by CPU per request), sqlite "
        f"{ratios['proxy sqlite']:.2f}x ({ratios['proxy sqlite (cpu)']:.2f}x by CPU) "
        "(target >= 0.70); added miss p50: "
        + ", ".join(f"{r[0]} {r[3]} ms" for r in rows)
        + f" (target <= 1 ms); the pre-filled cache held {big_stats['num_keys']} keys."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
