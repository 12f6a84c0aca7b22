"""Deterministic token generation: a pseudo language model over the tiny tokenizer's words.

The next token is a pure function of a rolling 64-bit hash of the WHOLE context (prompt plus
the tokens generated so far), a candidate rank and, when sampling, a seeded RNG:

* greedy (``temperature < 1e-6``) always takes candidate 0, so the output depends on the
  context only: identical for every request and sample, and continuing a prompt with part of
  its own greedy output yields the rest of that output (as a real model does);
* sampling draws the candidate rank from a temperature/top-k/top-p/min-p shaped distribution
  with ``random.Random(seed)``; the seed is ``sampling_seed`` mixed with the sample index, or a
  fresh draw from the server RNG.

Each candidate may be EOS with a small probability, so answers end naturally.
"""

from __future__ import annotations

import bisect
import math
import random
from typing import Any

from sglang_client.testing._params import SamplingParams
from sglang_client.testing._tokenizer import EOS_TOKEN_ID, Tokenizer

__all__ = ["Generation", "advance_state", "candidate", "context_state", "sample_seed"]

_MASK = (1 << 64) - 1
_SEED = 0x2545F4914F6CDD1D
_SALT = 0x5BD1E995
_EOS_PER_MILLE = 12
_MAX_CANDIDATES = 16
_FIRST_REGULAR = 4  # ids below are special tokens

# Hashing uses Python's tuple hash (xxHash-based, and deterministic for ints, unlike str
# hashing): it is several times cheaper than a pure-Python mixer on this hot path.


def advance_state(state: int, token: int) -> int:
    """The rolling hash of a context extended by ``token``."""
    return hash((state, token))


def candidate(tokenizer: Tokenizer, state: int, rank: int, allow_eos: bool) -> tuple[int, int]:
    """The token of candidate ``rank`` after a context with hash ``state``, and its hash bits."""
    h = hash((state, rank, _SALT)) & _MASK
    if allow_eos and (h >> 40) % 1000 < _EOS_PER_MILLE:
        return EOS_TOKEN_ID, h
    choices = tokenizer.generation_ids
    return choices[h % len(choices)], h


def context_state(ids: list[int]) -> int:
    """The rolling hash of a context; extending it token by token gives the same value."""
    state = _SEED
    for token in ids:
        state = hash((state, token))
    return state


def sample_seed(sampling_seed: int, index: int) -> int:
    """The RNG seed of sample ``index`` of a request with ``sampling_seed``."""
    return hash((sampling_seed, index, _SALT)) & _MASK


def _cumulative(params: SamplingParams) -> list[float]:
    """Cumulative probabilities over candidate ranks 0..k-1 (top-k, top-p, min-p applied)."""
    k = min(params.top_k, _MAX_CANDIDATES)
    # Flat enough that two samples at temperature 1 rarely agree for more than a few tokens.
    weights = [math.exp(-rank / (2.0 * params.temperature)) for rank in range(k)]
    total = sum(weights)
    probs = [w / total for w in weights]
    kept: list[float] = []
    mass = 0.0
    for p in probs:
        if p < params.min_p * probs[0]:
            break
        kept.append(p)
        mass += p
        if mass >= params.top_p:
            break
    cumulative: list[float] = []
    running = 0.0
    for p in kept:
        running += p / mass
        cumulative.append(running)
    cumulative[-1] = 1.0
    return cumulative


