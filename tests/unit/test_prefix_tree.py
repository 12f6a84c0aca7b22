"""PrefixTree: examples, plus hypothesis properties against a brute-force reference."""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sglang_client.prefix_tree import BatchAnalysis, PrefixStats, PrefixTree

Seq = tuple[int, ...] | str

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- brute-force reference ----------------------------------------------------------------------


def lcp(a: Sequence[object], b: Sequence[object]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Reference:
    """Sessions and cached keys kept as plain lists; every answer computed by brute force."""

    def __init__(self) -> None:
        self.sessions: dict[str, Seq] = {}
        self.cached: set[Seq] = set()

    def stored(self) -> list[Seq]:
        return [*self.sessions.values(), *self.cached]

    def prefixes(self) -> set[Seq]:
        return {k[:i] for k in self.stored() for i in range(1, len(k) + 1)}

    def longest_match(self, q: Seq) -> tuple[int, list[str]]:
        m = max((lcp(q, k) for k in self.stored()), default=0)
        if m == 0:
            return 0, []
        return m, sorted(s for s, k in self.sessions.items() if k[:m] == q[:m] and len(k) >= m)

    def find_sharing(self, q: Seq, min_shared: int) -> list[tuple[str, int]]:
        pairs = [(s, lcp(k, q)) for s, k in self.sessions.items()]
        return sorted([p for p in pairs if p[1] >= min_shared], key=lambda p: (-p[1], p[0]))

    def node_count(self) -> int:
        """Nodes of the canonical compressed trie: one per prefix where something happens."""
        prefixes = self.prefixes()
        cached = {k[:i] for k in self.cached for i in range(1, len(k) + 1)}
        ends = set(self.sessions.values())
        children: dict[Seq, list[Seq]] = {p: [] for p in prefixes}
        for p in prefixes:
            if len(p) > 1:
                children[p[:-1]].append(p)
        count = 0
        for p in prefixes:
            kids = children[p]
            if len(kids) != 1 or p in ends or ((p in cached) != (kids[0] in cached)):
                count += 1
        return count

    def stats(self) -> PrefixStats:
        return PrefixStats(
            total_nodes=self.node_count(),
            active_prefixes=len(set(self.sessions.values())),
            total_sessions=len(self.sessions),
            max_depth=max((len(k) for k in self.stored()), default=0),
            total_tokens=len(self.prefixes()),
        )


def decode(edge: str | bytes) -> Seq:
    """An edge as the reference sees it (token edges are packed uint32 bytes)."""
    return edge if isinstance(edge, str) else tuple(array("I", edge))


def check_invariants(tree: PrefixTree) -> None:
    """Walk the tree's internals and check every structural invariant it promises."""
    root = tree._root
    nodes = tokens = 0
    is_text = tree._kind == "text"
    stack = [root]
    while stack:
        node = stack.pop()
        own = len(node.sessions) if node.sessions is not None else 0
        assert node.sessions is None or own > 0, "empty session sets are dropped"
        assert node.lock_ref == own + sum(c.lock_ref for c in node.children.values())
        for first, child in node.children.items():
            edge = decode(child.key)
            assert child.parent is node and len(edge) > 0 and edge[0] == first
            assert isinstance(child.key, str) is is_text
            assert child.cached or child.lock_ref > 0, "nothing holds this node"
            if node is not root:
                assert node.cached or not child.cached, "cached data are prefix-closed"
            if len(child.children) == 1 and not child.sessions:
                (grandchild,) = child.children.values()
                assert grandchild.cached != child.cached, "tree is not compressed"
            nodes += 1
            tokens += len(edge)
            stack.append(child)
    assert nodes == tree._node_count and tokens == tree.total_tokens
    assert root.lock_ref == len(tree._sessions)
    for sid, end in tree._sessions.items():
        assert end.sessions is not None and sid in end.sessions
        walk = end
        while walk is not root:
            assert walk.parent is not None, "a session points at a detached node"
            walk = walk.parent


def path_strings(tree: PrefixTree) -> list[Seq]:
    """Every root-to-leaf string stored in the tree."""
    out: list[Seq] = []
    stack: list[tuple[object, Seq]] = [(tree._root, "" if tree._kind == "text" else ())]
    while stack:
        node, prefix = stack.pop()
        kids = node.children.values()  # type: ignore[attr-defined]
        if not kids and prefix:
            out.append(prefix)
        stack.extend((c, prefix + decode(c.key)) for c in kids)  # type: ignore[operator]
    return out


# -- strategies ----------------------------------------------------------------------------------

SESSION_IDS = st.sampled_from(["s0", "s1", "s2", "s3", "s4"])


def keys_of(kind: str, max_size: int = 8) -> st.SearchStrategy[Seq]:
    if kind == "text":
        return st.text("abc", max_size=max_size)
    # Ids whose packed uint32 bytes overlap at other offsets: a misaligned compare would show.
    ids = st.sampled_from([0, 1, 256, 2**24 + 1])
    return st.lists(ids, max_size=max_size).map(tuple)


def ops_of(kind: str) -> st.SearchStrategy[list[tuple[object, ...]]]:
    key = keys_of(kind)
    op = st.one_of(
        st.tuples(st.just("register"), SESSION_IDS, key),
        st.tuples(st.just("unregister"), SESSION_IDS),
        st.tuples(st.just("insert"), key),
        st.tuples(st.just("match"), key),
        st.tuples(st.just("estimate"), key),
        st.tuples(st.just("share"), key, st.integers(1, 3)),
    )
    return st.lists(op, max_size=25)


def apply(tree: PrefixTree, ref: Reference, op: tuple[object, ...]) -> None:
    """Apply ``op`` to both; compare what the tree answers with the reference's answer."""
    name = op[0]
    if name == "register":
        sid, key = op[1], op[2]
        tree.register_prefix(sid, key)  # type: ignore[arg-type]
        ref.sessions[sid] = key  # type: ignore[index,assignment]
    elif name == "unregister":
        tree.unregister(op[1])  # type: ignore[arg-type]
        ref.sessions.pop(op[1], None)  # type: ignore[call-overload]
    elif name == "insert":
        key = op[1]
        expected = max((lcp(key, k) for k in ref.stored()), default=0)  # type: ignore[arg-type]
        assert tree.insert(key) == expected  # type: ignore[arg-type]
        ref.cached.add(key)  # type: ignore[arg-type]
    elif name == "match":
        assert tree.longest_match(op[1]) == ref.longest_match(op[1])  # type: ignore[arg-type]
    elif name == "estimate":
        expected_len = ref.longest_match(op[1])[0]  # type: ignore[arg-type]
        assert tree.estimate_cached_tokens(op[1]) == expected_len  # type: ignore[arg-type]
    else:
        got = tree.find_sharing_sessions(op[1], min_shared=op[2])  # type: ignore[arg-type]
        assert got == ref.find_sharing(op[1], op[2])  # type: ignore[arg-type]


# -- properties against the reference ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tokens", "text"])
@PROPERTY
@given(data=st.data())
def test_matches_brute_force_reference(kind: str, data: st.DataObject) -> None:
    tree, ref = PrefixTree(), Reference()
    for op in data.draw(ops_of(kind)):
        apply(tree, ref, op)
        check_invariants(tree)
        assert tree.stats() == ref.stats()
    for sid in list(ref.sessions):
        tree.unregister(sid)
        del ref.sessions[sid]
        check_invariants(tree)
        assert tree.stats() == ref.stats()


@pytest.mark.parametrize("kind", ["tokens", "text"])
@PROPERTY
@given(data=st.data(), budget=st.integers(0, 20))
def test_budget_invariants(kind: str, data: st.DataObject, budget: int) -> None:
    """Under a budget the tree evicts only unlocked data, only when over budget, and keeps
    what it keeps exact; until the first time the data exceed the budget it equals the
    unbounded reference."""
    tree, ref = PrefixTree(max_tokens=budget), Reference()
    ever: set[Seq] = set()
    overflowed = False
    for op in data.draw(ops_of(kind)):
        if op[0] in ("register", "insert"):
            ever.add(op[-1])  # type: ignore[arg-type]
        if overflowed:
            if op[0] == "register":
                tree.register_prefix(op[1], op[2])  # type: ignore[arg-type]
                ref.sessions[op[1]] = op[2]  # type: ignore[index,assignment]
            elif op[0] == "unregister":
                tree.unregister(op[1])  # type: ignore[arg-type]
                ref.sessions.pop(op[1], None)  # type: ignore[call-overload]
            elif op[0] == "insert":
                tree.insert(op[1])  # type: ignore[arg-type]
            elif op[0] == "match":
                length, _ = tree.longest_match(op[1])  # type: ignore[arg-type]
                assert length == tree.estimate_cached_tokens(op[1])  # type: ignore[arg-type]
        else:
            probe = Reference()
            probe.sessions, probe.cached = dict(ref.sessions), set(ref.cached)
            if op[0] == "insert":
                probe.cached.add(op[1])  # type: ignore[arg-type]
            elif op[0] == "register":
                probe.sessions[op[1]] = op[2]  # type: ignore[index,assignment]
            overflowed = len(probe.prefixes()) > budget
            apply(tree, ref, op)
        check_invariants(tree)
        for key in ref.sessions.values():
            assert tree.estimate_cached_tokens(key) == len(key), "a registered key was evicted"
        if tree.total_tokens > budget:
            assert all(leaf_locked for leaf_locked in _leaf_locks(tree)), "evictable leaf left"
        for path in path_strings(tree):
            assert any(k[: len(path)] == path for k in ever), "the tree invented data"
        if not overflowed:
            assert tree.stats() == ref.stats()


def _leaf_locks(tree: PrefixTree) -> list[bool]:
    out, stack = [], list(tree._root.children.values())
    while stack:
        node = stack.pop()
        if node.children:
            stack.extend(node.children.values())
        else:
            out.append(node.lock_ref > 0)
    return out


@PROPERTY
@given(
    prefix_len=st.integers(0, 3),
    sizes=st.lists(st.integers(1, 4), min_size=1, max_size=6),
    budget=st.integers(0, 20),
    data=st.data(),
)
def test_eviction_is_lru(
    prefix_len: int, sizes: list[int], budget: int, data: st.DataObject
) -> None:
    """Slots with distinct first tokens each live in one leaf below an optional locked prefix,
    so eviction must follow an ordered-dict LRU exactly."""
    prefix = tuple(range(100, 100 + prefix_len))
    slots = [(j, *range(1000 + 10 * j, 1000 + 10 * j + n - 1)) for j, n in enumerate(sizes)]
    tree, lru = PrefixTree(max_tokens=budget), OrderedDict[int, int]()
    if prefix:
        tree.register_prefix("anchor", prefix)
    ops = data.draw(
        st.lists(
            st.tuples(st.sampled_from(["insert", "touch", "miss"]), st.integers(0, len(slots) - 1)),
            max_size=30,
        )
    )
    for name, j in ops:
        if name == "insert":
            tree.insert(prefix + slots[j])
            lru[j] = len(slots[j])
            lru.move_to_end(j)
            while lru and prefix_len + sum(lru.values()) > budget:
                lru.popitem(last=False)
        elif name == "touch":
            part = data.draw(st.integers(1, len(slots[j])))
            got = tree.longest_match(prefix + slots[j][:part])[0]
            assert got == prefix_len + (part if j in lru else 0)
            if j in lru:
                lru.move_to_end(j)
        else:
            assert tree.longest_match(prefix + (999,))[0] == prefix_len
        check_invariants(tree)
        assert tree.total_tokens == prefix_len + sum(lru.values())
        for k, slot in enumerate(slots):
            expected = prefix_len + (len(slot) if k in lru else 0)
            assert tree.estimate_cached_tokens(prefix + slot) == expected


@pytest.mark.parametrize("kind", ["tokens", "text"])
@PROPERTY
@given(data=st.data())
def test_analyze_batch_matches_brute_force(kind: str, data: st.DataObject) -> None:
    tree, ref = PrefixTree(), Reference()
    for op in data.draw(ops_of(kind).map(lambda ops: ops[:5])):
        apply(tree, ref, op)
    before, keys = tree.stats(), data.draw(st.lists(keys_of(kind), max_size=8))
    result = tree.analyze_batch(keys)
    total = sum(len(k) for k in keys)
    unique = len({k[:i] for k in keys for i in range(1, len(k) + 1)})
    assert result == BatchAnalysis(total, unique, unique / total if total else 1.0, total - unique)
    assert tree.stats() == before


@PROPERTY
@given(
    base=st.lists(st.integers(0, 50_000), min_size=1, max_size=3000),
    cut=st.integers(0, 3000),
    extra=st.lists(st.integers(50_001, 50_010), max_size=5),
)
def test_long_edges_split_at_the_right_place(base: list[int], cut: int, extra: list[int]) -> None:
    tree = PrefixTree()
    tree.register_prefix("a", base)
    other = base[: min(cut, len(base))] + extra
    shared = lcp(base, other)
    assert tree.longest_match(other) == (shared, ["a"] if shared else [])
    tree.register_prefix("b", other)
    check_invariants(tree)
    assert tree.find_sharing_sessions(base) == sorted(
        [("a", len(base)), ("b", shared)][: 2 if shared else 1], key=lambda p: (-p[1], p[0])
    )


# -- examples ------------------------------------------------------------------------------------


def test_docstring_example() -> None:
    tree = PrefixTree()
    tree.register_prefix("a", [1, 2, 3, 4])
    tree.register_prefix("b", [1, 2, 9])
    assert tree.longest_match([1, 2, 3, 7]) == (3, ["a"])
    assert tree.longest_match([1, 2]) == (2, ["a", "b"])
    assert tree.find_sharing_sessions([1, 2, 3]) == [("a", 3), ("b", 2)]
    assert tree.find_sharing_sessions([1, 2, 3], min_shared=3) == [("a", 3)]
    assert tree.stats() == PrefixStats(3, 2, 2, 4, 5)


def test_text_keys() -> None:
    tree = PrefixTree()
    tree.register_prefix("x", "hello world")
    tree.register_prefix("y", "hello there")
    assert tree.longest_match("hello wonder") == (8, ["x"])
    assert tree.find_sharing_sessions("help") == [("x", 3), ("y", 3)]
    assert tree.stats().total_tokens == len("hello ") + len("world") + len("there")


def test_accepts_any_int_sequence() -> None:
    tree = PrefixTree()
    tree.register_prefix("a", range(5))
    tree.register_prefix("b", array("q", [0, 1, 7]))
    assert tree.longest_match((0, 1, 2)) == (3, ["a"])
    assert tree.longest_match([0, 1]) == (2, ["a", "b"])


def test_mixing_kinds_raises_type_error() -> None:
    tree = PrefixTree()
    tree.register_prefix("a", [1, 2])
    with pytest.raises(TypeError, match="holds token-id keys"):
        tree.register_prefix("b", "text")
    with pytest.raises(TypeError, match="holds token-id keys"):
        tree.longest_match("text")
    with pytest.raises(TypeError, match="holds token-id keys"):
        tree.analyze_batch([[1], "x"])
    text = PrefixTree()
    text.insert("abc")
    with pytest.raises(TypeError, match="holds str keys"):
        text.find_sharing_sessions([1])
    with pytest.raises(TypeError, match="holds str keys"):
        PrefixTree().analyze_batch(["ab", [1]])


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (b"abc", "bytes keys are ambiguous"),
        (bytearray(b"a"), "bytes keys are ambiguous"),
        (42, "not int"),
        (None, "not NoneType"),
        ({1: 2}, "not dict"),
        ([1, "2"], "token ids must be ints, got str"),
        ([1, 2.5], "token ids must be ints, got float"),
        ([None], "token ids must be ints, got NoneType"),
    ],
)
def test_bad_keys_raise_type_error_and_change_nothing(key: object, message: str) -> None:
    tree = PrefixTree(max_tokens=100)
    tree.register_prefix("a", [1, 2, 3])
    tree.insert([1, 2, 3, 4, 5])
    before = tree.stats()
    with pytest.raises(TypeError, match=message):
        tree.register_prefix("b", key)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=message):
        tree.insert(key)  # type: ignore[arg-type]
    assert tree.stats() == before
    check_invariants(tree)


