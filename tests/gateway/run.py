"""``make test-gateway``: the integration suite through SGLang's Model Gateway.

Starts the real ``smg`` (sglang-router 0.3.2, the project's ``gateway`` extra) with its default
``cache_aware`` policy in front of two fake workers on loopback (``GatewayCluster``), then runs
``pytest tests/integration`` with ``SGLANG_URL`` naming the gateway, as ``make test-real`` does
with a real SGLang: tests that need a fake-only knob skip, and so do the few marked
``gateway_differs`` (routes smg 0.3.2 does not forward; each names what), when
``SGLANG_GATEWAY=1``. Helpers that only learn a prompt's ids tokenize at a worker
(``SGLANG_TOKENIZE_URL``). Extra arguments go to pytest; it exits with pytest's code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from sglang_client.testing import GatewayCluster, find_smg  # noqa: E402

# Like make test-real's main server: metrics and cache reports on, generation that takes a
# moment (so a request can still be running when a test acts), a bounded batch.
WORKERS = {
    "enable_metrics": True,
    "enable_cache_report": True,
    "latency_per_token": 0.002,
    "max_running_requests": 8,
}


def main(argv: list[str]) -> int:
    if find_smg() is None:
        print("error: smg is not installed: pip install -e '.[gateway]'", file=sys.stderr)
        return 1
    with GatewayCluster(2, policy="cache_aware", **WORKERS) as cluster:
        env = {
            **os.environ,
            "SGLANG_URL": cluster.url,
            "SGLANG_GATEWAY": "1",
            "SGLANG_TOKENIZE_URL": cluster.worker_urls[0],
        }
        print(f"smg on {cluster.url} in front of {', '.join(cluster.worker_urls)}", flush=True)
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        return subprocess.call([*command, "tests/integration", *argv], env=env, cwd=REPO)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
