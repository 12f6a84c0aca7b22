"""The SQLite store's file format: schema, opening, and the read-only queries.

One row per entry; ``completions`` is a JSON array of the entry's completions, so a read is
one primary-key lookup. Indexes serve LRU eviction (``accessed_at``) and TTL sweeps
(``updated_at``); listing uses rowid order, which is creation order because a new or
re-created entry is always inserted afresh.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = [
    "DATABASE_SUFFIXES",
    "GET_ENTRY",
    "SCHEMA_VERSION",
    "connect_reader",
    "database_path",
    "is_read_only_failure",
    "not_a_cache_file",
    "open_database",
    "open_read_only",
    "private_dirs",
    "read_page",
]

logger = logging.getLogger("sglang_client.cache")

DATABASE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_SQLITE_MAGIC = b"SQLite format 3\x00"
_warned_modes: set[str] = set()

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


def database_path(path: str | os.PathLike[str]) -> Path:
    """The database file a cache path names.

    A path ending in ``/``, or an existing directory, holds ``cache.db``; a path ending in
    ``.db``, ``.sqlite`` or ``.sqlite3``, or an existing file, is the database itself; any other
    (absent) path is a directory to create, holding ``cache.db``.
    """
    text = str(path)
    resolved = Path(path).expanduser()
    if text.endswith(("/", os.sep)) or resolved.is_dir():
        return (resolved / "cache.db").absolute()
    if resolved.suffix.lower() in DATABASE_SUFFIXES or resolved.exists():
        return resolved.absolute()
    return (resolved / "cache.db").absolute()


def not_a_cache_file(path: Path) -> str | None:
    """Why the existing ``path`` cannot be a cache database (``None``: it can, or is absent).

    An empty file counts as a new database only under a database name (``.db`` ...): an empty
    ``notes.txt`` is more likely a wrong path than a cache.
    """
    try:
        with path.open("rb") as file:
            head = file.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return f"{path} is a directory"
    except OSError as exc:
        return f"{path} cannot be read: {exc.strerror or exc}"
    if head == _SQLITE_MAGIC:
        return None
    if not head:
        if path.suffix.lower() in DATABASE_SUFFIXES:
            return None
        return f"{path} is an empty file, not a SQLite database (remove it or pick another path)"
    return f"{path} exists and is not a SQLite database; it was left as it is"


def private_dirs(directory: Path) -> None:
    """Create ``directory`` and missing parents as 0700, whatever the umask."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(folder, 0o700)  # mkdir's mode is cut by the umask


def _private_file(path: Path) -> None:
    """Create the database file as 0600 (SQLite gives -wal and -shm the same mode), or warn
    once if an existing one is readable by others."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        _warn_if_loose(path)
        return
    os.close(fd)
    os.chmod(path, 0o600)


def _warn_if_loose(path: Path) -> None:
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
        except OSError:
            continue
        if mode & 0o077 and str(file) not in _warned_modes:
            _warned_modes.add(str(file))
            logger.warning(
                "cache file %s is accessible to other users (mode %04o); it holds prompts"
                " and answers: chmod 600 it",
                file,
                mode,
            )


def is_read_only_failure(exc: BaseException) -> bool:
    """Whether opening for writing failed because the file or its directory is read-only."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")) or "readonly" in str(exc)


def open_read_only(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """Open an existing database on read-only media: immutable, so no -shm is needed.

    SQLite then reads the main file only: everything a clean shutdown checkpointed.
    """
    conn = sqlite3.connect(
        _read_only_uri(path),
        uri=True,
        timeout=busy_timeout,
        isolation_level=None,
        check_same_thread=False,
    )
    try:
        conn.execute("SELECT num_keys FROM stats").fetchall()
    except BaseException:
        conn.close()
        raise
    return conn


def _read_only_uri(path: Path) -> str:
    return f"file:{quote(str(path))}?mode=ro&immutable=1"


def open_database(
    path: Path, busy_timeout: float, lru: bool, ttl: bool
) -> tuple[sqlite3.Connection, sqlite3.Connection]:
    """Create ``path``'s directory and the database if needed; return (writer, reader).

    The directory is created 0700 and the file 0600. ``lru`` and ``ttl`` create the index
    that eviction or expiry needs (a one-time build on an existing file).
    """
    private_dirs(path.parent)
    _private_file(path)
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
    path: Path,
    busy_timeout: float,
    cutoff: float,
    limit: int,
    offset: int,
    read_only: bool = False,
) -> list[tuple[Any, ...]]:
    """Return rows ``(key, request, completions, created_at, updated_at)`` of one page.

    Meant for a worker thread, so it uses a connection of its own.
    """
    if read_only:
        conn = sqlite3.connect(
            _read_only_uri(path), uri=True, timeout=busy_timeout, isolation_level=None
        )
    else:
        conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    try:
        return conn.execute(_PAGE, (cutoff, limit, offset)).fetchall()
    finally:
        conn.close()
