"""``sglang-cached``: run the caching proxy, or inspect and move a cache without one.

sglang-cached start --sglang-url http://127.0.0.1:30000 [--port 30001] [--store sqlite]
sglang-cached stats | clear | export --format jsonl FILE | import FILE   [--cache-path DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

from sglang_client.cache.engine import DEFAULT_CACHE_PATH
from sglang_client.cache.stores._sqlite_schema import database_path, not_a_cache_file, private_dirs

if TYPE_CHECKING:
    from sglang_client.cache.stores.base import CacheStore

__all__ = ["UVICORN_OPTIONS", "build_store", "main"]

DEFAULT_REDIS_PREFIX = "sglang-cache:"
UVICORN_OPTIONS: dict[str, Any] = {
    # uvloop and httptools when installed (uvicorn[standard]); one worker, since one process
    # owns a SQLite cache's writes.
    "loop": "auto",
    "http": "auto",
    "lifespan": "on",
    "access_log": False,
    "log_level": "warning",
    "timeout_graceful_shutdown": 30,
}
"""How ``start`` runs uvicorn (the benchmark serves its baseline app the same way)."""

_KEY = re.compile(r"[0-9a-f]{64}")
_PAGE = 500


def build_store(
    spec: str,
    cache_path: str,
    ttl: float | None = None,
    max_entries: int | None = None,
    redis_prefix: str = DEFAULT_REDIS_PREFIX,
) -> CacheStore:
    """A store from ``--store``: ``sqlite`` (at ``cache_path``), ``memory`` or ``redis://...``.

    Raises:
        SystemExit: the spec or a limit does not fit the store.
    """
    from sglang_client.cache import MemoryStore, RedisStore, SQLiteStore

    if spec == "sqlite":
        return SQLiteStore(database_path(cache_path), ttl=ttl, max_entries=max_entries)
    if spec == "memory":
        return MemoryStore(max_entries=max_entries, ttl=ttl)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        if max_entries is not None:
            raise SystemExit(
                "sglang-cached: --max-entries does not apply to Redis; bound it with the "
                "server's maxmemory policy, or use --ttl"
            )
        return RedisStore(spec, prefix=redis_prefix, ttl=ttl)
    raise SystemExit(f"sglang-cached: --store must be sqlite, memory or redis://..., not {spec!r}")


def _check_sglang_url(url: str) -> str:
    """The ``--sglang-url`` to use; exit 2 with one line for one that cannot work."""
    parts = urlsplit(url)
    problem = None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        guess = url if "://" in url else f"http://{url}"
        problem = f"needs a full URL with its scheme (did you mean {guess}?)"
    elif parts.query or parts.fragment:
        problem = "takes no query string or fragment"
    elif parts.path.rstrip("/").endswith("/v1"):
        root = url.rstrip("/")[: -len("/v1")]
        problem = f"is SGLang's root, not its OpenAI path: use {root} (without /v1)"
    if problem is not None:
        print(f"sglang-cached: --sglang-url {url!r} {problem}", file=sys.stderr)
        raise SystemExit(2)
    return url.rstrip("/")


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, or exit 2 with one line (a taken port, an unknown address)."""
    from sglang_client._net import bind_loopback

    try:
        return bind_loopback(host, port)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        print(f"sglang-cached: cannot listen on {host}:{port}: {reason}", file=sys.stderr)
        raise SystemExit(2) from None


