"""A protocol-faithful fake SGLang server for tests and CI (no GPU).

``create_fake_app()`` returns the raw ASGI app; ``FakeSGLangServer`` runs it with uvicorn on a
free loopback port in a background thread; ``python -m sglang_client.testing`` serves it from
the command line; ``GatewayCluster`` puts SGLang's real Model Gateway (``smg``) in front of
several of them. Behaviour follows the SGLang wire protocol (native ``/generate``, sessions,
OpenAI routes, error shapes), with deterministic text, a simulated radix cache, latency knobs
and fault injection.

Example:
    ```python
    from sglang_client.testing import FakeSGLangServer

    with FakeSGLangServer(seed=0) as server:
        ...  # point any HTTP client at server.url
    ```
"""

from __future__ import annotations

from sglang_client.testing._config import FakeServerConfig
from sglang_client.testing._gateway import GatewayCluster, find_smg
from sglang_client.testing._server import FakeSGLangServer
from sglang_client.testing.app import FakeSGLangApp, create_fake_app

__all__ = [
    "FakeSGLangApp",
    "FakeSGLangServer",
    "FakeServerConfig",
    "GatewayCluster",
    "create_fake_app",
    "find_smg",
]
