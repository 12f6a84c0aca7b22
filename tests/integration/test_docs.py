"""README.md's code blocks and the examples, executed against the server under test.

Every ```python and ```bash block of the README runs in its own process, with the ports 30000
and 30001 swapped for those of an SGLang server and an ``sglang-cached`` proxy (and
``SGLANG_URL`` / ``SGLANG_CACHED_URL`` pointing at them). Those two are started by the README's
own servers block (tagged ``<!-- run: servers ... -->``); against a real SGLang (``SGLANG_URL``)
the block's fake server is left out and port 30000 is the real one. Blocks that start a
``FakeSGLangServer`` themselves (they document the fake) use it in both cases. A block is
skipped only when the line above it says why (``<!-- not-run: reason -->``), or when it needs
a Redis server that does not answer (``<!-- needs: redis ... -->``; with ``REQUIRE_REDIS=1``
that fails instead).

Python blocks and example scripts run as ``__main__`` in a process forked from an interpreter that
has already imported the heavy modules (pydantic, aiohttp, openai, ...): each still gets a fresh
process, but not a ~2 s import. They run a few at a time, alongside the bash blocks, which run
in README order (they share the proxy's cache) except the one that runs the example scripts. The
configuration tables are checked against the code.
"""

from __future__ import annotations

import inspect
import os
import queue
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from ._docs_runner import ForkServer, Result, stop_group
from .conftest import REPO, free_port, real_server_url, wait_healthy

__all__: list[str] = []

README = REPO / "README.md"
EXAMPLES = REPO / "examples"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
LANGUAGES = {"python", "bash", "sh"}
TAG = re.compile(r"<!--\s*(not-run|run|needs|config):\s*(.*?)\s*-->")
TIMEOUT = 50.0


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README."""

    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    tag: str | None  # "not-run", "run" or "needs", from the line above the fence
    note: str

    @property
    def id(self) -> str:
        return f"{self.lang}-L{self.line}"


def parse_blocks(text: str) -> list[Block]:
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        lang = lines[i][3:].strip()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        assert end is not None, f"README.md:{i + 1}: unterminated code block"
        above = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        tag = TAG.fullmatch(above.strip())
        blocks.append(
            Block(
                line=i + 1,
                lang=lang,
                code="\n".join(lines[i + 1 : end]) + "\n",
                tag=tag.group(1) if tag else None,
                note=tag.group(2) if tag else "",
            )
        )
        i = end + 1
    return blocks


BLOCKS = parse_blocks(README.read_text(encoding="utf-8"))
RUNNABLE = [b for b in BLOCKS if b.tag in (None, "needs")]
PYTHON_BLOCKS = [b for b in RUNNABLE if b.lang == "python"]
SHELL_BLOCKS = [b for b in RUNNABLE if b.lang in ("bash", "sh")]
EXECUTED: set[str] = set()


def redis_answers() -> bool:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except Exception:
        return False
    return True


class Docs:
    """The README's servers, a scratch HOME and working directory, and the runs in flight."""

    WORKERS = 4

    def __init__(self, root: Path, real_url: str | None = None) -> None:
        self.home = root / "home"
        self.work = root / "work"
        self.home.mkdir()
        self.work.mkdir()
        # The README's commands run from the repository root: `examples/...` must resolve.
        (self.work / "examples").symlink_to(EXAMPLES, target_is_directory=True)
        self.real = real_url is not None
        port = int(real_url.rsplit(":", 1)[1]) if real_url is not None else free_port()
        self.sglang_port, self.proxy_port = port, free_port()
        self.sglang_url = f"http://127.0.0.1:{self.sglang_port}"
        self.proxy_url = f"http://127.0.0.1:{self.proxy_port}"
        self.forks: queue.Queue[ForkServer] = queue.Queue()
        for _ in range(self.WORKERS):
            self.forks.put(ForkServer())
        self.pool = ThreadPoolExecutor(max_workers=self.WORKERS, thread_name_prefix="docs")
        self.runs: dict[str, Future[Result]] = {}

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SGLANG_")}
        bin_dir = str(Path(sys.executable).parent)
        env.update(HOME=str(self.home), PATH=f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}")
        env.update(SGLANG_URL=self.sglang_url, SGLANG_CACHED_URL=self.proxy_url)
        env.update(PYTHONUNBUFFERED="1", **extra)
        return env

    def substitute(self, code: str) -> str:
        code = re.sub(r"\b30000\b", str(self.sglang_port), code)
        code = re.sub(r"\b30001\b", str(self.proxy_port), code)
        return code.replace("redis://127.0.0.1:6379/0", REDIS_URL)

    def run_python(self, script: Path, **env: str) -> Result:
        fork = self.forks.get()
        try:
            return fork.run(script, [str(script)], self.work, self.env(**env), TIMEOUT)
        finally:
            self.forks.put(fork)

    def run_shell(self, code: str, **env: str) -> Result:
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", code],
            capture_output=True,
            text=True,
            errors="replace",  # judged by exit status and content, not by its encoding
            timeout=TIMEOUT,
            cwd=self.work,
            env=self.env(**env),
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def run_block(self, block: Block) -> Result:
        code = self.substitute(block.code)
        if block.lang != "python":
            return self.run_shell(code)
        script = self.work / f"readme_{block.line}.py"
        script.write_text(code, encoding="utf-8")
        return self.run_python(script)

    def submit(self, key: str, work: Callable[[], Result]) -> None:
        self.runs[key] = self.pool.submit(work)

    def submit_in_order(self, items: list[tuple[str, Callable[[], Result]]]) -> None:
        """Run ``items`` one after another (in one worker), each with its own future."""
        futures: list[Future[Result]] = [Future() for _ in items]
        for (key, _), future in zip(items, futures, strict=True):
            self.runs[key] = future

        def chain() -> None:
            for (_, work), future in zip(items, futures, strict=True):
                try:
                    future.set_result(work())
                except BaseException as exc:
                    future.set_exception(exc)

        self.pool.submit(chain)

    def result(self, key: str) -> Result:
        return self.runs[key].result(timeout=TIMEOUT * 2)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        while not self.forks.empty():
            self.forks.get().close()


