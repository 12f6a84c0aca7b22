"""``kill -9`` a process in the middle of writing a SQLiteStore, then check what survived.

The child appends without pause (new keys, and top-ups of existing ones) and, every few writes,
flushes and reports the highest index whose writes are all durable. The parent kills it at an
arbitrary moment, twice on the same file, and checks that the database is intact and holds
every write the child reported as durable.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sglang_client.cache.stores import SQLiteStore

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


@pytest.mark.anyio
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
