"""A tiny reversible tokenizer: special tokens, 256 byte tokens and a few hundred English words.

Ids 0-3 are special tokens, 4-259 the bytes 0x00-0xFF, then whole words in four spellings
(``word``, `` word``, ``Word``, `` Word``), then (BPE mode) a few merges: suffixes such as
``s`` and ``ing`` and the blank line ``"\n\n"``. Text is split GPT-2 style into pieces
(newline runs are one piece, as in Llama 3's pre-tokenizer); a piece that is a vocabulary word
becomes one token, else, in BPE mode, the longest vocabulary tokens from its left, else its UTF-8
bytes. So ``decode(encode(s), skip_special_tokens=False) == s`` for every string.

BPE mode is faithful to the property that costs sessions their cache: tokenizing a
concatenation can differ from concatenating tokenizations, at seams (``"\n" + "\n"`` is one
``"\n\n"`` token; `` year`` + ``s`` is the single word `` years``), and generated ids are
not always how their own text re-encodes (the generator may emit `` the`` then ``ing``, which
re-encodes as `` thing``). ``Tokenizer(merges=False)`` is the older word-or-bytes tokenizer,
for which the generator only emits whole words and punctuation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

__all__ = [
    "BOS_TOKEN_ID",
    "TOKENIZERS",
    "EOS_TOKEN_ID",
    "IM_END_ID",
    "IM_START_ID",
    "Tokenizer",
    "TOKENIZER",
]

_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>")
ENDOFTEXT_ID, IM_START_ID, IM_END_ID, BOS_TOKEN_ID = 0, 1, 2, 3
# Like a ChatML instruct model, a finished answer ends with <|im_end|>.
EOS_TOKEN_ID = IM_END_ID
_BYTE_BASE = len(_SPECIALS)
_WORD_BASE = _BYTE_BASE + 256

_WORD_TEXT = """
the of and to in is was for that on with as it he she they we you his her their its at by be
this from or an are not have has had but were which one all been there when who will would can
more if no out so said what up about into than them some could time only other new then these
two may first any like now my over such our man me even most made after also did many before
must through back years where much your way well down should because each just those people how
too little state good very make world still own see men work long get here between both life
being under never day same another know while last might us great old year off come since
against go came right used take three states himself few house use during without again place
around however home small found thought went say part once general high upon school every
does got united left number course war until always away something fact though water less
public put think almost hand enough far took head yet government system better set told nothing
night end why called didn find going look asked later knew point next program city business
give group toward young days let room president side social given present several order
national possible rather second face per among form important often things looked early white
case become large big need four within felt along children saw best church ever least power
development light thing seemed family interest want members mind country area others done turned
although open problem god service certain kind different thus began door help sense means whole
matter perhaps itself york times law human line above name example action company hands local
show whether five history gave today either act feet across taken past quite anything seen death
experience body word half really week car field already information tell together shall money
period held keep sure real probably free seems political cannot behind miss question air office
making brought whose special heard major problems ago became federal moment study available known
result street economic boy position reason change south board individual job society areas west
close turn love community true court force full seem am wife age future voice center woman
control common policy necessary capital france paris story river sun moon sky tree
"""
_WORDS = _WORD_TEXT.split()


def _vocab() -> list[str]:
    words: list[str] = []
    seen: set[str] = set()
    for word in _WORDS:
        for form in (word, " " + word, word.capitalize(), " " + word.capitalize()):
            if form not in seen:
                seen.add(form)
                words.append(form)
    return words


# Merges beyond whole words (BPE mode): suffixes a generator may attach to the previous word,
# and the blank line. The generator draws them with these weights (copies in its choice list).
_SUFFIXES = ("s", "es", "ed", "ing", "er", "ly")
_SUFFIX_COPIES = {"s": 30, "es": 4, "ed": 6, "ing": 6, "er": 4, "ly": 4}
_NEWLINE_COPIES = 45
# Plurals of the first words, as whole tokens: " river" + "s" generated re-encodes as " rivers".
_PLURALS = tuple(f" {w}s" for w in _WORDS[:120] if w.isalpha() and len(w) > 2)
_MERGES = (*_SUFFIXES, "\n\n", *_PLURALS)

_PIECES = re.compile(r" ?[A-Za-z]+| ?\d+| ?[^\sA-Za-z\d]+|\s+(?!\S)|\s+")
# Newline runs (with the blanks before them) are one piece, so "\n" + "\n" can merge.
_BPE_PIECES = re.compile(r"[^\S\n]*\n+| ?[A-Za-z]+| ?\d+| ?[^\sA-Za-z\d]+|\s+(?!\S)|\s+")
_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(s) for s in _SPECIALS) + ")")


class Tokenizer:
    """Encode text to ids and back; the fake server's only tokenizer.

    Example:
        ```python
        ids = TOKENIZER.encode("The capital of France is")
        assert TOKENIZER.decode(ids) == "The capital of France is"
        ```
    """

    def __init__(self, merges: bool = True) -> None:
        words = _vocab()
        extra = [m for m in _MERGES if m not in words] if merges else []
        self.merges = merges
        self._word_ids = {w: _WORD_BASE + i for i, w in enumerate(words + extra)}
        self._special_ids = {s: i for i, s in enumerate(_SPECIALS)}
        table = [s.encode() for s in _SPECIALS] + [bytes([b]) for b in range(256)]
        self._bytes: list[bytes] = table + [w.encode() for w in words + extra]
        self._pieces = _BPE_PIECES if merges else _PIECES
        self._longest = max(len(w) for w in self._word_ids)
        # Generated text is drawn from lower-case words with a leading space, plus "." and ",";
        # in BPE mode also suffixes and newlines, so that seams and re-encodings can differ.
        spaced = [i for w, i in self._word_ids.items() if w.startswith(" ") and w[1:].islower()]
        choices = [*spaced, *self.encode(".,")]
        if merges:
            for suffix, copies in _SUFFIX_COPIES.items():
                choices += [self._word_ids[suffix]] * copies
            choices += self.encode("\n") * _NEWLINE_COPIES
        self.generation_ids: tuple[int, ...] = tuple(choices)
        self.texts: list[str] = [b.decode("utf-8", "replace") for b in self._bytes]

    @property
    def vocab_size(self) -> int:
        """The number of token ids; valid ids are ``range(vocab_size)``."""
        return len(self._bytes)

    @staticmethod
    def is_special(token_id: int) -> bool:
        """Whether ``token_id`` is one of the special tokens (BOS, EOS, chat markers)."""
        return 0 <= token_id < _BYTE_BASE

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Split ``text`` into token ids; special-token strings become their special ids.

        ``add_special_tokens`` is accepted as a ``transformers`` tokenizer's is, so that this
        object can be a session's local tokenizer; this model adds none (no BOS).
        """
        ids: list[int] = []
        for part in _SPECIAL_SPLIT.split(text) if "<" in text else (text,):
            special = self._special_ids.get(part)
            if special is not None:
                ids.append(special)
                continue
            words = self._word_ids
            for piece in self._pieces.findall(part):
                word = words.get(piece)
                if word is not None:
                    ids.append(word)
                elif self.merges:
                    self._encode_merged(piece, ids)
                else:
                    # surrogatepass: JSON may carry lone surrogates; never crash on them.
                    ids.extend(_BYTE_BASE + b for b in piece.encode("utf-8", "surrogatepass"))
        return ids

    def _encode_merged(self, piece: str, ids: list[int]) -> None:
        """The longest vocabulary token at each position of ``piece``, else one char's bytes."""
        words, at, end = self._word_ids, 0, len(piece)
        while at < end:
            for size in range(min(self._longest, end - at), 1, -1):
                token = words.get(piece[at : at + size])
                if token is not None:
                    ids.append(token)
                    at += size
                    break
            else:
                token = words.get(piece[at])
                if token is not None:
                    ids.append(token)
                else:
                    raw = piece[at].encode("utf-8", "surrogatepass")
                    ids.extend(_BYTE_BASE + b for b in raw)
                at += 1

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Join the ids' bytes into text; invalid UTF-8 becomes U+FFFD.

        Raises:
            IndexError: An id is outside ``range(vocab_size)``.
        """
        table = self._bytes
        if skip_special_tokens:
            raw = b"".join(table[i] for i in ids if i >= _BYTE_BASE)
        else:
            raw = b"".join(table[i] for i in ids)
        return raw.decode("utf-8", "replace")

    def first_invalid(self, ids: Sequence[int]) -> int | None:
        """The first id outside the vocabulary, or ``None`` when all are valid."""
        size = len(self._bytes)
        for i in ids:
            if not 0 <= i < size:
                return i
        return None

    def apply_chat_template(self, messages: Sequence[tuple[str, str]]) -> str:
        """Render ``(role, content)`` pairs in ChatML and open the assistant's turn."""
        parts = [f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in messages]
        parts.append("<|im_start|>assistant\n")
        return "".join(parts)


TOKENIZERS = {"bpe": Tokenizer(merges=True), "words": Tokenizer(merges=False)}
"""The fake server's tokenizers by ``FakeServerConfig.tokenizer`` name."""
TOKENIZER = TOKENIZERS["bpe"]
