"""SQLiteStore's write-behind contract: what is durable when, and what reads see meanwhile.

The kill -9 test: a child appends without pause (new keys, and top-ups of existing ones) and,
every few writes, flushes and reports the highest index whose writes are all durable. The
parent kills it at an arbitrary moment, twice on the same file, and checks that the database is
intact and holds every write the child reported as durable. The other tests cover exit without
``aclose()``, read-your-writes over queued writes, the commit window, and failed batches.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections import deque
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from sglang_client.cache.stores import SQLiteStore, StoreError
from sglang_client.cache.stores._sqlite_schema import open_database
from sglang_client.cache.stores._sqlite_view import FileView, Record

pytestmark = pytest.mark.anyio

CHILD = textwrap.dedent(
    """
    import sys
    import anyio
    from sglang_client.cache.stores import SQLiteStore

    async def main(path, start):
        store = SQLiteStore(path, flush_interval=0.005)
        i = start
        while True:
            i += 1
            body = {"i": i, "text": "x" * (i % 300)}
            await store.append(f"key-{i}", [body], request={"i": i})
            if i % 3 == 0 and i - 1 > start:
                await store.append(f"key-{i - 1}", [{"i": i - 1, "top_up": True}])
            if i % 10 == 0:
                await store.flush()
                if store.pending_writes == 0:
                    print(f"durable {i}", flush=True)

    anyio.run(main, sys.argv[1], int(sys.argv[2]))
    """
)


def _write_until_killed(path: Path, start: int, reports: int) -> int:
    """Run the child until it reported ``reports`` durable points, SIGKILL it, return the last."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(start)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    durable = start
    try:
        assert child.stdout is not None
        for _ in range(reports):
            line = child.stdout.readline()
            if not line:
                child.wait(timeout=10)
                assert child.stderr is not None
                pytest.fail(f"the writer child exited early: {child.stderr.read()[-2000:]}")
            durable = int(line.split()[1])
        os.kill(child.pid, signal.SIGKILL)  # the child is still writing when this lands
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
        child.stdout.close()  # type: ignore[union-attr]
        child.stderr.close()  # type: ignore[union-attr]
    assert child.returncode == -signal.SIGKILL
    return durable


