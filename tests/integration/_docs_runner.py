"""Process plumbing for ``test_docs``: run scripts fast and in isolation, stop process groups.

``ForkServer`` is a Python interpreter that has imported the heavy modules once (pydantic,
aiohttp, openai, uvicorn, sglang_client) and then runs each script as ``__main__`` in a forked
child with its own stdout/stderr files, cwd and environment: a fresh process per script, without
paying ~2 s of imports each time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ForkServer", "Result", "stop_group"]


@dataclass
class Result:
    """What a run left behind."""

    returncode: int
    stdout: str
    stderr: str

    def report(self) -> str:
        """Everything, for an assertion message."""
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


# Serves one job per stdin line: {"path", "argv", "cwd", "env", "out", "err", "timeout"}; forks,
# runs the script as __main__ in the child with fds 1 and 2 on the given files, answers
# {"returncode"} on its stdout.
FORK_SERVER = r"""
import importlib, json, os, runpy, signal, sys, traceback
for name in ("sglang_client", "sglang_client.cache", "sglang_client.testing", "openai", "uvicorn"):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
reply = os.fdopen(os.dup(1), "w")
null = os.open(os.devnull, os.O_WRONLY)
os.dup2(null, 1)
for line in sys.stdin:
    job = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # stdin carries the jobs: not theirs
            os.dup2(os.open(job["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
            os.dup2(os.open(job["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
            os.chdir(job["cwd"])
            os.environ.clear()
            os.environ.update(job["env"])
            signal.alarm(job["timeout"])  # a hung script dies rather than hang the suite
            sys.argv = job["argv"]
            sys.path[0] = os.path.dirname(job["path"])
            runpy.run_path(job["path"], run_name="__main__")
            code = 0
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    reply.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
    reply.flush()
"""


class ForkServer:
    """A preloaded interpreter that runs Python scripts in forked children, one at a time."""

    def __init__(self) -> None:
        # Its own process group: whatever a killed script left running goes with it.
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FORK_SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def run(
        self, script: Path, argv: list[str], cwd: Path, env: dict[str, str], timeout: float
    ) -> Result:
        """Run ``script`` (as ``python script``) and wait; a run over ``timeout`` s is killed."""
        out, err = cwd / f".{script.name}.{id(self)}.out", cwd / f".{script.name}.{id(self)}.err"
        job = {"path": str(script), "argv": argv, "cwd": str(cwd), "env": env}
        job.update(out=str(out), err=str(err), timeout=int(timeout))
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, "the fork server died"
        returncode = json.loads(answer)["returncode"]
        return Result(returncode, out.read_text(), err.read_text())

    def close(self) -> None:
        """Stop the server, and anything its scripts left running."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.stdout.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        stop_group(self.proc)


def stop_group(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM a process group (then SIGKILL) and wait until it is gone."""
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                try:
                    os.killpg(proc.pid, 0)
                except ProcessLookupError:
                    return
            time.sleep(0.05)
