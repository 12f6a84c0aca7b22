"""Defaults shared by the client and its helpers."""

from __future__ import annotations

import enum
from typing import Final, Literal

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_RETRY_BASE_DELAY",
    "DEFAULT_RETRY_MAX_DELAY",
    "DEFAULT_TIMEOUT",
    "NOT_GIVEN",
    "NotGiven",
]

DEFAULT_TIMEOUT: Final = 60.0
DEFAULT_MAX_RETRIES: Final = 2
DEFAULT_MAX_CONNECTIONS: Final = 100
DEFAULT_RETRY_BASE_DELAY: Final = 0.5
DEFAULT_RETRY_MAX_DELAY: Final = 8.0


class NotGiven(enum.Enum):
    """Marks an argument the caller did not pass.

    ``None`` cannot serve: for ``timeout`` it means "no timeout at all", which is a
    different wish from "use the client's default".
    """

    NOT_GIVEN = "NOT_GIVEN"

    def __bool__(self) -> Literal[False]:
        return False

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Final = NotGiven.NOT_GIVEN
