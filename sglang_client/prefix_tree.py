"""A compressed radix tree over token ids or text: who shares a prefix, what a cache reuses.

The ``SessionManager`` registers one key per session and asks who shares a prefix; the fake
server ``insert``s each request into a budgeted tree that forgets least recently used leaves
as SGLang's ``RadixCache`` does, whose layout it follows. Token ids are packed into uint32
``bytes`` edges: one C conversion per call, then each edge compare is a memcmp rather than a
Python int compare per token, and a stored token takes 4 bytes, not a tuple slot and an int.
"""

from __future__ import annotations

import heapq
import itertools
import struct
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

__all__ = ["BatchAnalysis", "Key", "PrefixStats", "PrefixTree"]

Key = str | Sequence[int]
"""A key: a ``str``, or a sequence of int token ids in ``[0, 2**32)`` (list, tuple, range...)."""

_Edge = str | bytes
_Query = tuple[_Edge, "str | array[int]", int]  # (buffer, indexable elements, log2 unit size)
_TOKENS_SHIFT = struct.calcsize("@I").bit_length() - 1  # bytes per token id, as a shift
_unpack_token = struct.Struct("@I").unpack_from


@dataclass(frozen=True, slots=True)
class PrefixStats:
    """A snapshot of a ``PrefixTree``'s size (see ``PrefixTree.stats``).

    Attributes:
        total_nodes: Nodes in the tree, excluding the (empty) root.
        active_prefixes: Distinct registered keys (several sessions may register the same key).
        total_sessions: Registered sessions.
        max_depth: Length in tokens of the longest stored path.
        total_tokens: Tokens stored in edges; each shared prefix is counted once.
    """

    total_nodes: int
    active_prefixes: int
    total_sessions: int
    max_depth: int
    total_tokens: int


@dataclass(frozen=True, slots=True)
class BatchAnalysis:
    """How much a batch of keys shares (see ``PrefixTree.analyze_batch``).

    Attributes:
        total_tokens: Sum of the keys' lengths.
        unique_tokens: Distinct non-empty prefixes, i.e. the tokens a prefix cache must hold.
        dedup_ratio: ``unique_tokens / total_tokens``, lower is more sharing; 1.0 if empty.
        potential_savings_tokens: ``total_tokens - unique_tokens``.
    """

    total_tokens: int
    unique_tokens: int
    dedup_ratio: float
    potential_savings_tokens: int


class _Node:
    __slots__ = ("cached", "children", "key", "last_access", "lock_ref", "parent", "sessions")

    def __init__(self, key: _Edge, parent: _Node | None, tick: int, cached: bool) -> None:
        self.key = key
        self.parent = parent  # None once detached, which marks heap entries stale
        self.children: dict[int | str, _Node] = {}
        self.sessions: set[str] | None = None  # sessions whose key ends exactly here
        self.lock_ref = 0  # registered keys ending in this subtree; > 0 means never evicted
        self.cached = cached  # holds insert()-ed data; if a node is cached, so are its ancestors
        self.last_access = tick


def _first(edge: _Edge, at: int) -> int | str:
    """The element (token id or character) starting at buffer offset ``at``."""
    return edge[at] if isinstance(edge, str) else cast(int, _unpack_token(edge, at)[0])


def _common_length(edge: _Edge, buf: _Edge, start: int, shift: int) -> int:
    """Length in buffer units of the common prefix of ``edge`` and ``buf[start:]``, whole
    elements only, found by halving C-level compares."""
    low, high = 0, (min(len(edge), len(buf) - start) >> shift) - 1
    if buf.startswith(edge[: (high + 1) << shift], start):  # type: ignore[arg-type]
        return (high + 1) << shift
    while low < high:
        mid = (low + high + 1) // 2
        if buf.startswith(edge[low << shift : mid << shift], start + (low << shift)):  # type: ignore[arg-type]
            low = mid
        else:
            high = mid - 1
    return low << shift


def _concat(head: _Edge, tail: _Edge) -> _Edge:
    if isinstance(head, str):
        return head + cast(str, tail)
    return head + cast(bytes, tail)


