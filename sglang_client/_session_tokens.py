"""Token-exact sessions: where a turn's new ids come from, and which output ids a session keeps.

A text session that re-sends its history as text lets the server re-tokenize it, and with a BPE
tokenizer the ids at turn seams can differ from those the model generated, so the radix cache
misses from there on. A token-exact session keeps the ids instead and tokenizes only new text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from sglang_client.errors import NotFoundError, SGLangError, TokenizerUnavailable
from sglang_client.types import MetaInfo

__all__ = ["LocalTokenizer", "TokenSource", "kept_output_ids"]


class LocalTokenizer(Protocol):
    """A tokenizer object in the process: ``transformers``' tokenizers and ``tokenizers.Tokenizer``.

    ``encode`` returns a list of ids (``transformers``) or an object with ``.ids``
    (``tokenizers``); both are accepted.
    """

    def encode(self, text: str, add_special_tokens: bool = ...) -> Any: ...


class TokenSource:
    """Tokenizes a turn's new text: with the caller's tokenizer, else the server's ``/tokenize``.

    The first turn's text (system prompt and first input) is tokenized with special tokens, as
    SGLang tokenizes a ``/generate`` text; later pieces without, since they are appended.
    """

    __slots__ = ("_client", "_tokenizer")

    def __init__(self, client: object, tokenizer: LocalTokenizer | None) -> None:
        if tokenizer is not None and not callable(getattr(tokenizer, "encode", None)):
            raise TypeError(
                f"tokenizer must have an encode() method, not {type(tokenizer).__name__}"
            )
        self._client = client
        self._tokenizer = tokenizer

    @property
    def is_local(self) -> bool:
        """Whether a tokenizer in this process is used (no extra request per turn)."""
        return self._tokenizer is not None

    async def encode(self, text: str, *, first: bool) -> tuple[int, ...]:
        """The ids of ``text``.

        Raises:
            TokenizerUnavailable: the server has no ``/tokenize`` (or the client no
                ``tokenize``) and no local tokenizer was given.
            SGLangError: the tokenizer returned something other than a list of ints.
        """
        if self._tokenizer is not None:
            result = self._tokenizer.encode(text, add_special_tokens=first)
            ids = getattr(result, "ids", result)
        else:
            tokenize = getattr(self._client, "tokenize", None)
            if tokenize is None:
                raise TokenizerUnavailable(
                    f"{type(self._client).__name__} has no tokenize(); pass tokenizer= to"
                    " SessionManager, or token_exact=False"
                )
            try:
                ids = await tokenize(text, add_special_tokens=first)
            except NotFoundError as exc:
                raise TokenizerUnavailable(
                    "the server has no /tokenize route; pass tokenizer= to SessionManager,"
                    " or token_exact=False"
                ) from exc
        if not isinstance(ids, Sequence) or not all(type(t) is int for t in ids):
            raise SGLangError(f"the tokenizer returned {type(ids).__name__}, not a list of ints")
        return tuple(ids)


def kept_output_ids(output_ids: Sequence[int], meta: MetaInfo) -> tuple[int, ...]:
    """The output ids a session continues from: all, less a final stop token (EOS).

    The stop token is not part of the answer's text, so leaving it out keeps ``token_ids`` and
    ``prefix`` the same conversation; it costs no cache hit, since SGLang does not cache a
    finished request's last token. A matched stop *string* stays: its ids were generated and
    cached, although the text leaves it out.
    """
    finish = meta.finish_reason
    if (
        output_ids
        and finish is not None
        and finish.type == "stop"
        and type(finish.matched) is int
        and output_ids[-1] == finish.matched
    ):
        return tuple(output_ids[:-1])
    return tuple(output_ids)