def _check_cache_path(cache_path: str) -> None:
    """Refuse (exit 2, one line) a ``--cache-path`` that is not, and cannot become, a cache.

    An existing file that is not a SQLite database is never touched; the directory of a new
    one is created now (0700), so that a path that cannot exist fails here and not later.
    """
    database = database_path(cache_path)
    problem = not_a_cache_file(database)
    if problem is None:
        try:
            private_dirs(database.parent)
        except OSError as exc:
            problem = f"cannot create {database.parent}: {exc.strerror or exc}"
    if problem is not None:
        print(f"sglang-cached: --cache-path {cache_path}: {problem}", file=sys.stderr)
        raise SystemExit(2)


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"must be a port number (1-65535), got {text}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sglang-cached", description="A caching HTTP proxy in front of an SGLang server."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--cache-path",
        default=DEFAULT_CACHE_PATH,
        help="SQLite cache directory (or database file); default ~/.sglang_cache",
    )
    common.add_argument(
        "--store", default="sqlite", help="sqlite (default), memory, or redis://host:port/db"
    )
    common.add_argument(
        "--redis-prefix",
        default=DEFAULT_REDIS_PREFIX,
        help=f"namespace of the cache's Redis keys (default {DEFAULT_REDIS_PREFIX!r})",
    )

    start = sub.add_parser("start", parents=[common], help="run the proxy")
    start.add_argument("--sglang-url", required=True, help="the SGLang server to cache")
    start.add_argument("--host", default="127.0.0.1", help="listen address (default loopback)")
    start.add_argument("--port", type=_port, default=30001, help="listen port (default 30001)")
    start.add_argument("--ttl", type=_positive(float), default=None, help="entry lifetime (s)")
    start.add_argument("--max-entries", type=_positive(int), default=None, help="LRU bound")
    start.add_argument(
        "--api-key",
        action="append",
        default=None,
        help="clients must send it as Bearer (repeat it to accept several keys)",
    )
    start.add_argument("--upstream-api-key", default=None, help="sent to SGLang")
    start.add_argument(
        "--admin-key",
        default=None,
        help="required for POST /cache/clear and SGLang's admin routes (/flush_cache, ...)",
    )
    start.add_argument(
        "--isolate-by-key",
        action="store_true",
        help="a separate cache per bearer token (tenants never share answers)",
    )
    start.add_argument(
        "--max-body-bytes", type=_positive(int), default=16 * 1024 * 1024, help="413 above"
    )
    start.add_argument("--max-n", type=_positive(int), default=128, help="largest n accepted")
    start.add_argument("--namespace", default=None, help="model identity in keys (default: ask)")
    start.add_argument(
        "--timeout", type=_positive(float), default=600.0, help="upstream timeout (s), then 504"
    )
    start.add_argument(
        "--max-retries",
        type=int,
        choices=range(11),
        metavar="{0..10}",
        default=2,
        help="upstream retries on connection errors, timeouts and 502/503/504 (default 2)",
    )
    start.add_argument(
        "--hit-memo-mb",
        type=float,
        default=32.0,
        help="memory for pre-encoded hits of repeated requests, in MiB (0 disables; default 32)",
    )
    start.add_argument(
        "--body-timeout",
        type=_positive(float),
        default=60.0,
        help="seconds a client has to send its request body, then 408 (default 60)",
    )
    start.add_argument("--quiet", action="store_true", help="no per-request log lines")

    sub.add_parser("stats", parents=[common], help="print what the cache holds")
    sub.add_parser("clear", parents=[common], help="delete every cached entry")
    export = sub.add_parser("export", parents=[common], help="write the cache as JSON lines")
    export.add_argument("--format", choices=["jsonl"], default="jsonl")
    export.add_argument("file", help="output file ('-' for stdout)")
    imp = sub.add_parser(
        "import", parents=[common], help="add JSON lines (key, request, completions) to the cache"
    )
    imp.add_argument("file", help="input file ('-' for stdin)")
    return parser


