"""The cache stores: shared behaviour over all three, then what is specific to each.

Redis cases need a server at ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``). Without one
they are skipped, with the reason, unless ``REQUIRE_REDIS=1`` (set by ``.ci/run``), which turns
the skip into a failure. Each test uses its own key prefix and deletes only that.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import os
import random
import socket
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from sglang_client.cache.stores import (
    CacheStore,
    LockTimeoutError,
    MemoryStore,
    RedisStore,
    SQLiteStore,
    StoreCounts,
    StoreError,
)
from sglang_client.cache.stores.redis import mask_url
from sglang_client.errors import SGLangError

pytestmark = pytest.mark.anyio

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
Store = MemoryStore | SQLiteStore | RedisStore
Maker = Callable[..., Any]


@functools.cache
def _redis_problem() -> str | None:
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1.0, socket_timeout=1.0)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def require_redis() -> None:
    problem = _redis_problem()
    if problem is None:
        return
    reason = (
        f"no Redis server answers at {mask_url(REDIS_URL)} ({problem}); start redis-server or "
        "set REDIS_URL (REQUIRE_REDIS=1 makes this a failure instead of a skip)"
    )
    if os.environ.get("REQUIRE_REDIS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _delete_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        names = list(client.scan_iter(match=prefix + "*", count=1000))
        if names:
            client.delete(*names)
    finally:
        client.close()


@pytest.fixture
async def make_store(
    request: pytest.FixtureRequest, tmp_path: Path, anyio_backend: str
) -> AsyncIterator[Maker]:
    """A factory for stores of the test's kind; every call with the same test shares data."""
    kind = request.param
    prefix = f"sglang-client-test:{uuid.uuid4()}:"
    if kind == "redis":
        require_redis()
    made: list[Store] = []

    def make(**options: Any) -> Store:
        store: Store
        if kind == "memory":
            store = MemoryStore(**options)
        elif kind == "sqlite":
            store = SQLiteStore(tmp_path / "cache.db", **options)
        else:
            store = RedisStore(REDIS_URL, prefix=options.pop("prefix", prefix), **options)
        made.append(store)
        return store

    yield make
    for store in made:
        with contextlib.suppress(StoreError):
            await store.aclose()
    if kind == "redis":
        _delete_prefix(prefix)


ALL = pytest.mark.parametrize("make_store", ["memory", "sqlite", "redis"], indirect=True)
PERSISTENT = pytest.mark.parametrize("make_store", ["sqlite", "redis"], indirect=True)
BOUNDED = pytest.mark.parametrize("make_store", ["memory", "sqlite"], indirect=True)


def completion(i: int, **extra: Any) -> dict[str, Any]:
    return {"text": f"completion {i} \u00e9\u4e2d", "meta_info": {"id": f"id-{i}"}, **extra}


# -- shared behaviour ----------------------------------------------------------------------


@ALL
async def test_store_meets_the_protocol(make_store: Maker) -> None:
    store = make_store()
    assert isinstance(store, CacheStore)
    assert store.kind in ("memory", "sqlite", "redis")
    assert store.location


@ALL
async def test_append_creates_then_extends_and_get_round_trips(make_store: Maker) -> None:
    store = make_store()
    assert await store.get("k") is None
    request = {"text": "The capital of France is", "sampling_params": {"temperature": 0.7}}
    assert await store.append("k", [completion(0)], request=request) == 1
    assert await store.append("k", [completion(1), completion(2)]) == 3
    entry = await store.get("k")
    assert entry is not None
    assert entry.key == "k"
    assert entry.request == request
    assert entry.completions == [completion(0), completion(1), completion(2)]
    assert entry.created_at <= entry.updated_at


@ALL
async def test_first_request_is_kept_and_a_missing_one_is_filled(make_store: Maker) -> None:
    store = make_store()
    await store.append("a", [completion(0)], request={"v": 1})
    await store.append("a", [completion(1)], request={"v": 2})
    await store.append("b", [completion(0)])
    await store.append("b", [completion(1)], request={"v": 3})
    a, b = await store.get("a"), await store.get("b")
    assert a is not None and a.request == {"v": 1}
    assert b is not None and b.request == {"v": 3}