@pytest.mark.parametrize("token", [-1, 2**32, 10**30])
def test_token_ids_out_of_range_raise_value_error(token: int) -> None:
    tree = PrefixTree()
    tree.insert([1, 2])
    with pytest.raises(ValueError, match=rf"must be in \[0, 2\*\*32\), got {token}"):
        tree.insert([1, 2, token])
    with pytest.raises(ValueError, match="must be in"):
        tree.longest_match([token])
    assert tree.stats() == PrefixStats(1, 0, 0, 2, 2)


def test_bad_tokens_after_a_partial_match_leave_no_split() -> None:
    tree = PrefixTree()
    tree.insert([1, 2, 3, 4])
    with pytest.raises(TypeError, match="token ids must be ints"):
        tree.insert([1, 2, "x"])  # type: ignore[list-item]
    assert tree.stats().total_nodes == 1
    check_invariants(tree)


def test_failed_first_store_does_not_fix_the_kind() -> None:
    tree = PrefixTree()
    with pytest.raises(TypeError):
        tree.insert(["a"])  # type: ignore[list-item]
    tree.insert("abc")
    assert tree.estimate_cached_tokens("abd") == 2


def test_argument_validation() -> None:
    tree = PrefixTree()
    with pytest.raises(TypeError, match="session_id must be a str"):
        tree.register_prefix(1, [1])  # type: ignore[arg-type]
    for bad in (0, -3):
        with pytest.raises(ValueError, match="min_shared must be >= 1"):
            tree.find_sharing_sessions([1], min_shared=bad)
    for wrong in (True, 1.0, "1"):
        with pytest.raises(TypeError, match="min_shared must be an int"):
            tree.find_sharing_sessions([1], min_shared=wrong)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_tokens must be >= 0"):
        PrefixTree(max_tokens=-1)
    for wrong in (1.5, "10", True):
        with pytest.raises(TypeError, match="max_tokens must be an int or None"):
            PrefixTree(max_tokens=wrong)  # type: ignore[arg-type]


