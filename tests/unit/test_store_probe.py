"""``created_at(key)``: the cheap liveness probe the proxy's hit memo uses."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from sglang_client.cache import MemoryStore, SQLiteStore

pytestmark = pytest.mark.anyio

KEY = "a" * 64


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_created_at_tracks_the_live_entry(kind: str, tmp_path: Path) -> None:
    store = MemoryStore(ttl=0.3) if kind == "memory" else SQLiteStore(tmp_path, ttl=0.3)
    assert await store.created_at(KEY) is None
    await store.append(KEY, [{"text": "x"}], request={"text": "p"})
    entry = await store.get(KEY)
    assert entry is not None
    assert await store.created_at(KEY) == entry.created_at
    await store.append(KEY, [{"text": "y"}])  # growing keeps the same entry
    assert await store.created_at(KEY) == entry.created_at
    await anyio.sleep(0.45)
    assert await store.created_at(KEY) is None  # expired
    await store.append(KEY, [{"text": "z"}])
    recreated = await store.created_at(KEY)
    assert recreated is not None
    assert recreated > entry.created_at
    await store.aclose()