class Generation:
    """One sample of one request, advanced a token at a time by ``step()``.

    ``output_ids`` include the token that finished the request (EOS or a stop token id);
    ``text`` is the final text with stop strings / stop tokens trimmed unless ``no_stop_trim``;
    ``visible_text()`` is what may be streamed so far (a tail that could start a stop string is
    held back).
    """

    __slots__ = (
        "_choices",
        "_cumulative",
        "_rng",
        "_state",
        "_stop_hold",
        "_text",
        "_texts",
        "_tokenizer",
        "finish_reason",
        "max_tokens",
        "output_ids",
        "params",
        "stop_pos",
    )

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: list[int],
        params: SamplingParams,
        max_tokens: int,
        seed: int | None,
    ) -> None:
        self._tokenizer = tokenizer
        self._choices = tokenizer.generation_ids
        self._texts = tokenizer.texts
        self.params = params
        self.max_tokens = max_tokens
        self.output_ids: list[int] = []
        self.finish_reason: dict[str, Any] | None = None
        self.stop_pos = -1
        self._state = context_state(prompt_ids)
        self._text = ""
        self._stop_hold = max((len(s) for s in params.stop), default=0)
        self._rng: random.Random | None = None
        self._cumulative: list[float] = [1.0]
        if not params.is_greedy:
            self._rng = random.Random(seed)
            self._cumulative = _cumulative(params)
        if max_tokens <= 0:
            self.finish_reason = {"type": "length", "length": 0}

    @property
    def finished(self) -> bool:
        """Whether a finish reason was set."""
        return self.finish_reason is not None

    def step(self) -> None:
        """Generate one token and update the finish reason.

        This is the hot loop of the fake server, so ``candidate()`` and ``advance_state()``
        are inlined here (``test_logprobs_follow_the_generator`` checks they agree).
        """
        params = self.params
        output = self.output_ids
        count = len(output)
        allow_stop = count >= params.min_new_tokens
        rank = 0
        if self._rng is not None:
            rank = bisect.bisect_left(self._cumulative, self._rng.random())
        h = hash((self._state, rank, _SALT)) & _MASK
        if params.logit_bias:
            token = self._biased(allow_stop and not params.ignore_eos)
        elif allow_stop and not params.ignore_eos and (h >> 40) % 1000 < _EOS_PER_MILLE:
            token = EOS_TOKEN_ID
        else:
            choices = self._choices
            token = choices[h % len(choices)]
            if not allow_stop and params.stop_token_ids:
                # The min_new_tokens penalizer masks stop tokens until enough were generated.
                shift = 1
                while token in params.stop_token_ids and shift < len(choices):
                    token = choices[(h + shift) % len(choices)]
                    shift += 1
        output.append(token)
        self._state = hash((self._state, token))
        previous = len(self._text)
        if token >= _FIRST_REGULAR or not params.skip_special_tokens:
            self._text += self._texts[token]
        count += 1
        if count >= self.max_tokens:
            self.finish_reason = {"type": "length", "length": self.max_tokens}
        elif token == EOS_TOKEN_ID or token in params.stop_token_ids:
            self.finish_reason = {"type": "stop", "matched": token}
        elif params.stop and count > params.min_new_tokens:
            self._check_stop_strings(previous)

    def _biased(self, allow_eos: bool) -> int:
        """The next token with ``logit_bias`` added to the pseudo model's scores.

        Candidate rank ``r`` scores ``-r`` (the scale ``_cumulative`` samples on), any other
        token ``-16``; a bias is added to its token's score. Greedy takes the best score,
        sampling draws with the request's temperature: a bias of +100 forces its token, -100
        bans it, as on SGLang.
        """
        scores: dict[int, float] = {}
        for rank in range(_MAX_CANDIDATES):
            token = candidate(self._tokenizer, self._state, rank, allow_eos)[0]
            scores.setdefault(token, -float(rank))
        for token, bias in self.params.logit_bias:
            scores[token] = scores.get(token, -float(_MAX_CANDIDATES)) + bias
        if self._rng is None:
            return max(scores, key=lambda t: (scores[t], -t))
        top = max(scores.values())
        temperature = 2.0 * self.params.temperature
        tokens = sorted(scores)
        weights = [math.exp((scores[t] - top) / temperature) for t in tokens]
        return self._rng.choices(tokens, weights)[0]

    def _check_stop_strings(self, previous: int) -> None:
        text = self._text
        best = -1
        matched = ""
        for stop in self.params.stop:
            pos = text.find(stop, max(0, previous - len(stop) + 1))
            if pos != -1 and (best == -1 or pos < best):
                best, matched = pos, stop
        if best != -1:
            self.stop_pos = best
            self.finish_reason = {"type": "stop", "matched": matched}

    def abort(self, finish_reason: dict[str, Any]) -> None:
        """Finish now with ``finish_reason`` (an abort), keeping what was generated."""
        if self.finish_reason is None:
            self.finish_reason = finish_reason

    @property
    def text(self) -> str:
        """The final text (trimmed per SGLang's ``no_stop_trim`` rules)."""
        finish = self.finish_reason
        if finish is None or finish["type"] != "stop" or self.params.no_stop_trim:
            return self._text if finish is not None else self.visible_text()
        matched = finish["matched"]
        if isinstance(matched, str):
            return self._text[: self.stop_pos]
        last = self.output_ids[-1]
        if self.params.skip_special_tokens and self._tokenizer.is_special(last):
            return self._text
        return self._text[: len(self._text) - len(self._tokenizer.texts[last])]

    def visible_text(self) -> str:
        """Text safe to stream now: without a tail that may still become a stop string."""
        if self.finish_reason is not None:
            return self.text
        text = self._text
        if not self._stop_hold:
            return text
        hold = 0
        for stop in self.params.stop:
            for k in range(min(len(stop) - 1, len(text)), hold, -1):
                if text.endswith(stop[:k]):
                    hold = k
                    break
        return text[: len(text) - hold] if hold else text