def start_servers(docs: Docs, block: Block) -> subprocess.Popen[bytes]:
    """Run the README's servers block; its background jobs stay in the process group.

    Against a real SGLang, its line starting the fake server is left out.
    """
    code = block.code
    if docs.real:
        code = "\n".join(line for line in code.splitlines() if "sglang_client.testing" not in line)
    proc = subprocess.Popen(
        ["bash", "--noprofile", "--norc", "-e", "-c", docs.substitute(code)],
        cwd=docs.work,
        env=docs.env(),
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert proc.wait(timeout=30) == 0, "the README's servers block failed"
        wait_healthy(docs.sglang_url, None, timeout=30)
        wait_healthy(docs.proxy_url, None, timeout=30)
    except BaseException:
        stop_group(proc)
        raise
    return proc


SELF_STARTED = ("curl_examples.sh", "openai_client.py", "cached_client.py")


def submit_examples(docs: Docs, wanted: Callable[..., bool]) -> None:
    """Each example with nothing at its target (it starts its own servers), and the demo."""
    nothing = {
        "SGLANG_URL": f"http://127.0.0.1:{free_port()}",
        "SGLANG_CACHED_URL": f"http://127.0.0.1:{free_port()}",
    }
    for name in SELF_STARTED:
        if not wanted(f"test_example_starts_what_it_needs[{name}]"):
            continue
        if name.endswith(".sh"):
            code = f"bash {EXAMPLES / name}"
            docs.submit(name, lambda code=code: docs.run_shell(code, **nothing))
        else:
            docs.submit(name, lambda name=name: docs.run_python(EXAMPLES / name, **nothing))
    if wanted("test_make_demo_script"):
        docs.submit("demo.py", lambda: docs.run_python(EXAMPLES / "demo.py"))


@pytest.fixture(scope="module")
def docs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Docs]:
    """Start the README's servers and every run the selected tests need, a few at a time."""
    here = Path(__file__)
    selected = {item.name for item in request.session.items if item.path == here}

    def wanted(*names: str) -> bool:
        return any(name in selected for name in names)

    def block_test(block: Block) -> str:
        return f"test_readme_block[{block.id}]"

    [servers] = [b for b in BLOCKS if b.tag == "run"]
    real = real_server_url(request.config)
    if real is not None and not real.startswith("http://127.0.0.1:"):
        pytest.skip("the README runs against a loopback server only: SGLANG_URL is elsewhere")
    state = Docs(tmp_path_factory.mktemp("docs"), real)
    try:
        proc = start_servers(state, servers)
    except BaseException:
        state.close()
        raise
    EXECUTED.add(servers.id)
    try:
        # Shell blocks share the proxy's cache (fill, inspect, export, clear): README order,
        # the example scripts included (run alongside, a block's /cache/clear could empty the
        # cache under an example that expects its answers to be there: seen on real SGLang).
        examples = "test_readme_runs_the_examples_against_its_servers"
        ordered = SHELL_BLOCKS
        if wanted("test_readme_proxy_cache_was_used", examples, *map(block_test, ordered)):
            state.submit_in_order([(b.id, lambda b=b: state.run_block(b)) for b in ordered])
        with_redis = redis_answers()
        for block in PYTHON_BLOCKS:
            if wanted(block_test(block)) and (block.tag != "needs" or with_redis):
                state.submit(block.id, lambda block=block: state.run_block(block))
        submit_examples(state, wanted)
        yield state
        for future in state.runs.values():
            future.result(timeout=TIMEOUT * 2)  # nothing outlives the servers
    finally:
        state.close()
        stop_group(proc)


