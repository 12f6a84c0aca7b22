"""The proxy and the cache under bad input, full disks, read-only media and loose files.

Each test reproduces one way a shared deployment failed (issue: hardening), against the fake
SGLang over real loopback HTTP.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from sglang_client import SGLangClient
from sglang_client.cache import CachedClient, MemoryStore, SQLiteStore, StoreError
from sglang_client.server.cli import main as cli_main
from sglang_client.testing import FakeSGLangServer

from ._mounts import remount_read_only, tmpfs
from ._serve import proxy_app, serve

pytestmark = pytest.mark.anyio

GREEDY = {"temperature": 0, "max_new_tokens": 4}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeSGLangServer]:
    with FakeSGLangServer(seed=11) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(fake: FakeSGLangServer) -> Iterator[str]:
    with serve(proxy_app(fake.url)) as url:
        yield url


def events(response: httpx.Response) -> list[dict[str, Any]]:
    out = []
    for block in response.text.split("\n\n"):
        if block.startswith("data: ") and block != "data: [DONE]":
            out.append(json.loads(block[len("data: ") :]))
    assert response.text.rstrip().endswith("data: [DONE]")
    return out


# ------------------------------------------------------------------ greedy n > 1


ROUTES = [
    ("/generate", lambda n, s: {"text": f"greedy {s}", "sampling_params": {**GREEDY, "n": n}}),
    (
        "/v1/chat/completions",
        lambda n, s: {
            "messages": [{"role": "user", "content": f"greedy {s}"}],
            "temperature": 0,
            "max_tokens": 4,
            "n": n,
        },
    ),
    (
        "/v1/completions",
        lambda n, s: {"prompt": f"greedy {s}", "temperature": 0, "max_tokens": 4, "n": n},
    ),
]


def _choices(path: str, response: httpx.Response, stream: bool) -> dict[int, str]:
    """index -> the whole text of that choice."""
    texts: dict[int, str] = {}
    if not stream:
        body = response.json()
        if path == "/generate":
            return {i: c["text"] for i, c in enumerate(body)}
        for c in body["choices"]:
            texts[c["index"]] = c["message"]["content"] if "message" in c else c["text"]
        return texts
    for event in events(response):
        if path == "/generate":
            texts[event.get("index", 0)] = event["text"]  # cumulative
            continue
        for c in event.get("choices") or []:
            piece = (c.get("delta") or {}).get("content") if "delta" in c else c.get("text")
            texts[c["index"]] = texts.get(c["index"], "") + (piece or "")
    return texts


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("path", "make"), ROUTES, ids=[r[0] for r in ROUTES])
def test_greedy_n_returns_n_choices_miss_and_hit(
    proxy: str, fake: FakeSGLangServer, path: str, make: Any, stream: bool
) -> None:
    body = {**make(3, f"{path}-{stream}"), "stream": stream}
    before = fake.app.stats.completions_generated
    miss = httpx.post(proxy + path, json=body, timeout=30)
    hit = httpx.post(proxy + path, json=body, timeout=30)
    assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("MISS", "HIT")
    for response in (miss, hit):
        texts = _choices(path, response, stream)
        assert sorted(texts) == [0, 1, 2], texts
        assert len(set(texts.values())) == 1  # the one greedy answer, three times
    assert fake.app.stats.completions_generated == before + 1
    if stream and path != "/generate":  # each choice with its own id, as SGLang sends
        ids: dict[int, set[str]] = {}
        for event in events(miss):
            for c in event.get("choices") or []:
                ids.setdefault(c["index"], set()).add(event["id"])
        assert all(len(v) == 1 for v in ids.values()) and len(set().union(*ids.values())) == 3


def test_greedy_n_stream_usage_counts_every_choice(proxy: str) -> None:
    body = {
        "prompt": "usage greedy",
        "temperature": 0,
        "max_tokens": 4,
        "n": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    one = {**body, "n": 1, "prompt": "usage greedy one"}
    usage = [e["usage"] for e in events(httpx.post(proxy + "/v1/completions", json=body))]
    single = [e["usage"] for e in events(httpx.post(proxy + "/v1/completions", json=one))]
    total, alone = [u for u in usage if u][-1], [u for u in single if u][-1]
    assert total["completion_tokens"] == 3 * alone["completion_tokens"]
    assert total["total_tokens"] == total["prompt_tokens"] + total["completion_tokens"]


# ------------------------------------------------------------------ bad input is a 4xx


LONE = [
    ("/generate", b'{"text": "\\ud800", "sampling_params": {"max_new_tokens": 2}}'),
    ("/generate", b'{"text": "x\\udfff"}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\ud800"}]}'),
    ("/v1/completions", b'{"prompt": "\\udbff\\u0041", "max_tokens": 2}'),
    ("/generate", b'{"text": "ok", "sampling_params": {"stop": ["\\ud800"]}}'),
    ("/generate", b'{"text": "ok", "\\ud800": 1}'),
]


@pytest.mark.parametrize(("path", "raw"), LONE)
@pytest.mark.parametrize("target", ["proxy", "fake"])
def test_lone_surrogates_are_400(
    proxy: str, fake: FakeSGLangServer, path: str, raw: bytes, target: str
) -> None:
    url = proxy if target == "proxy" else fake.url
    before = fake.app.stats.completions_generated
    response = httpx.post(url + path, content=raw, headers=JSON, timeout=30)
    assert response.status_code == 400, response.text
    assert "surrogate" in response.text
    assert fake.app.stats.completions_generated == before


def test_a_valid_surrogate_pair_is_fine(proxy: str) -> None:
    raw = b'{"text": "smile \\ud83d\\ude00", "sampling_params": {"max_new_tokens": 2}}'
    assert httpx.post(proxy + "/generate", content=raw, headers=JSON).status_code == 200
    escaped = b'{"text": "not a surrogate: \\\\ud800", "sampling_params": {"max_new_tokens": 2}}'
    assert httpx.post(proxy + "/generate", content=escaped, headers=JSON).status_code == 200


@pytest.mark.parametrize("depth", [2000, 100_000])
@pytest.mark.parametrize("target", ["proxy", "fake"])
def test_deep_nesting_is_400(proxy: str, fake: FakeSGLangServer, depth: int, target: str) -> None:
    url = proxy if target == "proxy" else fake.url
    for raw in (
        b'{"text": "x", "extra": ' + b"[" * depth + b"]" * depth + b"}",
        b"[" * depth,
        b'{"a":' * depth,
    ):
        response = httpx.post(url + "/generate", content=raw, headers=JSON, timeout=30)
        assert response.status_code == 400, response.text[:300]
        assert "Traceback" not in response.text and "RecursionError" not in response.text


def test_invalid_utf8_is_400(proxy: str, fake: FakeSGLangServer) -> None:
    for url in (proxy, fake.url):
        raw = b'{"text": "\xff\xfe bad"}'
        response = httpx.post(url + "/generate", content=raw, headers=JSON, timeout=30)
        assert response.status_code == 400


@pytest.mark.parametrize(
    "query",
    [
        "offset=99999999999999999999",
        "offset=-1",
        "offset=1e3",
        "limit=0",
        "limit=99999999999999999999999",
        "limit=%00",
        "offset=%ff%fe",
    ],
)
def test_cache_info_query_out_of_range_is_400(proxy: str, query: str) -> None:
    response = httpx.get(f"{proxy}/cache/info?{query}", timeout=30)
    assert response.status_code == 400, response.text


async def test_sqlite_cache_info_at_the_largest_offset(tmp_path: Path) -> None:
    with FakeSGLangServer() as fake, serve(proxy_app(fake.url, store=SQLiteStore(tmp_path))) as url:
        async with httpx.AsyncClient() as http:
            info = await http.get(f"{url}/cache/info?offset={(1 << 62)}")
    assert info.status_code == 200, info.text
    assert info.json()["keys"] == []


def test_upstream_errors_are_never_stored(proxy: str, fake: FakeSGLangServer) -> None:
    before = httpx.get(proxy + "/cache/stats").json()["num_keys"]
    bad = {"text": "x", "sampling_params": {"max_new_tokens": -5}}  # SGLang's own 400
    for _ in range(2):
        assert httpx.post(proxy + "/generate", json=bad, timeout=30).status_code == 400
    fake.app.faults.fail_next(1, "500")
    body = {"text": "five hundred", "sampling_params": {"max_new_tokens": 2}}
    assert httpx.post(proxy + "/generate", json=body, timeout=30).status_code == 500
    assert httpx.get(proxy + "/cache/stats").json()["num_keys"] == before
    again = httpx.post(proxy + "/generate", json=body, timeout=30)
    assert (again.status_code, again.headers["x-cache"]) == (200, "MISS")


# ------------------------------------------------------------------ files


@pytest.mark.parametrize("umask", [0o000, 0o022])
async def test_cache_files_are_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        store = SQLiteStore(tmp_path / "fresh" / "deeper" / "c.db")
        await store.append("k" * 64, [{"text": "x"}], request={"text": "secret"})
        await store.flush()
        modes = {
            p.name: stat.S_IMODE(p.stat().st_mode)
            for p in [tmp_path / "fresh", tmp_path / "fresh" / "deeper"]
            + sorted((tmp_path / "fresh" / "deeper").iterdir())
        }
        await store.aclose()
    finally:
        os.umask(old)
    assert modes["fresh"] == modes["deeper"] == 0o700
    assert modes["c.db"] == 0o600
    assert {modes.get("c.db-wal", 0o600), modes.get("c.db-shm", 0o600)} == {0o600}
    assert "c.db-wal" in modes  # the WAL existed while open, with the database's mode


async def test_a_loose_existing_cache_file_is_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "loose.db"
    store = SQLiteStore(path)
    await store.append("k" * 64, [{"text": "x"}])
    await store.aclose()
    path.chmod(0o644)
    caplog.set_level(logging.WARNING, logger="sglang_client.cache")
    for _ in range(2):
        again = SQLiteStore(path)
        assert (await again.get("k" * 64)) is not None
        await again.aclose()
    warnings = [r for r in caplog.records if "accessible to other users" in r.getMessage()]
    assert len(warnings) == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # left alone


# ------------------------------------------------------------------ --cache-path


def test_cache_path_names(tmp_path: Path) -> None:
    from sglang_client.cache.stores._sqlite_schema import database_path

    assert database_path(tmp_path / "x.db") == tmp_path / "x.db"
    assert database_path(tmp_path / "x.sqlite3") == tmp_path / "x.sqlite3"
    assert database_path(tmp_path / "cachedir") == tmp_path / "cachedir" / "cache.db"
    assert database_path(tmp_path) == tmp_path / "cache.db"
    (tmp_path / "plain").write_bytes(b"")
    assert database_path(tmp_path / "plain") == tmp_path / "plain"


async def test_an_absent_db_path_becomes_a_file(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "new.db")
    await store.append("k" * 64, [{"text": "x"}])
    await store.aclose()
    assert (tmp_path / "new.db").is_file()


@pytest.mark.parametrize(
    ("name", "content"),
    [("notes.txt", b"my notes, not a cache\n"), ("cache.db", b"x" * 5000), ("empty.txt", b"")],
)
def test_cli_refuses_a_file_that_is_not_a_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: bytes
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    args = ["start", "--sglang-url", "http://127.0.0.1:9", "--cache-path", str(path)]
    with pytest.raises(SystemExit) as exited:
        cli_main(args)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err
    assert path.read_bytes() == content  # never overwritten


def test_cli_accepts_an_empty_db_file_and_a_directory(tmp_path: Path) -> None:
    from sglang_client.server.cli import _check_cache_path

    (tmp_path / "empty.db").write_bytes(b"")
    _check_cache_path(str(tmp_path / "empty.db"))
    _check_cache_path(str(tmp_path / "dir-to-create"))
    assert (tmp_path / "dir-to-create").is_dir()
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("a file where a directory would go")
    with pytest.raises(SystemExit):
        _check_cache_path(str(blocker / "sub"))


# ------------------------------------------------------------------ read-only media


async def test_read_only_media_serves_hits_and_stores_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with tmpfs(tmp_path / "medium", "4m") as medium:
        store = SQLiteStore(medium / "cache.db")
        await store.append("a" * 64, [{"text": "stored"}], request={"text": "p"})
        await store.aclose()  # a clean close checkpoints the WAL into the file
        remount_read_only(medium)
        caplog.set_level(logging.WARNING, logger="sglang_client.cache")
        ro = SQLiteStore(medium / "cache.db", max_entries=10, ttl=3600)
        entry = await ro.get("a" * 64)
        assert entry is not None and entry.completions == [{"text": "stored"}]
        assert ro.read_only
        assert await ro.append("b" * 64, [{"text": "new"}]) == 0
        assert await ro.get("b" * 64) is None
        assert (await ro.count()).num_keys == 1
        assert [e.key for e in await ro.iter_entries()] == ["a" * 64]
        with pytest.raises(StoreError, match="read-only"):
            await ro.clear()
        await ro.aclose()
    said = [r for r in caplog.records if "read-only" in r.getMessage()]
    assert len(said) == 1


def test_read_only_cache_behind_the_proxy(tmp_path: Path, fake: FakeSGLangServer) -> None:
    body = {"text": "read only hit", "sampling_params": {"max_new_tokens": 3, "temperature": 0.5}}
    with tmpfs(tmp_path / "medium", "4m") as medium:
        with serve(proxy_app(fake.url, store=SQLiteStore(medium))) as url:
            first = httpx.post(url + "/generate", json=body, timeout=30)
        remount_read_only(medium)
        with serve(proxy_app(fake.url, store=SQLiteStore(medium))) as url:
            hit = httpx.post(url + "/generate", json=body, timeout=30)
            other = {**body, "text": "not there"}
            misses = [httpx.post(url + "/generate", json=other, timeout=30) for _ in range(2)]
            stats = httpx.get(url + "/cache/stats").json()
    assert (hit.headers["x-cache"], hit.content) == ("HIT", first.content)
    assert [m.headers["x-cache"] for m in misses] == ["MISS", "MISS"]
    assert stats["store_errors"] == 0 and not stats["store_failing"]


# ------------------------------------------------------------------ store failures


class FlakyStore(MemoryStore):
    """Fails writes on demand; ``committed`` plays a write-behind store's last commit."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False
        self.committed = True

    @property
    def healthy(self) -> bool:  # type: ignore[override]
        return self.committed

    async def append(self, key: str, completions: Any, *, request: Any = None) -> int:
        if self.failing:
            raise StoreError("disk full")
        return await super().append(key, completions, request=request)