def test_empty_keys() -> None:
    tree = PrefixTree()
    assert tree.longest_match([1, 2]) == (0, [])
    assert tree.insert([]) == 0
    tree.register_prefix("root", [])
    tree.register_prefix("a", [5])
    assert tree.longest_match([]) == (0, [])
    assert tree.find_sharing_sessions([5]) == [("a", 1)]
    assert tree.stats() == PrefixStats(1, 2, 2, 1, 1)
    tree.unregister("root")
    assert tree.stats() == PrefixStats(1, 1, 1, 1, 1)
    check_invariants(tree)


def test_unregister_unknown_is_a_no_op() -> None:
    tree = PrefixTree()
    tree.unregister("nobody")
    tree.register_prefix("a", [1])
    tree.unregister("nobody")
    assert "a" in tree and "nobody" not in tree


def test_reregister_replaces_and_prunes() -> None:
    tree = PrefixTree()
    tree.register_prefix("a", [1, 2, 3])
    tree.register_prefix("a", [1, 2, 3, 4, 5])
    assert tree.stats() == PrefixStats(1, 1, 1, 5, 5)
    tree.register_prefix("a", [9])
    assert tree.stats() == PrefixStats(1, 1, 1, 1, 1)
    assert tree.longest_match([1, 2]) == (0, [])
    tree.register_prefix("a", [9])
    assert tree.stats() == PrefixStats(1, 1, 1, 1, 1)
    check_invariants(tree)


