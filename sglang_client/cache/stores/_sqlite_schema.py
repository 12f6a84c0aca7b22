"""The SQLite store's file format: schema, opening, and the read-only queries.

One row per entry; ``completions`` is a JSON array of the entry's completions, so a read is
one primary-key lookup. Indexes serve LRU eviction (``accessed_at``) and TTL sweeps
(``updated_at``); listing uses rowid order, which is creation order because a new or
re-created entry is always inserted afresh.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

__all__ = [
    "GET_ENTRY",
    "SCHEMA_VERSION",
    "connect_reader",
    "open_database",
    "read_page",
]

GET_ENTRY = "SELECT request, completions, n, created_at, updated_at FROM entries WHERE key = ?"
_PAGE = (
    "SELECT key, request, completions, created_at, updated_at FROM entries"
    " WHERE updated_at >= ? ORDER BY rowid LIMIT ? OFFSET ?"
)

SCHEMA_VERSION = 1
_READ_MMAP_BYTES = 1 << 30

# The stats row is kept exact by triggers in the same transactions, so opening and counting
# never scan the table. (The writer enables recursive_triggers, so INSERT OR REPLACE fires the
# delete trigger too.)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    request TEXT,
    completions TEXT NOT NULL,
    n INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    accessed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS stats (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    num_keys INTEGER NOT NULL,
    total_responses INTEGER NOT NULL
);
INSERT OR IGNORE INTO stats VALUES (0, 0, 0);
CREATE TRIGGER IF NOT EXISTS entries_insert AFTER INSERT ON entries BEGIN
    UPDATE stats SET num_keys = num_keys + 1, total_responses = total_responses + new.n;
END;
CREATE TRIGGER IF NOT EXISTS entries_delete AFTER DELETE ON entries BEGIN
    UPDATE stats SET num_keys = num_keys - 1, total_responses = total_responses - old.n;
END;
CREATE TRIGGER IF NOT EXISTS entries_update_n AFTER UPDATE OF n ON entries BEGIN
    UPDATE stats SET total_responses = total_responses + new.n - old.n;
END;
"""


# Indexes cost every write, so each exists only once a store needs it (and then stays).
_LRU_INDEX = "CREATE INDEX IF NOT EXISTS entries_accessed_at ON entries (accessed_at)"
_TTL_INDEX = "CREATE INDEX IF NOT EXISTS entries_updated_at ON entries (updated_at)"


def open_database(
    path: Path, busy_timeout: float, lru: bool, ttl: bool
) -> tuple[sqlite3.Connection, sqlite3.Connection]:
    """Create ``path``'s directory and the database if needed; return (writer, reader).

    ``lru`` and ``ttl`` create the index that eviction or expiry needs (a one-time build on
    an existing file).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = _open_writer(path, busy_timeout)
    try:
        for wanted, index in ((lru, _LRU_INDEX), (ttl, _TTL_INDEX)):
            if wanted:
                conn.execute(index)
    except BaseException:
        conn.close()
        raise
    try:
        return conn, connect_reader(path, busy_timeout)
    except BaseException:
        conn.close()
        raise


def _open_writer(path: Path, busy_timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchall()[0][0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch {path} to WAL mode (got {mode!r})")
        # In WAL mode NORMAL loses nothing on a process crash; only an OS crash or power loss
        # can roll back the last transactions.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA recursive_triggers=ON")
        conn.execute("PRAGMA cache_size=-16384")  # 16 MB: keeps random-key index inserts in memory
        version = conn.execute("PRAGMA user_version").fetchall()[0][0]
        if version not in (0, SCHEMA_VERSION):
            raise sqlite3.DatabaseError(
                f"{path} has cache schema version {version}; this library reads {SCHEMA_VERSION}"
            )
        if version == 0:
            conn.executescript(
                f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version={SCHEMA_VERSION};COMMIT;"
            )
    except BaseException:
        conn.close()
        raise
    return conn


def connect_reader(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """Open a read-only connection in autocommit mode (no snapshot outlives a statement)."""
    reader = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        reader.execute("PRAGMA query_only=1")
        # Reads through a memory map skip a system call per page: a random hit in a 1M-entry
        # file walks two B-trees, and without the map it costs ~1.5x what a 1k-entry one does.
        # Only this read-only connection maps the file; nothing is loaded until it is read.
        reader.execute(f"PRAGMA mmap_size={_READ_MMAP_BYTES}")
    except BaseException:
        reader.close()
        raise
    return reader


def read_page(
    path: Path, busy_timeout: float, cutoff: float, limit: int, offset: int
) -> list[tuple[Any, ...]]:
    """Return rows ``(key, request, completions, created_at, updated_at)`` of one page.

    Meant for a worker thread, so it uses a connection of its own.
    """
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    try:
        return conn.execute(_PAGE, (cutoff, limit, offset)).fetchall()
    finally:
        conn.close()