async def test_store_failure_is_one_warning_then_one_recovery(
    fake: FakeSGLangServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = FlakyStore()
    caplog.set_level(logging.INFO, logger="sglang_client.cache")
    async with SGLangClient(fake.url) as client:
        cached = CachedClient(client, store)
        store.failing, store.committed = True, False
        for i in range(5):
            await cached.generate(f"fail {i}", sampling_params={"max_new_tokens": 2})
        store.failing = False  # writes are accepted again, but the last commit failed
        await cached.generate("accepted, not committed", sampling_params={"max_new_tokens": 2})
        assert cached.store_failing
        store.committed = True
        for i in range(3):
            await cached.generate(f"works {i}", sampling_params={"max_new_tokens": 2})
        stats = await cached.stats()
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if "failed, serving without it" in m]) == 1
    assert len([m for m in lines if "recovered" in m]) == 1
    assert stats.store_errors == 5
    assert not cached.store_failing


async def test_full_disk_logs_once_until_it_really_recovers(
    tmp_path: Path, fake: FakeSGLangServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sglang_client.cache")
    with tmpfs(tmp_path / "small", "256k") as small:
        store = SQLiteStore(small / "cache.db", flush_interval=0.005)
        async with SGLangClient(fake.url) as client:
            cached = CachedClient(client, store)
            await cached.generate("warm up", sampling_params={"max_new_tokens": 2})
            await store.flush()
            filler = small / "filler"
            fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
            try:  # fill the disk, as another program would
                while os.write(fd, b"\0" * 4096):
                    pass
            except OSError:
                pass
            finally:
                os.close(fd)
            big = "long prompt " * 400
            for i in range(30):
                await cached.generate(f"{big} {i}", sampling_params={"max_new_tokens": 2})
                await anyio.sleep(0.01)  # let batches commit (and fail)
            failing = cached.store_failing
            filler.unlink()
            for i in range(10):
                await cached.generate(f"after {i}", sampling_params={"max_new_tokens": 2})
                await anyio.sleep(0.02)
            metrics_errors = cached.counters.store_errors
        with contextlib.suppress(StoreError):  # the last batch may still find the disk full
            await store.aclose()
    lines = [r.getMessage() for r in caplog.records]
    assert failing
    assert len([m for m in lines if "failed, serving without it" in m]) == 1, lines
    assert len([m for m in lines if "recovered" in m]) == 1, lines
    assert metrics_errors >= 1
