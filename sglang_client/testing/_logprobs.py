"""Token logprobs for ``return_logprob`` (protocol §2.4), consistent with the generator.

The pseudo model gives candidate rank ``r`` (see ``_generation.candidate``) the log-probability
``-r*s - log Z`` over 16 candidates, with a sharpness ``s`` drawn from the context hash, so a
greedy token has the highest logprob (and confidence varies from token to token), and
``top_logprobs_num`` lists the candidates in rank order. A token that is none of the candidates
(e.g. a prompt token) gets a low, deterministic value.
"""

from __future__ import annotations

import math
from typing import Any

from sglang_client.testing._generation import advance_state, candidate, context_state
from sglang_client.testing._tokenizer import Tokenizer

__all__ = ["LogprobTracker"]

_RANKS = 16


def _rank_logprobs(state: int) -> list[float]:
    sharpness = 0.2 + (state % 1024) / 512.0
    log_z = math.log(sum(math.exp(-r * sharpness) for r in range(_RANKS)))
    return [-r * sharpness - log_z for r in range(_RANKS)]


class LogprobTracker:
    """Input and (incrementally extended) output logprobs of one sub-request."""

    __slots__ = (
        "_state",
        "_tokenizer",
        "_with_text",
        "input",
        "input_top",
        "output",
        "output_top",
        "top_n",
    )

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: list[int],
        start_len: int,
        top_n: int,
        with_text: bool,
    ) -> None:
        self._tokenizer = tokenizer
        self._with_text = with_text
        self.top_n = max(0, min(top_n, _RANKS))
        self.input: list[list[Any]] = []
        self.input_top: list[Any] = []
        self.output: list[list[Any]] = []
        self.output_top: list[Any] = []
        state = context_state([])
        for position, token in enumerate(prompt_ids):
            if 0 <= start_len <= position:
                if position == 0:
                    self.input.append([None, token, self._text(token)])
                    self.input_top.append(None)
                else:
                    self.input.append(self._entry(state, token))
                    self.input_top.append(self._top(state))
            state = advance_state(state, token)
        self._state = state

    def _text(self, token: int) -> str | None:
        return self._tokenizer.texts[token] if self._with_text else None

    def _entry(self, state: int, token: int) -> list[Any]:
        for rank in range(_RANKS):
            if candidate(self._tokenizer, state, rank, True)[0] == token:
                return [_rank_logprobs(state)[rank], token, self._text(token)]
        low = -9.0 - (advance_state(state, token) % 1000) / 1000.0
        return [low, token, self._text(token)]

    def _top(self, state: int) -> list[list[Any]] | None:
        if not self.top_n:
            return None
        top = []
        logprobs = _rank_logprobs(state)
        for rank in range(self.top_n):
            token = candidate(self._tokenizer, state, rank, True)[0]
            top.append([logprobs[rank], token, self._text(token)])
        return top

    def extend(self, output_ids: list[int]) -> None:
        """Compute logprobs for output tokens not seen yet."""
        state = self._state
        for token in output_ids[len(self.output) :]:
            self.output.append(self._entry(state, token))
            self.output_top.append(self._top(state))
            state = advance_state(state, token)
        self._state = state

    def meta(self, start: int) -> dict[str, Any]:
        """The ``meta_info`` logprob keys, with output lists from ``start`` (incremental)."""
        meta: dict[str, Any] = {
            "input_token_logprobs": self.input,
            "output_token_logprobs": self.output[start:],
            "output_token_logprobs_length": len(self.output),
        }
        if self.top_n:
            meta["input_top_logprobs"] = self.input_top
            meta["output_top_logprobs"] = self.output_top[start:]
        return meta