def test_identical_keys_and_merge_on_unregister() -> None:
    tree = PrefixTree()
    tree.register_prefix("a", [1, 2, 3, 4])
    tree.register_prefix("b", [1, 2, 3, 4])
    tree.register_prefix("c", [1, 2, 5])
    assert tree.stats() == PrefixStats(3, 2, 3, 4, 5)
    tree.unregister("c")
    assert tree.stats() == PrefixStats(1, 1, 2, 4, 4)
    assert tree.longest_match([1, 2, 3, 4, 5]) == (4, ["a", "b"])
    tree.unregister("a")
    assert tree.longest_match([1, 2, 3]) == (3, ["b"])
    tree.unregister("b")
    assert tree.stats() == PrefixStats(0, 0, 0, 0, 0)


def test_inserted_data_outlive_sessions() -> None:
    tree = PrefixTree()
    tree.register_prefix("a", [1, 2, 3])
    assert tree.insert([1, 2]) == 2
    assert tree.insert([1, 2, 7]) == 2
    tree.unregister("a")
    assert tree.stats().total_tokens == 3
    assert tree.estimate_cached_tokens([1, 2, 3]) == 2
    assert tree.estimate_cached_tokens([1, 2, 7]) == 3
    check_invariants(tree)


def test_eviction_drops_least_recently_used_leaf() -> None:
    tree = PrefixTree(max_tokens=10)
    tree.insert([1, 1, 1, 1, 1])
    tree.insert([2, 2, 2, 2, 2])
    assert tree.longest_match([1, 1]) == (2, [])
    tree.insert([3, 3, 3])
    assert tree.estimate_cached_tokens([1, 1, 1, 1, 1]) == 5
    assert tree.estimate_cached_tokens([2, 2, 2, 2, 2]) == 0
    assert tree.total_tokens == 8