def _check_file(path: Path) -> int:
    """Check integrity and the stats row; return the highest index present."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        real = conn.execute("SELECT COUNT(*), COALESCE(SUM(n), 0) FROM entries").fetchone()
        assert conn.execute("SELECT num_keys, total_responses FROM stats").fetchone() == real
        highest = 0
        for key, request, completions, n in conn.execute(
            "SELECT key, request, completions, n FROM entries"
        ):
            index = int(key.removeprefix("key-"))
            assert request is None or json.loads(request) == {"i": index}
            decoded = json.loads(completions)
            assert len(decoded) == n and decoded[0]["i"] == index
            highest = max(highest, index)
        return highest
    finally:
        conn.close()


async def test_kill_9_loses_no_durable_write_and_never_corrupts(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    start = 0
    for reports in (40, 25):
        durable = _write_until_killed(path, start, reports)
        highest = _check_file(path)
        assert highest >= durable
        store = SQLiteStore(path)
        try:
            for i in range(start + 1, durable + 1):
                entry = await store.get(f"key-{i}")
                assert entry is not None, f"key-{i} was reported durable but is gone"
                assert entry.request == {"i": i}
                assert entry.completions[0] == {"i": i, "text": "x" * (i % 300)}
                if i % 3 != 2:
                    assert len(entry.completions) == 1, i
                elif i + 1 <= durable:  # its top-up was reported durable too
                    assert entry.completions[1:] == [{"i": i, "top_up": True}], i
            # The reopened store keeps working on the recovered file.
            assert await store.append(f"key-{highest + 1}", [{"i": highest + 1}]) == 1
        finally:
            await store.aclose()
        # The next round starts past anything the killed child may have written.
        start = highest + 1
        assert _check_file(path) == start


EXIT_WITHOUT_CLOSE = textwrap.dedent(
    """
    import sys
    import anyio
    from sglang_client.cache.stores import SQLiteStore

    async def main(path):
        store = SQLiteStore(path, flush_interval=60.0)  # nothing commits by itself
        for i in range(50):
            await store.append(f"key-{i}", [{"i": i}], request={"i": i})
        print(store.pending_writes, flush=True)

    anyio.run(main, sys.argv[1])  # returns without aclose()
    """
)


def test_writes_are_committed_when_a_program_exits_without_aclose(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", EXIT_WITHOUT_CLOSE, str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "50"  # all pending when the program ended
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT COUNT(*) FROM entries").fetchone() == (50,)
    finally:
        conn.close()


# -- write-behind: read-your-writes, the commit window, failures ----------------------------


def completion(i: int) -> dict[str, Any]:
    return {"text": f"completion {i}", "meta_info": {"id": f"id-{i}"}}


def _raw_rows(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT key, n FROM entries").fetchall())
    finally:
        conn.close()


async def test_sqlite_reads_see_queued_writes(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = SQLiteStore(path, flush_interval=30.0)  # nothing commits unless asked
    try:
        assert await store.append("k", [completion(0)], request={"p": 1}) == 1
        assert await store.append("k", [completion(1)]) == 2
        assert store.pending_writes == 2
        entry = await store.get("k")
        assert entry is not None and len(entry.completions) == 2
        assert _raw_rows(path) == {}  # not on disk yet
        await store.flush()
        assert store.pending_writes == 0
        assert _raw_rows(path) == {"k": 2}
        assert await store.delete("k") is True
        assert await store.get("k") is None  # the delete is queued, the row still on disk
        assert _raw_rows(path) == {"k": 2}
        assert await store.append("k", [completion(2)]) == 1
        await store.append("j", [completion(0)])
        assert await store.clear() == 2
        assert await store.append("k", [completion(3)]) == 1
    finally:
        await store.aclose()
    assert _raw_rows(path) == {"k": 1}  # aclose flushed


async def _until_committed(store: SQLiteStore) -> None:
    for _ in range(2000):  # a 10 s bound for a hung writer, not a performance assertion
        if not store.pending_writes:
            return
        await anyio.sleep(0.005)
    pytest.fail(f"{store.pending_writes} writes still pending")


async def test_sqlite_commits_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    by_interval = SQLiteStore(path, flush_interval=0.01)
    try:
        await by_interval.append("a", [completion(0)])
        await _until_committed(by_interval)  # no flush() call: the window closed by itself
        assert _raw_rows(path) == {"a": 1}
    finally:
        await by_interval.aclose()
    by_batch = SQLiteStore(path, flush_interval=30.0, max_batch=4)
    try:
        for i in range(4):
            await by_batch.append(f"b{i}", [completion(i)])
        await _until_committed(by_batch)  # a full batch does not wait for the interval
        assert len(_raw_rows(path)) == 5
    finally:
        await by_batch.aclose()


async def test_sqlite_append_racing_a_clear_starts_afresh(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path, flush_interval=5.0)
    try:
        for _ in range(3):
            await store.append("k", [completion(0)])
            await store.flush()
            cleared: list[int] = []

            async def clear(into: list[int]) -> None:
                into.append(await store.clear())

            async with anyio.create_task_group() as tg:
                tg.start_soon(clear, cleared)
                await anyio.lowlevel.checkpoint()  # the clear is queued, maybe not committed
                assert await store.append("k", [completion(1)]) == 1
            assert cleared == [1]
            entry = await store.get("k")
            assert entry is not None and entry.completions == [completion(1)]
            await store.flush()
            assert _raw_rows(tmp_path / "cache.db") == {"k": 1}
            await store.clear()
    finally:
        await store.aclose()


class _StubWriter:
    """Stands in for the writer thread, so the test decides what has committed."""

    def __init__(self) -> None:
        self.committed_seq = 0
        self.invalidated: deque[str] = deque()
        self.running = True
        self.error: BaseException | None = None
        self.crash: BaseException | None = None


def test_sqlite_view_keeps_queued_writes_until_they_commit(tmp_path: Path) -> None:
    conn, reader = open_database(tmp_path / "v.db", 1.0, lru=False, ttl=False)
    writer = _StubWriter()
    view = FileView(reader, writer, None, 1, "test")  # type: ignore[arg-type]
    try:
        first = view.mark_dirty("k", Record(None, "[1]", 1, 0.0, 0.0))
        newer = Record(None, "[1,2]", 2, 0.0, 0.0)
        second = view.mark_dirty("k", newer)
        assert view.pending == 2
        writer.committed_seq = first  # the first write is on disk, the second is not
        assert view.lookup("other") is None  # a miss fills the one-entry read cache
        assert view.lookup("k") is newer  # still held: the file does not have it yet
        writer.committed_seq = second
        assert view.lookup("k") is newer  # now a clean, cached record
        writer.invalidated.append("k")  # e.g. evicted by max_entries
        assert view.lookup("k") is None  # so the file answers: no row
        newest = Record(None, "[3]", 1, 0.0, 0.0)
        view.mark_dirty("k", newest)
        writer.invalidated.append("k")  # an older write failed; the newest is still queued
        assert view.lookup("k") is newest
        conn.execute("INSERT INTO entries VALUES ('z', NULL, '[9]', 1, 1.0, 1.0, 1.0)")
        cleared = view.begin_clear()
        assert view.lookup("z") is None  # a queued clear hides older rows
        writer.committed_seq = cleared
        found = view.lookup("z")  # (this stub never really cleared the file)
        assert found is not None and found.completions == "[9]"
    finally:
        reader.close()
        conn.close()


async def test_sqlite_failed_batch_is_reported_and_keeps_what_was_stored(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = SQLiteStore(path, busy_timeout=0.05, flush_interval=0.001)
    try:
        await store.append("kept", [completion(0)])
        await store.flush()
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock: our batch fails
        try:
            await store.append("lost", [completion(0)])
            with pytest.raises(StoreError, match="locked"):
                await store.flush()
            entry = await store.get("kept")
            assert entry is not None  # reads still work
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert await store.get("lost") is None  # the failed write is not pretended
        assert await store.append("after", [completion(1)]) == 1  # the store recovers
        await store.flush()
    finally:
        await store.aclose()
    assert _raw_rows(path) == {"kept": 1, "after": 1}