@ALL
async def test_get_limit_returns_the_oldest_completions(make_store: Maker) -> None:
    store = make_store()
    await store.append("k", [completion(i) for i in range(5)])
    for limit, expected in ((0, 0), (2, 2), (5, 5), (9, 5), (None, 5)):
        entry = await store.get("k", limit=limit)
        assert entry is not None
        assert entry.completions == [completion(i) for i in range(expected)]
    with pytest.raises(ValueError, match="limit"):
        await store.get("k", limit=-1)


@ALL
async def test_an_empty_append_creates_an_entry(make_store: Maker) -> None:
    store = make_store()
    assert await store.append("k", [], request={"p": 1}) == 0
    entry = await store.get("k")
    assert entry is not None and entry.completions == [] and entry.request == {"p": 1}
    assert await store.append("k", [completion(0)]) == 1


@ALL
async def test_values_read_are_fresh_copies(make_store: Maker) -> None:
    store = make_store()
    original = completion(0)
    await store.append("k", [original], request={"p": 1})
    original["text"] = "changed by the caller after append"
    first = await store.get("k")
    assert first is not None
    first.completions[0]["text"] = "changed by the caller after get"
    first.completions.append(completion(9))
    second = await store.get("k")
    assert second is not None and second.completions == [completion(0)]


@ALL
async def test_delete(make_store: Maker) -> None:
    store = make_store()
    await store.append("k", [completion(0)])
    assert await store.delete("k") is True
    assert await store.get("k") is None
    assert await store.delete("k") is False
    assert await store.append("k", [completion(1)]) == 1  # a fresh entry after a delete


@ALL
async def test_count_and_clear(make_store: Maker) -> None:
    store = make_store()
    assert await store.count() == StoreCounts(0, 0)
    for i in range(4):
        await store.append(f"k{i}", [completion(j) for j in range(i)])
    assert await store.count() == (4, 0 + 1 + 2 + 3)
    assert await store.clear() == 4
    assert await store.count() == (0, 0)
    assert await store.get("k3") is None
    assert await store.append("k3", [completion(0)]) == 1


@ALL
async def test_iter_entries_pages_in_creation_order(make_store: Maker) -> None:
    store = make_store()
    for i in range(5):
        await store.append(f"k{i}", [completion(i)], request={"i": i})
        await anyio.sleep(0.002)  # distinct creation times even on a coarse clock
    await store.append("k0", [completion(10)])  # updating does not move an entry
    await store.get("k1")  # nor does reading it
    page1 = await store.iter_entries(offset=0, limit=3)
    page2 = await store.iter_entries(offset=3, limit=3)
    assert [e.key for e in page1] == ["k0", "k1", "k2"]
    assert [e.key for e in page2] == ["k3", "k4"]
    assert page1[0].completions == [completion(0), completion(10)]
    assert page1[1].request == {"i": 1}
    assert await store.iter_entries(offset=5) == []
    with pytest.raises(ValueError):
        await store.iter_entries(offset=-1)


@ALL
async def test_ttl_counts_from_the_last_write(make_store: Maker) -> None:
    store = make_store(ttl=0.6)
    await store.append("k", [completion(0)])
    assert await store.get("k") is not None
    await anyio.sleep(0.35)
    assert await store.append("k", [completion(1)]) == 2
    await anyio.sleep(0.35)
    entry = await store.get("k")  # older than ttl, but written 0.35 s ago
    assert entry is not None and len(entry.completions) == 2
    await anyio.sleep(0.7)
    assert await store.get("k") is None
    assert await store.count() == (0, 0)
    assert await store.append("k", [completion(2)]) == 1  # expired: starts afresh