def _is_evictable(node: _Node, stamp: int) -> bool:
    """A heap entry is live while its node is an attached unlocked leaf not touched since."""
    return not (node.parent is None or node.children or node.lock_ref or node.last_access != stamp)


class PrefixTree:
    """A radix tree of session prefixes and cached data, with an optional LRU token budget.

    * Keys are a ``str`` or a sequence of int token ids in ``[0, 2**32)``. The first key
      stored fixes the tree's kind; a key of the other kind (stored or looked up) raises
      ``TypeError``, as do ``bytes`` and non-int ids; ids out of range raise ``ValueError``.
      The empty key shares nothing.
    * ``register_prefix`` gives a session one key (re-registering replaces it; sessions may
      hold identical keys). Registered keys are locked, never evicted. ``unregister`` removes
      nodes nothing else needs and merges a node into its only child, so the tree stays
      compressed: each node ends at a branch, a registered key or the end of cached data.
    * ``insert`` stores unowned data, as a server cache does with each request: it stays
      after the sessions sharing it go away, until evicted.
    * With ``max_tokens`` set, after each ``insert``, ``register_prefix`` and ``unregister``
      the tree evicts whole unlocked leaves, least recently used first, until
      ``total_tokens <= max_tokens`` or only locked data are left (which may exceed it).
      ``register_prefix``, ``insert`` and ``longest_match`` count as accesses of the nodes
      they walk into; a split keeps the node's last access, a merge keeps the later one.

    Example:
        ```python
        tree = PrefixTree()
        tree.register_prefix("a", [1, 2, 3, 4])
        tree.register_prefix("b", [1, 2, 9])
        tree.longest_match([1, 2, 3, 7])           # (3, ["a"])
        tree.find_sharing_sessions([1, 2, 3])      # [("a", 3), ("b", 2)]

        cache = PrefixTree(max_tokens=100_000)     # a server cache model
        cached_tokens = cache.insert(prompt_ids + output_ids)
        ```
    """

    def __init__(self, max_tokens: int | None = None) -> None:
        """Create an empty tree; ``max_tokens`` (an int >= 0) bounds unlocked data by LRU.

        Raises:
            TypeError, ValueError: ``max_tokens`` is neither None nor an int >= 0.
        """
        if max_tokens is not None:
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
                raise TypeError(f"max_tokens must be an int or None, not {max_tokens!r}")
            if max_tokens < 0:
                raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        self._max_tokens = max_tokens
        self.clear()

    def clear(self) -> None:
        """Forget every key, session and the tree's kind (like a server's ``flush_cache``)."""
        self._kind: str | None = None  # "text" or "tokens" once something was stored
        self._shift = 0
        self._root = _Node("", None, 0, False)
        self._sessions: dict[str, _Node] = {}
        self._clock = self._node_count = self._total_tokens = 0
        # Lazy LRU heap of (last_access, serial, leaf); stale entries are skipped when popped.
        self._heap: list[tuple[int, int, _Node]] = []
        self._serial = itertools.count()

    @property
    def max_tokens(self) -> int | None:
        """The token budget, or ``None`` when the tree never evicts."""
        return self._max_tokens

    @property
    def total_tokens(self) -> int:
        """Tokens stored in the tree's edges (O(1); ``stats()`` has the rest)."""
        return self._total_tokens

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def __repr__(self) -> str:
        sizes = f"sessions={len(self._sessions)}, nodes={self._node_count}"
        limits = f"tokens={self.total_tokens}, max_tokens={self.max_tokens}"
        return f"PrefixTree(kind={self._kind or 'empty'}, {sizes}, {limits})"

    def register_prefix(self, session_id: str, key: Key) -> None:
        """Set ``session_id``'s key to ``key``, replacing any key it had.

        Raises:
            TypeError: ``session_id`` is not a str, or ``key`` is of the wrong kind.
            ValueError: A token id is outside ``[0, 2**32)``.
        """
        if not isinstance(session_id, str):
            raise TypeError(f"session_id must be a str, not {type(session_id).__name__}")
        query = self._normalize(key, store=True)
        self._clock += 1
        end = self._insert(query, cached=False)[1]
        self._lock(end, 1)
        old = self._sessions.get(session_id)
        if old is not None:
            self._release(old, session_id)
        if end.sessions is None:
            end.sessions = set()
        end.sessions.add(session_id)
        self._sessions[session_id] = end
        if old is not None and old is not end:
            self._prune(old)
        self._evict_if_over_budget()

    def unregister(self, session_id: str) -> None:
        """Drop ``session_id``'s key (unknown ids are ignored); ``insert``-ed data stay."""
        node = self._sessions.pop(session_id, None)
        if node is not None:
            self._release(node, session_id)
            self._prune(node)
            self._evict_if_over_budget()  # its data may be all that kept the tree over budget

    def insert(self, key: Key) -> int:
        """Store ``key`` as unowned, evictable data (a server caching a request's tokens).

        Returns:
            How many leading tokens of ``key`` were already stored (a server cache's reuse).
        """
        query = self._normalize(key, store=True)
        self._clock += 1
        matched, node = self._insert(query, cached=True)
        if node is not self._root and not node.children and not node.lock_ref:
            self._push(node)
        self._evict_if_over_budget()
        return matched

    def longest_match(self, key: Key) -> tuple[int, list[str]]:
        """Match ``key`` against the tree, counting this as an access for LRU.

        Returns:
            The length of the longest prefix of ``key`` stored in the tree (partial edges
            count), and the sorted ids of the sessions whose registered key starts with that
            prefix. ``(0, [])`` when nothing matched.
        """
        query = self._normalize(key)
        self._clock += 1
        length, node = self._match(query, touch=True)
        if length == 0:
            return 0, []
        if not node.children and not node.lock_ref:
            self._push(node)
        found: list[tuple[str, int]] = []
        self._collect(node, 0, found)
        return length, sorted(s for s, _ in found)

    def estimate_cached_tokens(self, key: Key) -> int:
        """Predict how many leading tokens of ``key`` a prefix cache would reuse.

        The ``longest_match`` length, without counting as an access: after the same inserts
        with the same ``max_tokens``, what a server cache of that size would hit.
        """
        return self._match(self._normalize(key), touch=False)[0]

    def find_sharing_sessions(self, key: Key, min_shared: int = 1) -> list[tuple[str, int]]:
        """List ``(session_id, shared_length)`` for sessions whose registered key shares at
        least ``min_shared`` leading tokens with ``key``, longest shared first, then by id.

        Raises:
            TypeError, ValueError: ``min_shared`` is not an int >= 1.
        """
        if isinstance(min_shared, bool) or not isinstance(min_shared, int):
            raise TypeError(f"min_shared must be an int, not {min_shared!r}")
        if min_shared < 1:
            raise ValueError(f"min_shared must be >= 1, got {min_shared}")
        buf, elems, shift = self._normalize(key)
        found: list[tuple[str, int]] = []
        node, pos, size = self._root, 0, len(buf)
        while True:
            nxt = node.children.get(elems[pos >> shift]) if pos < size else None
            if (depth := pos >> shift) >= min_shared:
                # Sessions ending here or branching off here share exactly `depth`.
                if node.sessions:
                    found.extend((s, depth) for s in node.sessions)
                for child in node.children.values():
                    if child is not nxt and child.lock_ref:
                        self._collect(child, depth, found)
            if nxt is None:
                break
            if not buf.startswith(nxt.key, pos):  # type: ignore[arg-type]
                shared = (pos + _common_length(nxt.key, buf, pos, shift)) >> shift
                if shared >= min_shared and nxt.lock_ref:
                    self._collect(nxt, shared, found)
                break
            node, pos = nxt, pos + len(nxt.key)
        found.sort(key=lambda pair: (-pair[1], pair[0]))
        return found

    def stats(self) -> PrefixStats:
        """Count the tree's nodes, keys, sessions and tokens (walks the tree: O(nodes))."""
        max_depth, stack = 0, [(self._root, 0)]
        while stack:
            node, depth = stack.pop()
            if node.children:
                stack.extend((c, depth + len(c.key)) for c in node.children.values())
            max_depth = max(max_depth, depth)
        keys, depth = len({id(n) for n in self._sessions.values()}), max_depth >> self._shift
        return PrefixStats(self._node_count, keys, len(self._sessions), depth, self.total_tokens)

    def analyze_batch(self, keys: Iterable[Key]) -> BatchAnalysis:
        """Measure how much ``keys`` share with each other (pure: the tree is not modified).

        Raises:
            TypeError, ValueError: A key is invalid or of another kind than this tree or batch.
        """
        scratch, total = PrefixTree(), 0
        scratch._kind = self._kind
        for key in keys:
            scratch.insert(key)
            total += len(key)
        unique = scratch.total_tokens
        return BatchAnalysis(total, unique, unique / total if total else 1.0, total - unique)

    def _normalize(self, key: Key, *, store: bool = False) -> _Query:
        """Check ``key`` against the tree's kind and turn it into a query; a stored key fixes
        the kind."""
        query: _Query
        if isinstance(key, str):
            query = (key, key, 0)
        elif isinstance(key, (bytes, bytearray, memoryview)):
            raise TypeError("bytes keys are ambiguous: decode them to str or pass token ids")
        elif isinstance(key, Sequence):
            tokens, ids = cast(Sequence[int], key), array("I")
            try:
                ids.fromlist(tokens if isinstance(tokens, list) else list(tokens))
            except TypeError:
                bad = next((t for t in tokens if not hasattr(t, "__index__")), None)
                name = type(bad).__name__
                raise TypeError(f"token ids must be ints, got {name} {bad!r}") from None
            except OverflowError:
                big = next((t for t in tokens if not 0 <= t < 1 << 32), None)
                raise ValueError(f"token ids must be in [0, 2**32), got {big!r}") from None
            query = (ids.tobytes(), ids, _TOKENS_SHIFT)
        else:
            name = type(key).__name__
            raise TypeError(f"key must be a str or a sequence of int token ids, not {name}")
        kind = "tokens" if query[2] else "text"
        if self._kind is not None and kind != self._kind:
            have = "str" if self._kind == "text" else "token-id"
            raise TypeError(f"this PrefixTree holds {have} keys; got {type(key).__name__}")
        if store:
            self._kind, self._shift = kind, query[2]
        return query

    def _insert(self, query: _Query, *, cached: bool) -> tuple[int, _Node]:
        """Store ``query``; return how many tokens were already there and the node where it
        ends (a register always ends on a boundary; an insert splits only where cached data
        end)."""
        buf, elems, shift = query
        tick, size, node, pos = self._clock, len(buf), self._root, 0
        flipped: _Node | None = None
        node.last_access = tick
        while pos < size:
            child = node.children.get(elems[pos >> shift])
            if child is None:
                node = self._add_leaf(node, buf[pos:], elems[pos >> shift], cached)
                break
            edge, more = child.key, None
            if buf.startswith(edge, pos):  # type: ignore[arg-type]
                shared = len(edge)
            else:
                shared = _common_length(edge, buf, pos, shift)
                more = pos + shared < size
                if more or not (cached and child.cached):
                    child = self._split(child, shared)
            child.last_access = tick
            if cached and not child.cached:
                child.cached = True
                flipped = flipped or child
            node, pos = child, pos + shared
            if more is not None:
                if more:
                    node = self._add_leaf(node, buf[pos:], elems[pos >> shift], cached)
                break
        if flipped is not None:
            # Caching what only sessions held can make the boundary above it redundant.
            self._merge_into_parent(flipped)
        return pos >> shift, node

    def _add_leaf(self, parent: _Node, edge: _Edge, first: int | str, cached: bool) -> _Node:
        self._total_tokens += len(edge) >> self._shift
        if parent.children or parent.sessions or parent.cached != cached or parent is self._root:
            leaf = parent.children[first] = _Node(edge, parent, self._clock, cached)
            self._node_count += 1
            return leaf
        parent.key = _concat(parent.key, edge)  # growing a plain leaf needs no boundary
        return parent

    def _split(self, child: _Node, at: int) -> _Node:
        """Cut ``child``'s edge at ``at``: a new upper node takes its place, and ``child``
        keeps its identity (sessions point at it) with the lower part."""
        edge, parent = child.key, cast(_Node, child.parent)
        upper = _Node(edge[:at], parent, child.last_access, child.cached)
        parent.children[_first(edge, 0)] = upper
        upper.lock_ref = child.lock_ref
        child.key, child.parent = edge[at:], upper
        upper.children[_first(edge, at)] = child
        self._node_count += 1
        return upper

    def _merge_into_parent(self, child: _Node) -> None:
        """Fold ``child``'s parent into it when the parent is a redundant boundary."""
        parent = cast(_Node, child.parent)
        if parent is self._root or parent.sessions or len(parent.children) != 1:
            return
        if parent.cached != child.cached:
            return
        grand = cast(_Node, parent.parent)
        child.key, child.parent = _concat(parent.key, child.key), grand
        child.last_access = max(child.last_access, parent.last_access)
        grand.children[_first(child.key, 0)] = child
        parent.parent = None
        self._node_count -= 1
        if not child.children and not child.lock_ref:
            self._push(child)

    def _release(self, node: _Node, session_id: str) -> None:
        """Remove ``session_id`` from ``node`` and unlock the path above it."""
        sessions = cast(set[str], node.sessions)
        sessions.discard(session_id)
        node.sessions = sessions or None
        self._lock(node, -1)

    @staticmethod
    def _lock(node: _Node | None, delta: int) -> None:
        while node is not None:
            node.lock_ref += delta
            node = node.parent

    def _prune(self, node: _Node) -> None:
        """Drop data nothing needs from ``node`` upwards, then restore compression there."""
        root = self._root
        while node is not root and not node.lock_ref and not node.cached and not node.children:
            parent = cast(_Node, node.parent)
            self._detach(node)
            node = parent
        if node is root:
            return
        if not node.children:
            if not node.lock_ref:
                self._push(node)
        elif len(node.children) == 1 and not node.sessions:
            self._merge_into_parent(next(iter(node.children.values())))

    def _detach(self, node: _Node) -> None:
        del cast(_Node, node.parent).children[_first(node.key, 0)]
        node.parent = None
        self._node_count -= 1
        self._total_tokens -= len(node.key) >> self._shift

    def _match(self, query: _Query, *, touch: bool) -> tuple[int, _Node]:
        """Walk ``query``; return the matched length in tokens and the deepest node entered."""
        buf, elems, shift = query
        tick, size, node, pos = self._clock, len(buf), self._root, 0
        while pos < size:
            child = node.children.get(elems[pos >> shift])
            if child is None:
                break
            if touch:
                child.last_access = tick
            if not buf.startswith(child.key, pos):  # type: ignore[arg-type]
                return (pos + _common_length(child.key, buf, pos, shift)) >> shift, child
            node, pos = child, pos + len(child.key)
        return pos >> shift, node

    def _collect(self, node: _Node, shared: int, out: list[tuple[str, int]]) -> None:
        """Append ``(session, shared)`` for every session registered in ``node``'s subtree."""
        stack = [node]
        while stack:
            node = stack.pop()
            if node.sessions:
                out.extend((s, shared) for s in node.sessions)
            stack.extend(c for c in node.children.values() if c.lock_ref)

    def _push(self, leaf: _Node) -> None:
        """Record that ``leaf`` is evictable as of its last access."""
        if self._max_tokens is None:
            return
        heap = self._heap
        heapq.heappush(heap, (leaf.last_access, next(self._serial), leaf))
        if len(heap) > 2 * self._node_count + 64:
            # Rebuild once stale entries dominate: amortised O(1) per push.
            heap[:] = [e for e in heap if _is_evictable(e[2], e[0])]
            heapq.heapify(heap)

    def _evict_if_over_budget(self) -> None:
        budget, heap = self._max_tokens, self._heap
        while budget is not None and self._total_tokens > budget and heap:
            stamp, _, leaf = heapq.heappop(heap)
            if _is_evictable(leaf, stamp):
                parent = cast(_Node, leaf.parent)
                self._detach(leaf)
                self._prune(parent)