def _configure_logging(quiet: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("sglang_client")
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # store failures and upstream trouble, even with --quiet
    if not quiet:
        logging.getLogger("sglang_client.proxy").setLevel(logging.INFO)


def _start(args: argparse.Namespace) -> int:
    from sglang_client import SGLangClient
    from sglang_client._extras import MissingExtraError, require
    from sglang_client.cache import CachedClient
    from sglang_client.server.app import ProxyConfig, create_app

    try:
        uvicorn = require("uvicorn", "sglang-cached start")
    except MissingExtraError as exc:
        print(f"sglang-cached: {exc}", file=sys.stderr)
        return 2
    _configure_logging(args.quiet)
    args.sglang_url = _check_sglang_url(args.sglang_url)
    if args.store == "sqlite":
        _check_cache_path(args.cache_path)
    sock = _listen(args.host, args.port)
    store = build_store(args.store, args.cache_path, args.ttl, args.max_entries, args.redis_prefix)
    client = SGLangClient(
        args.sglang_url,
        api_key=args.upstream_api_key,
        timeout=args.timeout,
        max_retries=args.max_retries,
    )
    cached = CachedClient(client, store, namespace=args.namespace)
    config = ProxyConfig(
        upstream_url=args.sglang_url,
        api_key=tuple(args.api_key) if args.api_key else None,
        upstream_api_key=args.upstream_api_key,
        admin_key=args.admin_key,
        isolate_by_key=args.isolate_by_key,
        max_body_bytes=args.max_body_bytes,
        max_n=args.max_n,
        quiet=args.quiet,
        upstream_timeout=args.timeout,
        hit_memo_bytes=max(0, int(args.hit_memo_mb * 1024 * 1024)),
        body_timeout=args.body_timeout,
        freeze_gc=True,
    )
    app = create_app(cached, config)
    print(
        f"sglang-cached: http://{args.host}:{args.port} -> {args.sglang_url} "
        f"(store: {store.kind} at {store.location})",
        flush=True,
    )
    # uvicorn shuts down gracefully on SIGTERM/SIGINT (stop accepting, finish in-flight
    # requests, lifespan shutdown flushes the store) and then re-raises the signal; a no-op
    # handler makes that a clean exit 0 instead of a death by signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.Server(uvicorn.Config(app, **UVICORN_OPTIONS)).run(sockets=[sock])
    return 0


async def _offline(args: argparse.Namespace) -> int:
    store = build_store(args.store, args.cache_path, redis_prefix=args.redis_prefix)
    try:
        if args.command == "stats":
            counts = await store.count()
            stats = {
                "store": store.kind,
                "cache_file": store.location,
                "num_keys": counts.num_keys,
                "total_responses": counts.total_responses,
            }
            print(json.dumps(stats, indent=2))
            return 0
        if args.command == "clear":
            print(f"cleared {await store.clear()} entries from {store.location}")
            return 0
        if args.command == "export":
            return await _export(store, args.file)
        return await _import(store, args.file)
    finally:
        await store.aclose()


async def _export(store: CacheStore, path: str) -> int:
    out: TextIO = sys.stdout if path == "-" else open(path, "w", encoding="utf-8")  # noqa: SIM115, ASYNC230 (offline CLI)
    written = offset = 0
    try:
        while True:
            page = await store.iter_entries(offset=offset, limit=_PAGE)
            for entry in page:
                line = {
                    "key": entry.key,
                    "request": entry.request,
                    "completions": entry.completions,
                }
                out.write(json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n")
                written += 1
            if len(page) < _PAGE:
                break
            offset += len(page)
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"exported {written} entries", file=sys.stderr)
    return 0


def _record(line: str) -> tuple[str, dict[str, Any] | None, list[dict[str, Any]]]:
    """One import line, checked: ``(key, request, completions)``."""
    record = json.loads(line)
    if not isinstance(record, dict):
        raise ValueError("each line must be a JSON object")
    missing = [name for name in ("key", "completions") if name not in record]
    if missing:
        raise ValueError(f"missing field(s): {', '.join(missing)}")
    key, request, completions = record["key"], record.get("request"), record["completions"]
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError("key must be a cache key (64 lowercase hex digits)")
    if not isinstance(completions, list) or not all(isinstance(c, dict) for c in completions):
        raise ValueError("completions must be a list of objects")
    if request is not None and not isinstance(request, dict):
        raise ValueError("request must be an object or null")
    return key, request, completions


async def _import(store: CacheStore, path: str) -> int:
    """Add each line's entry; keys already cached are left as they are, so a re-run is harmless."""
    source: TextIO = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115, ASYNC230 (offline CLI)
    imported = skipped = 0
    try:
        await store.count()  # opens (creates) the cache, so even an empty file leaves one
        for number, line in enumerate(source, start=1):
            if not line.strip():
                continue
            try:
                key, request, completions = _record(line)
            except ValueError as exc:
                print(f"sglang-cached: {path}:{number}: {exc}; stopped", file=sys.stderr)
                print(f"imported {imported} entries before that line", file=sys.stderr)
                return 2
            if not completions or await store.get(key, limit=0) is not None:
                skipped += 1
                continue
            await store.append(key, completions, request=request)
            imported += 1
            if imported % 1000 == 0:
                await store.flush()  # keep the write-behind queue short on big files
    finally:
        if source is not sys.stdin:
            source.close()
    print(
        f"imported {imported} entries, skipped {skipped} (already cached or empty)", file=sys.stderr
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sglang-cached`` console script."""
    args = _parser().parse_args(argv)
    args.cache_path = os.path.expanduser(args.cache_path)
    if args.command == "start":
        return _start(args)
    from sglang_client.cache import StoreError

    try:
        if args.store == "sqlite":
            database = database_path(args.cache_path)
            if args.command == "import":
                _check_cache_path(args.cache_path)
            elif not database.exists():
                print(f"sglang-cached: no cache at {args.cache_path}", file=sys.stderr)
                return 1
        return asyncio.run(_offline(args))
    except (StoreError, OSError, UnicodeDecodeError) as exc:
        print(f"sglang-cached: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