def test_estimate_does_not_count_as_an_access() -> None:
    tree = PrefixTree(max_tokens=10)
    tree.insert([1, 1, 1, 1, 1])
    tree.insert([2, 2, 2, 2, 2])
    assert tree.estimate_cached_tokens([1, 1, 1, 1, 1]) == 5
    tree.insert([3, 3, 3])
    assert tree.estimate_cached_tokens([1, 1, 1, 1, 1]) == 0
    assert tree.estimate_cached_tokens([2, 2, 2, 2, 2]) == 5


def test_eviction_merges_and_evicts_upwards() -> None:
    tree = PrefixTree(max_tokens=6)
    tree.insert([1, 2, 3, 4])
    tree.insert([1, 2, 5, 6])
    assert tree.stats().total_nodes == 3
    tree.longest_match([1, 2, 5])
    tree.insert([9])
    assert tree.stats() == PrefixStats(2, 0, 0, 4, 5)
    assert tree.estimate_cached_tokens([1, 2, 5, 6]) == 4
    tree.insert([8, 8, 8, 8, 8, 8])
    assert tree.estimate_cached_tokens([8] * 6) == 6
    assert tree.total_tokens == 6
    check_invariants(tree)


def test_registered_keys_are_never_evicted() -> None:
    tree = PrefixTree(max_tokens=3)
    tree.register_prefix("s", [1, 2, 3, 4, 5])
    assert tree.total_tokens == 5
    assert tree.insert([9, 9]) == 0
    assert tree.total_tokens == 5
    assert tree.insert([1, 2, 3, 4, 5, 6]) == 5
    assert tree.total_tokens == 5
    tree.unregister("s")
    assert tree.total_tokens == 0  # the insert above cached [1..6]; unlocked, it is evicted


