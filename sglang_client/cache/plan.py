"""One request's cache plan: what it keys, how many completions each key must hold, what is stored.

``plan()`` is the only place that decides these for a request: ``CachedClient`` (every cached
route, streamed or not) and the proxy's memo of encoded hits both ask it, so the two always
find the same entry. A plan is ``None`` when the request bypasses the cache (session requests,
``echo``, embeddings, malformed ``n``, batches whose per-prompt fields cannot be split).

Which fields stay out of a key is in ``keys.py`` (``NON_SEMANTIC_FIELDS`` at the top level,
``NON_SEMANTIC_SAMPLING_FIELDS`` inside ``sampling_params``), for every route alike. See
docs/architecture.md ("One request").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sglang_client.cache import keys as _keys
from sglang_client.cache.keys import TENANT_FIELD, cache_key, is_greedy, semantic_fields

__all__ = [
    "GenerateSplit",
    "RequestPlan",
    "completions_needed",
    "openai_kind",
    "plan",
    "split_generate",
    "valid_n",
    "with_n",
    "without_stream",
]

JSON = dict[str, Any]

# Per-prompt list-valued fields of /generate we cannot split safely; such batches bypass.
_INPUT_FIELDS = ("text", "input_ids")


def without_stream(body: Mapping[str, Any]) -> JSON:
    """``body`` without ``stream`` (a whole response is asked upstream)."""
    return {k: v for k, v in body.items() if k != "stream"}


def with_n(body: Mapping[str, Any], k: int) -> JSON:
    """``body`` asking the upstream for ``k`` choices (no ``n`` at all for one)."""
    out = {key: value for key, value in body.items() if key != "n"}
    if k != 1:
        out["n"] = k
    return out


def completions_needed(temperature: object, n: int) -> int:
    """How many stored completions serve a request for ``n``: one for greedy decoding."""
    return 1 if is_greedy(temperature) else n


def valid_n(n: object) -> bool:
    """Whether ``n`` is a usable sample count (an int >= 1, not a bool)."""
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1


def openai_kind(path: str) -> tuple[str, str]:
    """``(key kind, response object)`` of an OpenAI route."""
    if path.endswith("/chat/completions"):
        return "chat", "chat.completion"
    return "completion", "text_completion"


@dataclass
class GenerateSplit:
    """A ``/generate`` body split per prompt."""

    field: str
    prompts: list[Any]
    single: bool
    samplings: list[JSON]
    sampling_is_list: bool
    n: int
    base: JSON

    def request(self, i: int) -> JSON:
        """The semantic request of prompt ``i`` (what its key hashes, and what is stored)."""
        return {**self.base, self.field: self.prompts[i], "sampling_params": self.samplings[i]}

    def upstream_body(self, body: Mapping[str, Any], indices: Sequence[int], k: int) -> JSON:
        """A body asking upstream for ``k`` samples of each prompt in ``indices``."""
        out = {key: value for key, value in body.items() if key not in ("stream", "rid")}
        samplings = [{**self.samplings[i], "n": k} for i in indices]
        if k == 1:
            for s in samplings:
                s.pop("n")
        if self.single:
            out[self.field] = self.prompts[indices[0]]
            out["sampling_params"] = samplings[0]
            if "rid" in body and k == 1:
                out["rid"] = body["rid"]
        else:
            out[self.field] = [self.prompts[i] for i in indices]
            out["sampling_params"] = samplings if self.sampling_is_list else samplings[0]
        return out


def split_generate(body: Mapping[str, Any]) -> GenerateSplit | None:
    """Split a ``/generate`` body per prompt, or ``None`` when it must bypass the cache.

    Bypassed: session requests (their output depends on server-side history), embeddings, bodies
    with both or neither of ``text``/``input_ids``, and batches with other per-prompt lists.
    """
    if body.get("session_params") or body.get("input_embeds") is not None:
        return None
    present = [f for f in _INPUT_FIELDS if body.get(f) is not None]
    if len(present) != 1:
        return None
    field = present[0]
    value = body[field]
    prompts: list[Any]
    if field == "text":
        if isinstance(value, str):
            single, prompts = True, [value]
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            single, prompts = False, list(value)
        else:
            return None
    else:
        if not isinstance(value, list) or not value:
            return None
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            single, prompts = True, [value]
        elif all(isinstance(v, list) and v for v in value):
            single, prompts = False, list(value)
        else:
            return None
    sampling = body.get("sampling_params") or {}
    if isinstance(sampling, Mapping):
        samplings, is_list = [dict(sampling) for _ in prompts], False
    elif isinstance(sampling, list) and len(sampling) == len(prompts):
        if not all(isinstance(s, Mapping) for s in sampling):
            return None
        samplings, is_list = [dict(s) for s in sampling], True
    else:
        return None
    ns = {s.get("n", 1) for s in samplings}
    n = ns.pop() if len(ns) == 1 else None
    if not valid_n(n):
        return None
    base = semantic_fields(body, drop=frozenset({*_INPUT_FIELDS, "sampling_params"}))
    if not single and any(isinstance(v, list) for v in base.values()):
        return None
    for s in samplings:
        for name in _keys.NON_SEMANTIC_SAMPLING_FIELDS:  # read at call time: one table
            s.pop(name, None)
    assert isinstance(n, int)
    return GenerateSplit(field, prompts, single, samplings, is_list, n, base)


def _openai_cacheable(kind: str, body: Mapping[str, Any]) -> bool:
    if body.get("session_params") or body.get("echo"):
        return False
    if kind == "chat":
        return isinstance(body.get("messages"), list) and bool(body["messages"])
    prompt = body.get("prompt")
    return isinstance(prompt, str) or (
        isinstance(prompt, list) and bool(prompt) and all(isinstance(p, int) for p in prompt)
    )


@dataclass(frozen=True)
class RequestPlan:
    """How the cache serves one request.

    Attributes:
        kind: ``"generate"``, ``"chat"`` or ``"completion"`` (part of every key).
        n: completions the caller asked for, per prompt.
        requests: per prompt, the semantic request: what its key hashes and what is stored.
        need: per prompt, the completions its entry must hold: 1 for greedy decoding, else n.
        split: ``/generate`` only: the body split per prompt (``None`` for OpenAI routes).
        obj: the OpenAI response ``object`` (``""`` for ``/generate``).
    """

    kind: str
    n: int
    requests: tuple[JSON, ...]
    need: tuple[int, ...]
    split: GenerateSplit | None = None
    obj: str = ""

    @property
    def single(self) -> bool:
        """Whether the request has one prompt (and is answered with one object, not a list)."""
        return self.split.single if self.split is not None else True

    def keys(self, model: str) -> list[str]:
        """The cache key of each prompt under the model identity ``model``."""
        return [cache_key(self.kind, model, request) for request in self.requests]


def plan(path: str, body: Mapping[str, Any], tenant: str | None = None) -> RequestPlan | None:
    """The plan of a request to ``path`` (``/generate`` or an OpenAI route), or ``None``.

    Args:
        path: the route.
        body: the request body as SGLang takes it.
        tenant: the cache namespace (``None``: the shared one); it joins every keyed request.
    """
    if path == "/generate":
        split = split_generate(body)
        if split is None:
            return None
        if tenant is not None:
            split.base[TENANT_FIELD] = tenant
        requests = tuple(split.request(i) for i in range(len(split.prompts)))
        need = tuple(completions_needed(s.get("temperature"), split.n) for s in split.samplings)
        return RequestPlan("generate", split.n, requests, need, split)
    kind, obj = openai_kind(path)
    n = body.get("n", 1)
    if not (_openai_cacheable(kind, body) and valid_n(n)):
        return None
    request = semantic_fields(body)
    if tenant is not None:
        request[TENANT_FIELD] = tenant
    count = completions_needed(body.get("temperature"), int(n))
    return RequestPlan(kind, int(n), (request,), (count,), obj=obj)