# ---------------------------------------------------------------------- README blocks


def test_every_block_is_runnable_or_says_why_not() -> None:
    assert {b.lang for b in BLOCKS} <= LANGUAGES, "use ```python, ```bash or ```sh"
    assert [b.tag for b in BLOCKS].count("run") == 1, "exactly one servers block"
    for block in BLOCKS:
        if block.tag in ("not-run", "needs"):
            assert block.note, f"README.md:{block.line}: say why ({block.tag}: <reason>)"
        if block.tag == "needs":
            assert block.note.startswith("redis"), f"README.md:{block.line}: unknown need"
    skipped = [b for b in BLOCKS if b.tag == "not-run"]
    assert len(skipped) <= 6, "most blocks must run"
    assert len(PYTHON_BLOCKS) >= 8
    assert len(SHELL_BLOCKS) >= 3


@pytest.mark.gateway_differs("the README's blocks talk to one SGLang (batch /generate, /tokenize)")
@pytest.mark.parametrize("block", PYTHON_BLOCKS + SHELL_BLOCKS, ids=lambda b: b.id)
def test_readme_block(block: Block, docs: Docs) -> None:
    if block.id not in docs.runs:
        if os.environ.get("REQUIRE_REDIS") == "1":
            pytest.fail(f"REQUIRE_REDIS=1 but no Redis answers at {REDIS_URL}")
        pytest.skip(f"needs a Redis server at {REDIS_URL}")
    result = docs.result(block.id)
    assert result.returncode == 0, f"README.md:{block.line} failed\n{result.report()}"
    assert result.stdout.strip(), f"README.md:{block.line} printed nothing"
    EXECUTED.add(block.id)


def test_readme_proxy_cache_was_used(docs: Docs) -> None:
    offline = next(b for b in SHELL_BLOCKS if "sglang-cached export" in b.code)
    output = docs.result(offline.id)
    assert "exported" in output.stderr and "imported" in output.stderr, output.report()
    curl = next(b for b in SHELL_BLOCKS if "Cache-Control: no-store" in b.code)
    headers = docs.result(curl.id).stdout.lower()
    assert "x-cache: hit" in headers and "x-cache: bypass" in headers, headers


# ---------------------------------------------------------------------- examples


def test_readme_runs_the_examples_against_its_servers(docs: Docs) -> None:
    block = next(b for b in SHELL_BLOCKS if "examples/curl_examples.sh" in b.code)
    out = docs.result(block.id).stdout
    assert out.count("\nDone.") == 3, out
    assert "Nothing answers at" not in out, out
    assert f"sglang-cached at {docs.proxy_url}" in out, out  # openai_client.py
    assert f"SGLang server: {docs.sglang_url}" in out, out  # cached_client.py


@pytest.mark.parametrize("name", SELF_STARTED)
def test_example_starts_what_it_needs(name: str, docs: Docs) -> None:
    result = docs.result(name)
    assert result.returncode == 0, result.report()
    out = result.stdout
    assert "Nothing answers at" in out, out
    assert out.rstrip().endswith("Done."), result.report()
    if name == "cached_client.py":
        assert "n=5: 3 cached + 2 new" in out and "5 from cache, 0 generated" in out, out
    else:
        assert "X-Cache: HIT" in out and "X-Cache: PARTIAL" in out, out


