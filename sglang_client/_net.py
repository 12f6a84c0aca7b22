"""Listening sockets for the servers this package runs (the proxy, the fake)."""

from __future__ import annotations

import socket

__all__ = ["bind_loopback"]


def bind_loopback(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket (port 0 picks a free port); binding first avoids port races."""
    # proto=IPPROTO_TCP matters: asyncio enables TCP_NODELAY on accepted sockets only then,
    # and without it every response pays a 40 ms Nagle/delayed-ACK stall.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
