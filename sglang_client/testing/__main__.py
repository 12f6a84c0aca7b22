"""``python -m sglang_client.testing``: serve the fake SGLang server (flags mirror SGLang's)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sglang_client._extras import MissingExtraError, require
from sglang_client.testing._server import bind_loopback, quiet_injected_faults
from sglang_client.testing.app import create_fake_app

__all__ = ["main", "parse_args"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m sglang_client.testing",
        description="A fake SGLang server (no GPU): deterministic text, real wire protocol.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    add("--port", type=int, default=30000, help="port; 0 picks a free one (default 30000)")
    add("--model-path", default="fake/sglang-tiny")
    add("--served-model-name", default=None)
    add("--api-key", default=None)
    add("--incremental-streaming-output", action="store_true")
    add("--latency-per-token", type=float, default=0.0, metavar="S")
    add("--time-to-first-token", type=float, default=0.0, metavar="S")
    add("--prefill-time-per-token", type=float, default=0.0, metavar="S")
    add("--fail-503-rate", type=float, default=0.0, metavar="F")
    add("--fail-500-rate", type=float, default=0.0, metavar="F")
    add("--drop-stream-rate", type=float, default=0.0, metavar="F")
    add("--startup-delay", type=float, default=0.0, metavar="S")
    add("--context-length", type=int, default=4096)
    add("--stream-interval", type=int, default=1)
    add("--radix-cache-tokens", type=int, default=1_000_000)
    add("--max-running-requests", type=int, default=None)
    add("--enable-metrics", action="store_true")
    add("--enable-cache-report", action="store_true")
    add("--seed", type=int, default=None)
    add(
        "--tokenizer",
        choices=("bpe", "words"),
        default="bpe",
        help="bpe: seams can re-tokenize differently, as with a real BPE (default); words: the"
        " older word-or-bytes tokenizer",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until interrupted; print the URL once the socket listens."""
    args = parse_args(argv)
    try:
        uvicorn = require("uvicorn", "python -m sglang_client.testing")
    except MissingExtraError as exc:
        sys.exit(f"error: {exc}")
    options = vars(args)
    host, port = options.pop("host"), options.pop("port")
    try:
        app = create_fake_app(**options)
    except (TypeError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    try:
        sock = bind_loopback(host, port)
    except OSError as exc:  # a taken port, an address this machine does not have
        sys.exit(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}")
    bound = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    quiet_injected_faults()
    app.mark_started()
    print(f"Fake SGLang server listening on http://{host}:{bound}", flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
