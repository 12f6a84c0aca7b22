"""``sglang-cached``: argument parsing, store selection, and the offline commands."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from sglang_client.cache import MemoryStore, RedisStore, SQLiteStore
from sglang_client.server.cli import _parser, build_store, main

KEY_A = "a" * 64
KEY_B = "b" * 64


def completion(text: str) -> dict[str, Any]:
    return {"text": text, "output_ids": [1], "meta_info": {"finish_reason": {"type": "stop"}}}


def fill(path: Path, entries: dict[str, list[dict[str, Any]]]) -> None:
    async def run() -> None:
        store = SQLiteStore(path / "cache.db")
        for key, completions in entries.items():
            await store.append(key, completions, request={"text": key[:4]})
        await store.aclose()

    asyncio.run(run())


def counts(path: Path) -> tuple[int, int]:
    async def run() -> tuple[int, int]:
        store = SQLiteStore(path / "cache.db")
        try:
            return tuple(await store.count())  # type: ignore[return-value]
        finally:
            await store.aclose()

    return asyncio.run(run())


def test_start_defaults() -> None:
    args = _parser().parse_args(["start", "--sglang-url", "http://127.0.0.1:1"])
    assert (args.host, args.port, args.store, args.cache_path) == (
        "127.0.0.1",
        30001,
        "sqlite",
        "~/.sglang_cache",
    )
    assert (args.api_key, args.admin_key, args.upstream_api_key) == (None, None, None)
    assert (args.max_n, args.max_body_bytes, args.quiet) == (128, 16 * 1024 * 1024, False)
    assert args.redis_prefix == "sglang-cache:"
    assert (args.hit_memo_mb, args.timeout, args.namespace) == (32.0, 600.0, None)
    assert args.max_retries == 2


@pytest.mark.parametrize(
    "extra",
    [
        [],  # --sglang-url is required
        ["--sglang-url", "u", "--port", "0"],
        ["--sglang-url", "u", "--port", "70000"],
        ["--sglang-url", "u", "--port", "x"],
        ["--sglang-url", "u", "--ttl", "0"],
        ["--sglang-url", "u", "--ttl", "soon"],
        ["--sglang-url", "u", "--max-n", "-1"],
        ["--sglang-url", "u", "--max-entries", "0"],
        ["--sglang-url", "u", "--max-body-bytes", "1.5"],
        ["--sglang-url", "u", "--max-retries", "-1"],
    ],
)
def test_start_rejects_bad_flags(extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["start", *extra])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_build_store(tmp_path: Path) -> None:
    sqlite = build_store("sqlite", str(tmp_path), ttl=60, max_entries=10)
    assert isinstance(sqlite, SQLiteStore)
    assert sqlite.location == str(tmp_path / "cache.db")
    file = tmp_path / "mine.db"
    file.touch()
    assert build_store("sqlite", str(file)).location == str(file)
    assert isinstance(build_store("memory", str(tmp_path)), MemoryStore)
    redis = build_store("redis://127.0.0.1:1/0", str(tmp_path), redis_prefix="t:")
    assert isinstance(redis, RedisStore)
    assert redis.prefix == "t:"
    with pytest.raises(SystemExit, match="--max-entries does not apply to Redis"):
        build_store("redis://127.0.0.1:1/0", str(tmp_path), max_entries=5)
    with pytest.raises(SystemExit, match="must be sqlite, memory or redis"):
        build_store("postgres://x", str(tmp_path))


def test_export_import_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, target = tmp_path / "src", tmp_path / "dst"
    source.mkdir()
    fill(source, {KEY_A: [completion("a1"), completion("a2")], KEY_B: [completion("b1")]})
    dump = tmp_path / "cache.jsonl"
    assert main(["export", "--format", "jsonl", str(dump), "--cache-path", str(source)]) == 0
    lines = [json.loads(line) for line in dump.read_text().splitlines()]
    assert [(r["key"], len(r["completions"])) for r in lines] == [(KEY_A, 2), (KEY_B, 1)]
    assert lines[0]["request"] == {"text": "aaaa"}
    assert main(["import", str(dump), "--cache-path", str(target)]) == 0
    assert "imported 2 entries" in capsys.readouterr().err
    assert counts(target) == (2, 3)
    assert main(["import", str(dump), "--cache-path", str(target)]) == 0  # a re-run adds nothing
    assert "imported 0 entries, skipped 2" in capsys.readouterr().err
    assert counts(target) == (2, 3)
    assert main(["stats", "--cache-path", str(target)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["num_keys"], stats["total_responses"]) == (2, 3)
    assert stats["cache_file"] == str(target / "cache.db")
    assert main(["export", "-", "--cache-path", str(target)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["clear", "--cache-path", str(target)]) == 0
    assert "cleared 2 entries" in capsys.readouterr().out
    assert counts(target) == (0, 0)


def test_import_of_an_empty_file_leaves_an_empty_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    target = tmp_path / "cache"
    assert main(["import", str(empty), "--cache-path", str(target)]) == 0
    assert "imported 0 entries" in capsys.readouterr().err
    assert main(["stats", "--cache-path", str(target)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["num_keys"], stats["total_responses"]) == (0, 0)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "Expecting property name"),
        ("[1]", "must be a JSON object"),
        (json.dumps({"key": KEY_A}), "missing field(s): completions"),
        (json.dumps({"key": "short", "completions": []}), "64 lowercase hex"),
        (json.dumps({"key": KEY_A, "completions": {"text": "x"}}), "list of objects"),
        (json.dumps({"key": KEY_A, "completions": [], "request": "x"}), "object or null"),
    ],
)
def test_import_stops_at_a_bad_line(
    tmp_path: Path, line: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    good = json.dumps({"key": KEY_B, "request": None, "completions": [completion("b")]})
    dump = tmp_path / "in.jsonl"
    dump.write_text(good + "\n\n" + line + "\n")
    assert main(["import", str(dump), "--cache-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{dump}:3: " in err
    assert message in err
    assert "imported 1 entries before that line" in err


def test_offline_commands_on_a_missing_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nothing-here"
    for command in (["stats"], ["clear"], ["export", str(tmp_path / "x.jsonl")]):
        assert main([*command, "--cache-path", str(missing)]) == 1
        assert "no cache at" in capsys.readouterr().err
    assert not missing.exists()
    assert main(["import", str(tmp_path / "absent.jsonl"), "--cache-path", str(missing)]) == 1
    assert "No such file" in capsys.readouterr().err


def test_offline_stats_on_a_memory_store(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--store", "memory"]) == 0
    assert json.loads(capsys.readouterr().out)["num_keys"] == 0


# ------------------------------------------------------------------ the first minutes


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("127.0.0.1:30000", "did you mean http://127.0.0.1:30000?"),
        ("localhost", "did you mean http://localhost?"),
        ("ftp://127.0.0.1:30000", "needs a full URL with its scheme"),
        ("http://127.0.0.1:30000/v1", "use http://127.0.0.1:30000 (without /v1)"),
        ("http://127.0.0.1:30000/v1/", "use http://127.0.0.1:30000 (without /v1)"),
        ("http://127.0.0.1:30000/?x=1", "no query string"),
    ],
)
def test_start_refuses_an_sglang_url_that_cannot_work(
    url: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["start", "--sglang-url", url, "--store", "memory"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and said in err, err


def test_start_on_a_taken_port_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["start", "--sglang-url", "http://127.0.0.1:9", "--store", "memory"]
        with pytest.raises(SystemExit) as exc:
            main([*args, "--port", str(port)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"sglang-cached: cannot listen on 127.0.0.1:{port}: Address already in use"


WITHOUT_UVICORN = (
    "import sys, runpy; sys.modules['uvicorn'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_module(sys.argv[0], run_name='__main__')"
)


@pytest.mark.parametrize(
    ("module", "args", "code"),
    [
        ("sglang_client.server.cli", ["start", "--sglang-url", "http://127.0.0.1:9"], 2),
        ("sglang_client.testing", ["--port", "0"], 1),
    ],
)
def test_without_the_server_extra_one_line_says_what_to_install(
    module: str, args: list[str], code: int
) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_UVICORN, module, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "pip install 'sglang-client[server]'" in lines[0]
