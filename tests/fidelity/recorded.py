"""The exchanges recorded from a real SGLang 0.5.23 (``recorded/*.txt``), and replaying them.

Each file holds one request (method, path, optional headers, body) and the response real
SGLang gave it (status, headers, body; an SSE body as the raw bytes, one ``repr`` per line).
They were recorded on this kind of machine from the CPU setup ``make test-real`` builds: a
tiny random Llama served as ``tiny-llama``, context 2048, ``--enable-metrics``, and a second
server with ``--api-key secret-key``.
"""

from __future__ import annotations

import ast
import json
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = ["CASES", "Case", "Response", "Target", "replay_all"]

HERE = Path(__file__).resolve().parent / "recorded"
SESSION_ID = "921f32802a1545d4884850776e16c81b"
SESSION_RID = "8e12417ff7e847d9b70f7bcf974ad20c"
RECORDED_KEY = "secret-key"
_HEADER = re.compile(r"^([A-Za-z][A-Za-z0-9-]*): (.*)$")


@dataclass(frozen=True)
class Response:
    """What a server answered: status, the headers that matter, the raw body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


@dataclass(frozen=True)
class Case:
    """One recorded exchange."""

    name: str
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes | None
    recorded: Response


def _parse(path: Path) -> Case:
    text = path.read_text(encoding="utf-8")
    request, rest = text.split("### response", 1)
    lines = request.splitlines()[1:]  # drop "### request"
    method, target = lines[0].split(" ", 1)
    headers: dict[str, str] = {}
    i = 1
    while i < len(lines) and _HEADER.match(lines[i]):
        name, value = _HEADER.match(lines[i]).groups()  # type: ignore[union-attr]
        headers[name] = value
        i += 1
    body_text = "\n".join(lines[i:]).strip("\n")
    head, body_part = rest.split("### body", 1)
    head_lines = head.splitlines()[1:]  # drop the "(0.046 s)" rest of the marker line
    status = int(head_lines[0].split(" ")[1])
    response_headers = {}
    for line in head_lines[1:]:
        match = _HEADER.match(line)
        if match:
            response_headers[match.group(1).lower()] = match.group(2)
    marker, _, raw_body = body_part.partition("\n")
    if "raw bytes" in marker:
        reprs = [ast.literal_eval(line) for line in raw_body.splitlines() if line.strip()]
        body = b"\n".join(reprs)
    else:
        body = raw_body.rstrip("\n").encode()
        if body and response_headers.get("content-type", "").startswith("application/json"):
            body = json.dumps(json.loads(body), separators=(",", ":")).encode()
    return Case(
        name=path.stem,
        method=method,
        path=target,
        headers=headers,
        body=body_text.encode() if body_text else None,
        recorded=Response(status, response_headers, body),
    )


CASES: dict[str, Case] = {case.name: case for case in map(_parse, sorted(HERE.glob("*.txt")))}


@dataclass
class Target:
    """A live server to replay the cases on: the main one, and one that wants ``key``."""

    url: str
    keyed_url: str
    key: str
    session: dict[str, str] = field(default_factory=dict)  # recorded id -> live id


def _send(client: httpx.Client, case: Case, url: str, body: bytes | None, key: str) -> Response:
    headers = {name: value.replace(RECORDED_KEY, key) for name, value in case.headers.items()}
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    response = client.request(case.method, url + case.path, content=body, headers=headers)
    keep = {k.lower(): v for k, v in response.headers.items()}
    return Response(response.status_code, keep, response.content)


def _live_body(case: Case, state: dict[str, str]) -> bytes | None:
    if case.body is None:
        return None
    body = case.body.decode()
    for old, new in state.items():
        body = body.replace(old, new)
    return body.encode()


def replay_all(target: Target) -> dict[str, Response]:
    """Send every case to ``target`` (in an order that keeps sessions and aborts meaningful)."""
    out: dict[str, Response] = {}
    state: dict[str, str] = {}
    with httpx.Client(timeout=60) as client:

        def run(name: str) -> Response:
            case = CASES[name]
            keyed = name.startswith("apikey_")
            url = target.keyed_url if keyed else target.url
            response = _send(client, case, url, _live_body(case, state), target.key)
            out[name] = response
            return response

        opened = run("open_session")
        state[SESSION_ID] = json.loads(opened.body)
        first = run("session_generate_1")
        state[SESSION_RID] = json.loads(first.body)["meta_info"]["id"]
        for name in (
            "session_generate_2",
            "close_session",
            "close_session_again",
            "session_generate_after_close",
        ):
            run(name)
        for running, abort in (
            ("abort_inflight_stream", "abort_request_inflight"),
            ("abort_inflight_plain", "abort_request_inflight_2"),
        ):
            worker = threading.Thread(target=run, args=(running,))
            worker.start()
            time.sleep(0.5)  # let it start generating its 1900 tokens
            with httpx.Client(timeout=60) as other:
                case = CASES[abort]
                out[abort] = _send(other, case, target.url, case.body, target.key)
            worker.join(60)
        for name in CASES:
            if name not in out:
                run(name)
    return out


def parse_json(body: bytes) -> Any:
    return json.loads(body)