def test_make_demo_script(docs: Docs) -> None:
    result = docs.result("demo.py")
    assert result.returncode == 0, result.report()
    assert "X-Cache: PARTIAL" in result.stdout, result.stdout
    assert "Stopped the proxy and the fake server." in result.stdout


@pytest.mark.gateway_differs("the README's blocks talk to one SGLang (batch /generate, /tokenize)")
def test_all_runnable_blocks_ran(request: pytest.FixtureRequest) -> None:
    selected = {item.name for item in request.session.items}
    wanted = {b.id for b in RUNNABLE if f"test_readme_block[{b.id}]" in selected}
    if len(wanted) < len(RUNNABLE):
        pytest.skip("only some README blocks were selected")
    redis_blocks = {b.id for b in RUNNABLE if b.tag == "needs"}
    missing = wanted - EXECUTED - (set() if redis_answers() else redis_blocks)
    assert not missing, f"README blocks that did not run (or failed): {sorted(missing)}"


# ---------------------------------------------------------------------- configuration tables


def config_table(name: str) -> dict[str, list[str]]:
    """Rows of the table after ``<!-- config: NAME -->``: first cell (unquoted) -> cells."""
    text = README.read_text(encoding="utf-8")
    marker = f"<!-- config: {name} -->"
    assert marker in text, f"README.md has no {marker}"
    rows: dict[str, list[str]] = {}
    started = False
    for line in text.split(marker, 1)[1].splitlines():
        if line.startswith("|"):
            started = True
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if set(cells[0]) <= {"-", ":"} or cells[0] in ("argument", "flag", "field"):
                continue
            rows[cells[0].strip("`")] = [c.strip("`") for c in cells]
        elif started:
            break
    return rows


def same_default(cell: str, default: object) -> bool:
    if default is inspect.Parameter.empty:
        return cell == "(required)"
    if isinstance(default, bool) or default is None or isinstance(default, str):
        return cell == str(default)
    try:
        return float(cell.replace("_", "")) == float(default)  # type: ignore[arg-type]
    except ValueError:
        return False


def check_signature(table: str, func: Callable[..., object]) -> None:
    rows = config_table(table)
    params = {
        name: p.default
        for name, p in inspect.signature(func).parameters.items()
        if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
    assert set(rows) == set(params), f"{table}: README rows differ from the signature"
    for name, default in params.items():
        assert same_default(rows[name][1], default), f"{table}: {name} default {default!r}"


def test_config_tables_match_the_code() -> None:
    from sglang_client import CachedClient, SessionManager, SGLangClient
    from sglang_client.cache import MemoryStore, RedisStore, SQLiteStore

    check_signature("SGLangClient", SGLangClient.__init__)
    check_signature("SessionManager", SessionManager.__init__)
    check_signature("SessionManager.create_session", SessionManager.create_session)
    check_signature("CachedClient", CachedClient.__init__)
    check_signature("MemoryStore", MemoryStore.__init__)
    check_signature("SQLiteStore", SQLiteStore.__init__)
    check_signature("RedisStore", RedisStore.__init__)


def test_fake_server_table_matches_config_and_cli() -> None:
    from sglang_client.testing import FakeServerConfig
    from sglang_client.testing.__main__ import parse_args

    rows = config_table("FakeServerConfig")
    assert set(rows) == {f.name for f in fields(FakeServerConfig)}
    cli = vars(parse_args([]))
    for field in fields(FakeServerConfig):
        _, flag, default, _ = rows[field.name]
        assert same_default(default, field.default), field.name
        if field.name in cli:
            assert flag == "--" + field.name.replace("_", "-")
            assert cli[field.name] == field.default, field.name
        else:
            assert flag == "(none)", field.name
    assert set(cli) - {f.name for f in fields(FakeServerConfig)} == {"host", "port"}


def test_sglang_cached_tables_match_the_cli() -> None:
    from sglang_client.server.cli import _parser

    commands = _parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for table, command in (("sglang-cached start", "start"), ("sglang-cached offline", "export")):
        rows = config_table(table)
        actions = [a for a in commands[command]._actions if a.option_strings != ["-h", "--help"]]
        flags = {a.option_strings[0]: a for a in actions if a.option_strings}
        assert set(rows) == set(flags), table
        for flag, action in flags.items():
            default = inspect.Parameter.empty if action.required else action.default
            assert same_default(rows[flag][1], default), f"{table}: {flag}"