@ALL
async def test_concurrent_appends_to_one_key_lose_nothing(make_store: Maker) -> None:
    store = make_store()
    tasks, per_append = 40, 3
    totals: list[int] = []

    async def worker(t: int) -> None:
        await anyio.lowlevel.checkpoint()
        totals.append(await store.append("k", [completion(i, task=t) for i in range(per_append)]))

    async with anyio.create_task_group() as tg:
        for t in range(tasks):
            tg.start_soon(worker, t)
    assert sorted(totals) == [per_append * (i + 1) for i in range(tasks)]
    entry = await store.get("k")
    assert entry is not None and len(entry.completions) == tasks * per_append
    # Each append's completions stay together and in order.
    for start in range(0, len(entry.completions), per_append):
        chunk = entry.completions[start : start + per_append]
        assert [c["meta_info"]["id"] for c in chunk] == [f"id-{i}" for i in range(per_append)]
        assert len({c["task"] for c in chunk}) == 1
    assert await store.count() == (1, tasks * per_append)


@ALL
async def test_concurrent_appends_to_many_keys(make_store: Maker) -> None:
    store = make_store()

    async def worker(t: int) -> None:
        for i in range(5):
            await store.append(f"k{t % 7}", [completion(i, task=t)])

    async with anyio.create_task_group() as tg:
        for t in range(35):
            tg.start_soon(worker, t)
    assert await store.count() == (7, 35 * 5)
    for k in range(7):
        entry = await store.get(f"k{k}")
        assert entry is not None and len(entry.completions) == 25


@ALL
async def test_lock_excludes_and_times_out(make_store: Maker) -> None:
    store = make_store()
    inside = 0
    entered = 0

    async def worker() -> None:
        nonlocal inside, entered
        async with store.lock("k", timeout=10.0):
            inside += 1
            entered += 1
            assert inside == 1
            await anyio.sleep(0.001)
            inside -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(15):
            tg.start_soon(worker)
    assert entered == 15
    async with store.lock("k"):
        with pytest.raises(LockTimeoutError):
            async with store.lock("k", timeout=0.05):
                pass
        async with store.lock("other", timeout=0.05):  # other keys are independent
            pass
    async with store.lock("k", timeout=0.5):  # released on exit
        pass


@ALL
async def test_lock_is_released_when_the_body_raises(make_store: Maker) -> None:
    store = make_store()
    with pytest.raises(RuntimeError):
        async with store.lock("k"):
            raise RuntimeError("boom")
    async with store.lock("k", timeout=0.5):
        pass


@ALL
async def test_bad_input_raises_typed_errors(make_store: Maker) -> None:
    store = make_store()
    with pytest.raises(ValueError, match="key"):
        await store.get("")
    with pytest.raises(StoreError, match="JSON"):
        await store.append("k", [{"x": object()}])
    with pytest.raises(StoreError, match="JSON"):
        await store.append("k", [{"x": math.nan}])
    with pytest.raises(StoreError, match="JSON object"):
        await store.append("k", ["not a dict"])
    with pytest.raises(StoreError):
        await store.append("k", {"text": "a dict, not a list"})
    assert await store.get("k") is None  # nothing half-written


@ALL
async def test_a_closed_store_raises_store_error(make_store: Maker) -> None:
    store = make_store()
    await store.append("k", [completion(0)])
    await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(StoreError):
        await store.get("k")
    with pytest.raises(StoreError):
        await store.append("k", [completion(1)])
    assert issubclass(StoreError, SGLangError)


