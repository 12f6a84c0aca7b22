"""``sglang-cached``: the caching HTTP proxy (ASGI app and CLI)."""

from __future__ import annotations

from sglang_client.server.app import ProxyApp, ProxyConfig, create_app

__all__ = ["ProxyApp", "ProxyConfig", "create_app"]
