"""When to retry, and how long to wait: one policy for every endpoint.

Retried: connection errors and timeouts raised before any response byte arrived, 502/503/504,
and the 500 with which SGLang's Model Gateway says it could not reach the worker it chose.
Never retried: other statuses (a 4xx will fail the same way again), anything after a stream has
started yielding (the caller has already seen output).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from time import time
from typing import TypeVar

import anyio
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from sglang_client.errors import APIConnectionError, APIStatusError

__all__ = ["RETRYABLE_STATUS_CODES", "RetryPolicy", "parse_retry_after"]

RETRYABLE_STATUS_CODES = frozenset({502, 503, 504})
# smg answers a request it could not send to its chosen worker (a worker that just died, before
# a health check took it out) with 500 and reqwest's message: nothing ran, so a retry is safe,
# and a later attempt goes to the worker that replaces it.
_GATEWAY_SEND_FAILED = "error sending request for url"
MAX_RETRY_AFTER = 60.0

T = TypeVar("T")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), if usable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time()
        except (TypeError, ValueError, IndexError):
            return None
    if 0 <= seconds <= MAX_RETRY_AFTER:
        return seconds
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped; ``Retry-After`` wins when the server sends one.

    Args:
        max_retries: retries after the first attempt (0 disables retrying).
        base_delay: the first backoff's upper bound in seconds; doubles per attempt.
        max_delay: the cap on any single wait.
    """

    max_retries: int = 2
    base_delay: float = 0.5
    max_delay: float = 8.0

    @staticmethod
    def is_retryable(exc: BaseException) -> bool:
        """Whether ``exc`` (raised before any response byte was consumed) may be retried."""
        if isinstance(exc, APIStatusError):
            if exc.status_code == 500:
                return str(exc).startswith(_GATEWAY_SEND_FAILED)
            return exc.status_code in RETRYABLE_STATUS_CODES
        return isinstance(exc, APIConnectionError)

    def delay(self, attempt: int, exc: BaseException | None = None) -> float:
        """Seconds to sleep before retry number ``attempt`` (1-based)."""
        if isinstance(exc, APIStatusError) and exc.response is not None:
            retry_after = parse_retry_after(exc.response.headers.get("retry-after"))
            if retry_after is not None:
                return retry_after
        ceiling = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return random.uniform(ceiling / 2, ceiling) if ceiling > 0 else 0.0

    async def call(self, attempt_once: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt_once`` under this policy; tenacity is set up only after a failure."""
        try:
            return await attempt_once()
        except Exception as exc:
            if self.max_retries <= 0 or not self.is_retryable(exc):
                raise
            first_failure = exc

        def wait(state: RetryCallState) -> float:
            outcome = state.outcome
            exc = outcome.exception() if outcome is not None else first_failure
            return self.delay(state.attempt_number + 1, exc)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_retries),
            wait=wait,
            retry=retry_if_exception(self.is_retryable),
            reraise=True,
            sleep=_sleep,
        )

        async def attempt() -> T:
            # tenacity awaits only what it recognises as a coroutine function.
            return await attempt_once()

        await _sleep(self.delay(1, first_failure))
        return await retrying(attempt)


async def _sleep(seconds: float) -> None:
    await anyio.sleep(seconds)