@ALL
@pytest.mark.parametrize("seed", [1, 2])
async def test_random_operations_match_a_dict_model(make_store: Maker, seed: int) -> None:
    """A few hundred random operations agree with a plain dict, across flushes and reopens."""
    rng = random.Random(seed)
    options: dict[str, Any] = {}
    store = make_store()
    if isinstance(store, SQLiteStore):
        await store.aclose()  # small read cache and varied windows stress the overlay
        options = {"read_cache_size": seed, "flush_interval": (0.0005, 5.0)[seed % 2]}
        store = make_store(**options)
    model: dict[str, list[dict[str, Any]]] = {}
    for step in range(300):
        key = f"k{rng.randrange(6)}"
        roll = rng.random()
        if roll < 0.45:
            items = [completion(step * 10 + j) for j in range(rng.randrange(3))]
            model.setdefault(key, []).extend(items)
            assert await store.append(key, items, request={"k": key}) == len(model[key])
        elif roll < 0.8:
            limit = rng.choice([None, 0, 1, 2])
            entry = await store.get(key, limit=limit)
            if key not in model:
                assert entry is None, step
            else:
                assert entry is not None, step
                assert entry.completions == model[key][:limit], step
        elif roll < 0.9:
            assert await store.delete(key) is (key in model), step
            model.pop(key, None)
        elif roll < 0.93:
            assert await store.clear() == len(model), step
            model.clear()
        elif roll < 0.97:
            await store.flush()
            assert store.pending_writes == 0
        elif not isinstance(store, MemoryStore):
            await store.aclose()
            store = make_store(**options)
    assert await store.count() == (len(model), sum(map(len, model.values())))
    listed = await store.iter_entries(limit=100)
    assert {e.key: e.completions for e in listed} == model


@PERSISTENT
async def test_entries_persist_across_instances(make_store: Maker) -> None:
    first = make_store()
    await first.append("k", [completion(0), completion(1)], request={"p": 1})
    await first.aclose()
    second = make_store()
    entry = await second.get("k")
    assert entry is not None
    assert entry.request == {"p": 1} and entry.completions == [completion(0), completion(1)]
    assert await second.append("k", [completion(2)]) == 3
    assert await second.count() == (1, 3)


@BOUNDED
async def test_max_entries_evicts_the_least_recently_used(make_store: Maker) -> None:
    store = make_store(max_entries=3)
    for key in ("a", "b", "c"):
        await store.append(key, [completion(0)])
        await anyio.sleep(0.002)
    await store.flush()
    assert await store.get("a") is not None  # a is now more recent than b
    await anyio.sleep(0.002)
    await store.append("d", [completion(0)])
    await store.flush()
    assert await store.get("b") is None
    for key in ("a", "c", "d"):
        assert await store.get(key) is not None, key
    assert await store.count() == (3, 3)


# -- MemoryStore -----------------------------------------------------------------------------


async def test_memory_max_bytes_bounds_the_json_text() -> None:
    store = MemoryStore(max_bytes=200)
    one = {"text": "x" * 60}  # 73 bytes of JSON text
    await store.append("a", [one])
    await store.append("b", [one])
    assert (await store.count()).num_keys == 2
    await store.append("c", [one])  # 219 bytes > 200: the least recently used goes
    assert await store.get("a") is None
    assert await store.get("b") is not None and await store.get("c") is not None
    await store.append("b", [one])  # b grows to 146 bytes: c (LRU) goes
    assert await store.get("c") is None
    assert await store.count() == (1, 2)
    await store.append("huge", [{"text": "y" * 500}])  # bigger than the budget: not kept
    assert await store.count() == (0, 0)


async def test_memory_entries_add_nothing_to_the_garbage_collectors_scans() -> None:
    # A full collection walks every tracked object: at a million entries, entries as objects
    # made each one take ~0.3 s. Stored entries must be objects the collector stops tracking.
    store = MemoryStore()
    await store.append("warm", [completion(0)], request={"i": 0})  # one-time caches
    await store.append("warm", [completion(1)])
    await store.get("warm")
    gc.collect()
    before = len(gc.get_objects())
    for i in range(2000):
        await store.append(f"k{i}", [completion(i)], request={"i": i})
    await store.append("k7", [completion(7)])  # a replaced entry is untracked as well
    # Collections untrack tuples as they examine them: a few may wait for the next full one.
    gc.collect()
    gc.collect()
    assert len(gc.get_objects()) - before < 100
    assert (await store.get("k7")) is not None
    assert len((await store.get("k7")).completions) == 2  # type: ignore[union-attr]


