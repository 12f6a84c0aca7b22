"""The simulated radix (prefix) cache: the one place that touches ``PrefixTree``."""

from __future__ import annotations

from sglang_client.prefix_tree import PrefixTree

__all__ = ["RadixCache"]


class RadixCache:
    """Token-prefix cache with an LRU token budget, reporting what SGLang's radix cache reuses.

    A request first matches its prompt (``prefill``), which also stores the prompt as SGLang does
    after prefill; when it finishes, ``commit`` stores prompt + output (less the last output
    token, which SGLang has no KV for) for later requests.
    """

    __slots__ = ("_tree",)

    def __init__(self, max_tokens: int) -> None:
        self._tree = PrefixTree(max_tokens=max_tokens)

    def prefill(self, prompt_ids: list[int], store: bool = True) -> int:
        """Return the cached prefix length SGLang would report for ``prompt_ids``.

        With ``store``, the prompt is cached now, as SGLang does after prefill, so requests
        running concurrently share it; without, only ``commit`` stores it (cheaper, and the
        same when requests do not overlap). A real server always computes at least the last
        prompt token (it needs its logits), so the reported reuse is capped at
        ``len(prompt_ids) - 1``.
        """
        if not prompt_ids:
            return 0
        if store:
            matched = self._tree.insert(prompt_ids)
        else:
            matched = self._tree.estimate_cached_tokens(prompt_ids)
        return min(matched, len(prompt_ids) - 1)

    def commit(self, token_ids: list[int]) -> None:
        """Store a finished request's ids: its prompt and all but its last output token."""
        if token_ids:
            self._tree.insert(token_ids)

    def flush(self) -> None:
        """Empty the cache (``/flush_cache``)."""
        self._tree.clear()

    @property
    def total_tokens(self) -> int:
        """Tokens currently held."""
        return self._tree.total_tokens
