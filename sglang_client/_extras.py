"""Optional dependencies, imported when first needed, with a one-line error naming the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "require"]

_EXTRA = {"uvicorn": "server", "redis": "redis"}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra brings it."""


def require(module: str, needed_by: str) -> ModuleType:
    """Import ``module``, or raise ``MissingExtraError`` saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = _EXTRA.get(module, module)
        raise MissingExtraError(
            f"{needed_by} needs {module}, from the [{extra}] extra:"
            f" pip install 'sglang-client[{extra}]'"
        ) from exc