async def test_memory_rejects_bad_bounds() -> None:
    for bad in ({"max_entries": 0}, {"max_bytes": -1}, {"ttl": 0}):
        with pytest.raises(ValueError):
            MemoryStore(**bad)


# -- SQLiteStore -----------------------------------------------------------------------------


def _raw_rows(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT key, n FROM entries").fetchall())
    finally:
        conn.close()


async def test_sqlite_rejects_a_foreign_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    store = SQLiteStore(path)
    with pytest.raises(StoreError, match="schema version 99"):
        await store.get("k")
    await store.aclose()


async def test_sqlite_tiny_read_cache_stays_correct(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path, read_cache_size=1, flush_interval=0.001)
    try:
        for round_ in range(3):
            for k in range(10):
                assert await store.append(f"k{k}", [completion(round_)]) == round_ + 1
        for k in range(10):
            entry = await store.get(f"k{k}")
            assert entry is not None
            assert entry.completions == [completion(0), completion(1), completion(2)]
    finally:
        await store.aclose()
    assert (tmp_path / "cache.db").exists()


async def test_sqlite_path_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    store = SQLiteStore("~/deep/er/cache.sqlite")
    assert store.location == str(tmp_path / "deep" / "er" / "cache.sqlite")
    await store.append("k", [completion(0)])
    await store.aclose()
    assert (tmp_path / "deep" / "er" / "cache.sqlite").exists()
    assert SQLiteStore(tmp_path).location == str(tmp_path / "cache.db")
    assert SQLiteStore(f"{tmp_path}/new-dir/").location == str(tmp_path / "new-dir" / "cache.db")
    for bad in (":memory:", "", "file::memory:"):
        with pytest.raises(ValueError):
            SQLiteStore(bad)


async def test_sqlite_unopenable_paths_raise_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    store = SQLiteStore(blocker / "sub" / "cache.db")
    with pytest.raises(StoreError, match="cannot open"):
        await store.get("k")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a sqlite database at all" * 200)
    store = SQLiteStore(garbage)
    with pytest.raises(StoreError):
        await store.append("k", [completion(0)])
    assert garbage.read_bytes().startswith(b"this is not")  # left alone


async def test_sqlite_counts_survive_reopen_and_match_the_rows(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path, max_entries=50)
    for i in range(80):
        await store.append(f"k{i % 60}", [completion(i)])
    await store.aclose()
    reopened = SQLiteStore(tmp_path)
    counts = await reopened.count()
    await reopened.aclose()
    conn = sqlite3.connect(tmp_path / "cache.db")
    try:
        real = conn.execute("SELECT COUNT(*), SUM(n) FROM entries").fetchone()
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
    assert counts == real
    assert counts.num_keys == 50


async def test_sqlite_big_mixed_batch_keeps_every_row_in_creation_order(tmp_path: Path) -> None:
    # One write-behind batch holding several multi-row INSERT chunks (128 rows each), with an
    # update and a delete of older keys between them.
    store = SQLiteStore(tmp_path, flush_interval=30, max_batch=1000)
    for i in range(10):
        await store.append(f"k{i}", [completion(i)], request={"i": i})
    await store.flush()
    for i in range(200):
        await store.append(f"n{i}", [completion(i)], request={"n": i})
    await store.append("k3", [completion(33)])
    assert await store.delete("k5")
    for i in range(200, 400):
        await store.append(f"n{i}", [completion(i)], request={"n": i})
    assert store.pending_writes > 300  # still queued: all of it goes in one batch
    await store.aclose()

    reopened = SQLiteStore(tmp_path)
    entries = await reopened.iter_entries(offset=0, limit=1000)
    counts = await reopened.count()
    await reopened.aclose()
    expected = [f"k{i}" for i in range(10) if i != 5] + [f"n{i}" for i in range(400)]
    assert [e.key for e in entries] == expected
    by_key = {e.key: e for e in entries}
    assert by_key["k3"].completions == [completion(3), completion(33)]
    assert by_key["n399"].request == {"n": 399}
    assert by_key["n128"].completions == [completion(128)]
    assert (counts.num_keys, counts.total_responses) == (409, 410)


# -- RedisStore ------------------------------------------------------------------------------


def _dead_redis_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://:hunter2@127.0.0.1:{port}/0"  # nothing listens there any more


async def test_redis_failures_raise_store_error() -> None:
    store = RedisStore(_dead_redis_url(), socket_timeout=1.0)
    assert "hunter2" not in store.location and "***" in store.location
    assert "hunter2" not in repr(store)
    try:
        with pytest.raises(StoreError, match="redis get"):
            await store.get("k")
        with pytest.raises(StoreError, match="redis append"):
            await store.append("k", [completion(0)])
        with pytest.raises(StoreError):
            await store.count()
        with pytest.raises(StoreError):
            async with store.lock("k", timeout=0.1):
                pass
    finally:
        await store.aclose()


def test_mask_url() -> None:
    assert mask_url("redis://u:pw@h:6380/1") == "redis://u:***@h:6380/1"
    assert mask_url("redis://:pw@h/0") == "redis://:***@h/0"
    assert mask_url("redis://h:6379/0") == "redis://h:6379/0"


@pytest.mark.parametrize("make_store", ["redis"], indirect=True)
async def test_redis_clear_touches_only_its_prefix(make_store: Maker) -> None:
    ours = make_store()
    other_prefix = f"sglang-client-test:{uuid.uuid4()}:other*[x]:"
    theirs = make_store(prefix=other_prefix)
    try:
        await ours.append("k", [completion(0)])
        await theirs.append("k", [completion(0)])
        async with ours.lock("held"):
            assert await ours.clear() == 1
            assert await theirs.get("k") is not None
            with pytest.raises(LockTimeoutError):  # the lock key survived the clear
                async with ours.lock("held", timeout=0.05):
                    pass
    finally:
        _delete_prefix(other_prefix)


@pytest.mark.parametrize("make_store", ["redis"], indirect=True)
async def test_redis_two_pools_never_share_a_lock(make_store: Maker) -> None:
    a, b = make_store(), make_store()
    inside = 0
    turns: list[str] = []

    async def worker(store: RedisStore, name: str) -> None:
        nonlocal inside
        for _ in range(5):
            async with store.lock("k", ttl=10.0, timeout=10.0):
                inside += 1
                assert inside == 1
                turns.append(name)
                await anyio.sleep(0.002)
                inside -= 1

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(worker, a, f"a{i}")
            tg.start_soon(worker, b, f"b{i}")
    assert len(turns) == 40
    assert {t[0] for t in turns} == {"a", "b"}


@pytest.mark.parametrize("make_store", ["redis"], indirect=True)
async def test_redis_lock_expires_and_release_spares_the_next_holder(make_store: Maker) -> None:
    a, b, c = make_store(), make_store(), make_store()
    async with a.lock("k", ttl=0.3):
        held_by_b = b.lock("k", ttl=10.0, timeout=5.0)
        await held_by_b.__aenter__()  # gets in once a's lock expired
    # a's release found b's token, so it left b's lock alone
    with pytest.raises(LockTimeoutError):
        async with c.lock("k", timeout=0.05):
            pass
    await held_by_b.__aexit__(None, None, None)
    async with c.lock("k", timeout=0.5):
        pass


@pytest.mark.parametrize("make_store", ["redis"], indirect=True)
async def test_redis_two_pools_append_concurrently(make_store: Maker) -> None:
    stores = [make_store(), make_store()]

    async def worker(t: int) -> None:
        await stores[t % 2].append("k", [completion(t), completion(t + 1000)])

    async with anyio.create_task_group() as tg:
        for t in range(60):
            tg.start_soon(worker, t)
    entry = await stores[0].get("k")
    assert entry is not None and len(entry.completions) == 120
    ids = [c["meta_info"]["id"] for c in entry.completions]
    for i in range(0, 120, 2):
        assert int(ids[i + 1][3:]) == int(ids[i][3:]) + 1000