def test_max_tokens_zero_keeps_nothing_unowned() -> None:
    tree = PrefixTree(max_tokens=0)
    assert tree.insert("abc") == 0
    assert tree.insert("abc") == 0
    assert tree.total_tokens == 0 and tree.max_tokens == 0


def test_lazy_heap_stays_bounded() -> None:
    tree = PrefixTree(max_tokens=1000)
    for i in range(50):
        tree.insert([i, i + 1, i + 2])
    for _ in range(20):
        for i in range(50):
            tree.longest_match([i, i + 1])
    assert len(tree._heap) <= 2 * tree._node_count + 65
    check_invariants(tree)


def test_analyze_batch_example() -> None:
    tree = PrefixTree()
    assert tree.analyze_batch([[1, 2, 3], [1, 2, 4], []]) == BatchAnalysis(6, 4, 4 / 6, 2)
    assert tree.analyze_batch([]) == BatchAnalysis(0, 0, 1.0, 0)
    assert tree.analyze_batch(["aa", "aa"]) == BatchAnalysis(4, 2, 0.5, 2)
    assert tree.stats() == PrefixStats(0, 0, 0, 0, 0)


def test_clear_and_repr() -> None:
    tree = PrefixTree(max_tokens=50)
    tree.register_prefix("a", [1, 2])
    assert repr(tree) == "PrefixTree(kind=tokens, sessions=1, nodes=1, tokens=2, max_tokens=50)"
    tree.clear()
    assert "a" not in tree and tree.stats() == PrefixStats(0, 0, 0, 0, 0)
    tree.insert("now text")
    assert repr(tree).startswith("PrefixTree(kind=text,")


def test_cached_boundary_survives_a_sibling_leaving() -> None:
    tree = PrefixTree()
    tree.register_prefix("s", "abcd")
    tree.insert("ab")
    tree.register_prefix("t", "abxy")
    tree.unregister("t")
    assert tree.stats().total_nodes == 2  # "ab" is cached, "cd" only registered: no merge
    tree.unregister("s")
    assert tree.stats() == PrefixStats(1, 0, 0, 2, 2)
    assert tree.estimate_cached_tokens("abcd") == 2
    check_invariants(tree)


def test_a_merge_keeps_the_later_access() -> None:
    tree = PrefixTree(max_tokens=6)
    tree.insert([1, 2, 3])
    tree.insert([1, 2, 4])
    tree.insert([7, 7])
    tree.longest_match([1, 2, 9])  # touches [1, 2] only
    tree.insert([8])  # evicts [3]; [1, 2] and [4] merge, keeping [1, 2]'s later access
    tree.insert([5])  # so [7, 7] is now the least recently used leaf
    assert tree.estimate_cached_tokens([1, 2, 4]) == 3
    assert tree.estimate_cached_tokens([7, 7]) == 0
    check_invariants(tree)
