"""``chainspec.Chain``: the doubly linked list of modules, its splicing, and torch's machinery on long chains."""

from __future__ import annotations

import copy
import io
import itertools
import math
import sys

import pytest
import torch
from torch import nn

from chainspec import Chain, ChainspecError, Node, NodeNotFoundError


class Digit(nn.Module):
    """Appends a decimal digit: ``x * 10 + k``. A chain's output on 0 spells its order."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 10 + self.k


class Mul(nn.Module):
    """Multiplies by a constant: cheap, parameter-free, and one autograd node per call."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def digits(n: int = 4) -> Chain:
    """Chain a..: nodes named a, b, c, ... holding Digit(1), Digit(2), ..."""
    return Chain([(chr(ord("a") + i), Digit(i + 1)) for i in range(n)], name="net")


def spelled(chain: Chain) -> int:
    return int(chain(torch.zeros(1, dtype=torch.float64)).item())


def linears(n: int) -> Chain:
    return Chain([(f"n{i}", nn.Linear(2, 2)) for i in range(n)], name="long")


# -- navigation -------------------------------------------------------------------


def test_head_tail_prev_next_id_module() -> None:
    chain = digits(3)
    a, b, c = chain["a"], chain["b"], chain["c"]
    assert chain.head is a and chain.tail is c
    assert (a.prev, a.next, b.prev, b.next, c.prev, c.next) == (None, b, a, c, b, None)
    assert (a.id, b.id, c.id) == ("a", "b", "c")
    assert isinstance(b.module, Digit) and b.module.k == 2
    assert isinstance(b, Node) and b.type == "Digit"
    assert chain.b is b.module  # also reachable as a submodule attribute, like nn.Sequential's


def test_iteration_reversed_len_getitem_contains() -> None:
    chain = digits(4)
    assert [n.id for n in chain] == ["a", "b", "c", "d"]
    assert [n.id for n in reversed(chain)] == ["d", "c", "b", "a"]
    assert len(chain) == 4
    assert chain["b"].id == "b"
    assert "b" in chain and "z" not in chain
    assert chain["b"] in chain
    assert chain.ids() == ["a", "b", "c", "d"]
    assert spelled(chain) == 1234


def test_empty_chain_is_identity() -> None:
    chain = Chain()
    assert chain.head is None and chain.tail is None and len(chain) == 0
    assert list(chain) == [] and list(reversed(chain)) == []
    x = torch.randn(3)
    assert chain(x) is x
    assert repr(chain) == "Chain(name='chain', 0 nodes)"


def test_chain_from_mapping() -> None:
    chain = Chain({"x": Digit(7), "y": Digit(8)})
    assert chain.ids() == ["x", "y"] and spelled(chain) == 78


def test_getitem_unknown_id_suggests_closest() -> None:
    chain = digits(2)
    chain.insert_after("b", "block2", Digit(9))
    with pytest.raises(NodeNotFoundError, match=r"no node 'blok2' in chain 'net'; did you mean 'block2'\?"):
        chain["blok2"]
    with pytest.raises(KeyError):  # NodeNotFoundError is a KeyError, as a mapping lookup should raise
        chain["zzz"]
    # An nn.Sequential habit: positions are not ids, and the message says which id is at that position.
    with pytest.raises(NodeNotFoundError, match=r"chain 'net' is indexed by node id, not by position: "
                                                r"chain.ids\(\)\[-1\] is 'block2'"):
        chain[-1]  # type: ignore[index]
    with pytest.raises(NodeNotFoundError, match=r"indexed by node id, not by position$"):
        chain[7]  # type: ignore[index]
    with pytest.raises(NodeNotFoundError, match=r"indexed by node id, not by position$"):
        chain[0:2]  # type: ignore[index]


# -- splicing ----------------------------------------------------------------------


def _ref(chain: Chain, node_id: str, by: str) -> str | Node:
    return node_id if by == "id" else chain[node_id]


@pytest.mark.parametrize("by", ["id", "node"])
@pytest.mark.parametrize(("op", "expected_ids", "expected_value"), [
    (lambda c, r: c.insert_after(r("b"), "x", Digit(9)), "abxcd", 12934),
    (lambda c, r: c.insert_after(r("d"), "x", Digit(9)), "abcdx", 12349),
    (lambda c, r: c.insert_before(r("b"), "x", Digit(9)), "axbcd", 19234),
    (lambda c, r: c.insert_before(r("a"), "x", Digit(9)), "xabcd", 91234),
    (lambda c, r: c.remove(r("b")), "acd", 134),
    (lambda c, r: c.remove(r("a")), "bcd", 234),
    (lambda c, r: c.remove(r("d")), "abc", 123),
    (lambda c, r: c.replace(r("c"), Digit(7)), "abcd", 1274),
    (lambda c, r: c.move_after(r("a"), r("c")), "bcad", 2314),
    (lambda c, r: c.move_after(r("d"), None), "dabc", 4123),
    (lambda c, r: c.move_before(r("d"), r("b")), "adbc", 1423),
    (lambda c, r: c.move_before(r("a"), None), "bcda", 2341),
], ids=["insert_after", "insert_after_tail", "insert_before", "insert_before_head", "remove", "remove_head",
        "remove_tail", "replace", "move_after", "move_to_head", "move_before", "move_to_tail"])
def test_splicing(by: str, op, expected_ids: str, expected_value: int) -> None:
    chain = digits(4)
    assert spelled(chain) == 1234  # forward once, so that the splice must refresh what forward runs
    op(chain, lambda node_id: _ref(chain, node_id, by))
    assert "".join(chain.ids()) == expected_ids
    assert [n.id for n in reversed(chain)] == list(reversed(expected_ids))
    assert chain.head.prev is None and chain.tail.next is None
    for node in chain:  # the links agree both ways
        assert node.next is None or node.next.prev is node
    assert spelled(chain) == expected_value
    assert sorted(name for name, _ in chain.named_children()) == sorted(expected_ids)


def test_splicing_returns_the_node_or_the_old_module() -> None:
    chain = digits(3)
    new = chain.insert_after("a", "x", Digit(9), node_type="digit")
    assert isinstance(new, Node) and new.id == "x" and new.type == "digit" and chain["x"] is new
    old_module = chain["b"].module
    assert chain.replace("b", Digit(5), node_type="five") is old_module
    assert chain["b"].type == "five" and chain.b.k == 5
    removed = chain.remove("x")
    assert removed is new and removed.prev is None and removed.next is None
    assert removed not in chain and "x" not in chain
    assert not hasattr(chain, "x")
    chain.append("x", Digit(6))  # the id is free again
    chain.prepend("p", Digit(8))
    assert chain.ids() == ["p", "a", "b", "c", "x"]


def test_setting_and_deleting_node_attributes() -> None:
    chain = digits(3)
    assert spelled(chain) == 123
    chain.b = Digit(7)  # a replace: same id, same place
    assert spelled(chain) == 173 and chain["b"].module.k == 7 and chain.ids() == ["a", "b", "c"]
    del chain.b  # a remove
    assert chain.ids() == ["a", "c"] and spelled(chain) == 13 and not hasattr(chain, "b")
    with pytest.raises(ChainspecError, match=r"chain 'net' has no node 'zz': a module set as an attribute would "
                                             r"never run; add it with append"):
        chain.zz = Digit(1)
    chain.name, chain.stage = "renamed", 3  # plain attributes are still plain
    assert (chain.name, chain.stage) == ("renamed", 3)


def test_tools_that_swap_modules_in_place_are_honoured() -> None:
    """Quantization's convert writes the new modules into ``_modules``; the chain runs them."""
    chain = Chain([("fc", nn.Linear(8, 8)), ("act", nn.ReLU()), ("out", nn.Linear(8, 2))])
    quantized = torch.ao.quantization.quantize_dynamic(chain, {nn.Linear}, dtype=torch.qint8)
    assert type(quantized["fc"].module).__name__ == "Linear" and quantized["fc"].module is quantized.fc
    assert type(quantized.fc).__module__.startswith("torch.ao.nn.quantized")
    x = torch.randn(3, 8)
    by_hand = quantized.out(quantized.act(quantized.fc(x)))
    assert torch.equal(quantized(x), by_hand) and not torch.equal(quantized(x), chain(x))
    assert type(chain.fc) is nn.Linear  # the original is untouched


def test_splicing_never_walks_the_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    """Splicing is O(1): no operation iterates over the nodes (checked structurally, not by timing)."""
    chain = Chain([(f"n{i}", Digit(1)) for i in range(1000)])
    chain(torch.zeros(1))  # build the cached order that forward uses

    def walk(self: Chain):
        raise AssertionError("splicing walked the chain")

    monkeypatch.setattr(Chain, "__iter__", walk)
    monkeypatch.setattr(Chain, "__reversed__", walk)
    chain.insert_after("n500", "x", Digit(2))
    chain.insert_before(chain["n10"], "y", Digit(3))
    chain.replace("n700", Digit(4))
    chain.move_after("x", "n3")
    chain.move_before("n900", None)
    chain.remove("y")
    chain.prepend("h", Digit(5))
    chain.append("t", Digit(6))
    assert chain["x"].prev.id == "n3" and chain.tail.id == "t" and chain.head.id == "h"
    monkeypatch.undo()
    assert len(chain.ids()) == 1003


@pytest.mark.parametrize(("op", "error", "message"), [
    (lambda c: c.append("b", Digit(1)), ChainspecError, r"chain 'net' already has a node 'b'"),
    (lambda c: c.insert_after("a", "c", Digit(1)), ChainspecError, r"already has a node 'c'"),
    (lambda c: c.insert_after("bb", "x", Digit(1)), NodeNotFoundError,
     r"no node 'bb' in chain 'net'; did you mean 'b'\?"),
    (lambda c: c.insert_before("nope", "x", Digit(1)), NodeNotFoundError, r"no node 'nope' in chain 'net'"),
    (lambda c: c.remove("cc"), NodeNotFoundError, r"did you mean 'c'\?"),
    (lambda c: c.replace("q", Digit(1)), NodeNotFoundError, r"no node 'q'"),
    (lambda c: c.replace("a", "relu"), TypeError, r"node 'a': expected an nn.Module, got str"),
    (lambda c: c.append("x", lambda t: t), TypeError, r"expected an nn.Module, got function"),
    (lambda c: c.move_after("a", "a"), ChainspecError, r"cannot move node 'a' after itself"),
    (lambda c: c.move_before("b", "b"), ChainspecError, r"cannot move node 'b' before itself"),
    (lambda c: c.append("forward", Digit(1)), ChainspecError, r"'forward' is an attribute of nn.Module"),
    (lambda c: c.append("training", Digit(1)), ChainspecError, r"'training' is an attribute"),
    (lambda c: c.append("head", Digit(1)), ChainspecError, r"'head' is an attribute"),
    (lambda c: c.append("_hidden", Digit(1)), ChainspecError, r"starts with '_'"),
    (lambda c: c.append("class", Digit(1)), ChainspecError, r"'class' is a Python keyword"),
    (lambda c: c.append("2b", Digit(1)), ChainspecError, r"'2b' is not a valid identifier"),
    (lambda c: c.append("a.b", Digit(1)), ChainspecError, r"'a.b' is not a valid identifier"),
    (lambda c: c.append(3, Digit(1)), ChainspecError, r"3 is not a string"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_splicing_errors(op, error: type[Exception], message: str) -> None:
    chain = digits(3)
    with pytest.raises(error, match=message):
        op(chain)
    assert chain.ids() == ["a", "b", "c"] and spelled(chain) == 123  # nothing changed


def test_nodes_of_another_chain_are_refused() -> None:
    one, other = digits(2), digits(2)
    with pytest.raises(NodeNotFoundError, match=r"node 'a' is not in chain 'net'"):
        one.insert_after(other["a"], "x", Digit(1))
    removed = one.remove("b")
    with pytest.raises(NodeNotFoundError, match=r"node 'b' is not in chain"):
        one.remove(removed)
    assert other["a"] not in one


# -- state_dict keys ---------------------------------------------------------------


def test_state_dict_keys_start_with_the_node_id_and_survive_splicing() -> None:
    chain = Chain([("b1", nn.Linear(3, 4)), ("b2", nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))),
                   ("b3", nn.Linear(4, 2))])
    before = chain.state_dict()
    assert all(key.split(".")[0] in {"b1", "b2", "b3"} for key in before)
    b2_keys = [k for k in before if k.startswith("b2.")]
    assert b2_keys == ["b2.0.weight", "b2.0.bias", "b2.1.weight", "b2.1.bias", "b2.1.running_mean",
                       "b2.1.running_var", "b2.1.num_batches_tracked"]
    chain.insert_before("b2", "pre", nn.Linear(4, 4))
    chain.remove("b1")
    chain.insert_after("pre", "act", nn.ReLU())
    chain.move_after("b3", "pre")
    after = chain.state_dict()
    for key in [*b2_keys, "b3.weight", "b3.bias"]:
        assert key in after and torch.equal(after[key], before[key])
    assert not any(k.startswith("b1.") for k in after)
    assert {k.split(".")[0] for k in after} == {"pre", "b2", "b3"}


def test_load_state_dict_matches_by_id_not_position() -> None:
    src = Chain([("a", nn.Linear(2, 2)), ("b", nn.Linear(2, 2))])
    dst = Chain([("b", nn.Linear(2, 2))])
    dst.insert_before("b", "a", nn.Linear(2, 2))
    dst.load_state_dict(src.state_dict())
    x = torch.randn(5, 2)
    assert torch.equal(dst(x), src(x))
    with pytest.raises(RuntimeError, match="Missing key"):
        Chain([("c", nn.Linear(2, 2))]).load_state_dict(src.state_dict())


def _bn_chain() -> Chain:
    torch.manual_seed(0)
    return Chain([("b1", nn.Linear(3, 4)), ("b2", nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))),
                  ("b3", nn.Linear(4, 2))])


def _edited(edit) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    state = _bn_chain().state_dict()
    edit(state)
    return state


def _drop_num_batches(state):
    """A state_dict saved by torch < 0.4.1: BatchNorm at version 1, without num_batches_tracked."""
    del state["b2.1.num_batches_tracked"]
    state._metadata["b2.1"]["version"] = 1


LOAD_CASES = {
    "exact": (lambda s: None, {}),
    "missing": (lambda s: s.pop("b3.bias"), {}),
    "unexpected_top": (lambda s: s.update(stray=torch.zeros(1)), {}),
    "unexpected_in_node": (lambda s: s.update({"b1.extra": torch.zeros(1)}), {}),
    "unknown_node": (lambda s: s.update({"b9.weight": torch.zeros(1)}), {}),
    "size_mismatch": (lambda s: s.update({"b1.weight": torch.zeros(5, 3)}), {}),
    "not_strict": (lambda s: (s.pop("b1.bias"), s.update({"b9.w": torch.zeros(1)})), {"strict": False}),
    "assign": (lambda s: None, {"assign": True}),
    "old_batchnorm_metadata": (_drop_num_batches, {}),
}


@pytest.mark.parametrize("case", list(LOAD_CASES))
def test_load_state_dict_does_what_torch_does(case: str) -> None:
    """Chain's linear-time load_state_dict against torch's own, on the same inputs."""
    edit, kwargs = LOAD_CASES[case]
    outcomes = []
    for load in (Chain.load_state_dict, nn.Module.load_state_dict):
        chain = _bn_chain()
        calls: list[str] = []
        log = calls.append
        chain.register_load_state_dict_post_hook(lambda m, keys, log=log: log(f"post {sorted(keys.missing_keys)}"))
        chain.b2.register_load_state_dict_post_hook(lambda m, keys, log=log: log("post b2"))
        chain.b3._register_load_state_dict_pre_hook(lambda *args, log=log: log(f"pre {args[1]}"))
        state = _edited(edit)
        try:
            result = load(chain, state, **kwargs)
        except RuntimeError as exc:
            result = str(exc)
        after = {k: v.clone() for k, v in chain.state_dict().items()}
        same_objects = chain.b1.weight.data_ptr() == state["b1.weight"].data_ptr()  # assign=True shares storage
        outcomes.append((result, calls, after, same_objects))
    (mine, my_calls, my_state, my_assign), (theirs, their_calls, their_state, their_assign) = outcomes
    assert mine == theirs and my_calls == their_calls and my_assign == their_assign
    assert my_state.keys() == their_state.keys()
    assert all(torch.equal(my_state[k], their_state[k]) for k in my_state)
    if case == "exact":
        assert str(mine) == "<All keys matched successfully>"
    if case == "missing":
        assert 'Missing key(s) in state_dict: "b3.bias"' in mine
    if case == "assign":
        assert my_assign


# -- running -------------------------------------------------------------------------


def test_forward_and_backward_through_100000_nodes() -> None:
    """The forward is a loop, so depth is no limit; autograd records and runs all 100,000 multiplications.

    Each node multiplies by 1.0001, so output and gradient are 1.0001**100000
    (about 22,015). Dropping a single node, forward or backward, would change
    them by 1e-4 relative; float64 rounding over the chain stays below 1e-10.
    """
    n, factor = 100_000, 1.0001
    chain = Chain([(f"n{i}", Mul(factor)) for i in range(n)])
    x = torch.ones(2, dtype=torch.float64, requires_grad=True)
    y = chain(x)
    expected = torch.full((2,), factor**n, dtype=torch.float64)
    assert torch.allclose(y.detach(), expected, rtol=1e-8, atol=0)
    y.sum().backward()
    assert torch.allclose(x.grad, expected, rtol=1e-8, atol=0)


def test_parameters_get_gradients_through_a_long_chain() -> None:
    chain = linears(2000)
    chain(torch.randn(3, 2)).sum().backward()
    assert all(p.grad is not None for p in chain.parameters())


def test_capture_intermediate_outputs_by_id() -> None:
    chain = digits(4)
    out, features = chain.capture(torch.zeros(1), ["b", "d"])
    assert out.item() == 1234 and set(features) == {"b", "d"}
    assert features["b"].item() == 12 and features["d"].item() == 1234
    chain.insert_after("a", "x", Digit(9))
    _, features = chain.capture(torch.zeros(1), ["x", "b"])
    assert features == {"x": torch.tensor([19.0]), "b": torch.tensor([192.0])}
    with pytest.raises(NodeNotFoundError, match=r"no node 'bb'.*did you mean 'b'\?"):
        chain.capture(torch.zeros(1), ["bb"])
    _, features = chain.capture(torch.zeros(1), "x")  # one id as a plain string
    assert features == {"x": torch.tensor([19.0])}
    chain.insert_after("x", "bd", Digit(5))
    _, features = chain.capture(torch.zeros(1), "bd")  # not the ids 'b' and 'd'
    assert list(features) == ["bd"] and features["bd"].item() == 195


def test_capture_keeps_the_graph_for_feature_losses() -> None:
    chain = Chain([("fc", nn.Linear(3, 3)), ("act", nn.Tanh())])
    _, features = chain.capture(torch.randn(2, 3), ["fc"])
    features["fc"].pow(2).sum().backward()
    assert chain.fc.weight.grad is not None


def test_forward_hooks_on_the_chain_and_on_nodes() -> None:
    chain = digits(3)
    seen: list[tuple[str, float]] = []
    handles = [chain.register_forward_hook(lambda m, i, o: seen.append(("chain", o.item())))]
    for node in chain:
        handles.append(node.module.register_forward_hook(
            lambda m, i, o, node_id=node.id: seen.append((node_id, o.item()))))
    chain.register_forward_pre_hook(lambda m, i: (i[0] + 1,))  # the input 0 becomes 1
    assert spelled(chain) == 1123
    assert seen == [("a", 11.0), ("b", 112.0), ("c", 1123.0), ("chain", 1123.0)]


# -- torch's machinery on a 10,000-node chain ------------------------------------------

N = 10_000


@pytest.fixture(scope="module")
def long_chain() -> Chain:
    """10,000 Linear(2, 2) nodes; tests that change it work on a deep copy."""
    return linears(N)


def test_state_dict_and_load_state_dict_at_10000(long_chain: Chain) -> None:
    state = long_chain.state_dict()
    assert len(state) == 2 * N and next(iter(state)) == "n0.weight"
    other = linears(N)
    other.load_state_dict(state)
    x = torch.randn(4, 2)
    assert torch.equal(other(x), long_chain(x))


def test_repr_at_10000(long_chain: Chain) -> None:
    text = repr(long_chain)
    assert text.startswith("Chain(name='long', 10000 nodes\n  (n0): Linear(in_features=2, out_features=2, bias=True)")
    assert text.count("\n") == N + 1


def test_to_half_train_eval_at_10000(long_chain: Chain) -> None:
    chain = copy.deepcopy(long_chain)
    assert chain.to(torch.float64) is chain
    assert all(p.dtype == torch.float64 for p in chain.parameters())
    assert chain(torch.randn(1, 2, dtype=torch.float64)).dtype == torch.float64
    chain.half()
    assert all(p.dtype == torch.float16 for p in chain.parameters())
    chain.eval()
    assert not chain.training and not any(m.training for m in chain.modules())
    chain.train()
    assert chain.training and all(m.training for m in chain.modules())
    assert chain.to("meta").n9999.weight.is_meta


def test_deepcopy_at_10000_keeps_order_and_copies_weights(long_chain: Chain) -> None:
    chain = copy.deepcopy(long_chain)
    chain.move_before("n9999", "n0")  # an order unlike insertion order
    clone = copy.deepcopy(chain)
    assert clone.ids() == chain.ids() and clone.head.id == "n9999" and clone.tail.prev.id == "n9997"
    assert clone.n5.weight is not chain.n5.weight and torch.equal(clone.n5.weight, chain.n5.weight)
    x = torch.randn(3, 2)
    assert torch.equal(clone(x), chain(x))
    clone.insert_after("n0", "extra", nn.Identity())  # the copy is spliceable on its own
    assert "extra" not in chain and clone["extra"].prev is clone["n0"]


def test_torch_save_and_load_at_10000(long_chain: Chain) -> None:
    chain = copy.deepcopy(long_chain)
    chain.remove("n3")
    chain.insert_after("n0", "late", nn.Linear(2, 2))
    buffer = io.BytesIO()
    torch.save(chain, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert isinstance(loaded, Chain) and loaded.ids() == chain.ids() and loaded.name == "long"
    x = torch.randn(3, 2)
    assert torch.equal(loaded(x), chain(x))
    assert loaded["late"] in loaded and loaded["late"].next.id == "n1"


def test_named_modules_and_parameters_each_once_at_10000(long_chain: Chain) -> None:
    names = [name for name, _ in long_chain.named_modules()]
    assert names[0] == "" and len(names) == N + 1 and names[1:] == [f"n{i}" for i in range(N)]
    params = list(long_chain.parameters())
    assert len(params) == 2 * N and len({id(p) for p in params}) == 2 * N
    assert len(list(long_chain.children())) == N


def test_forward_hooks_at_10000(long_chain: Chain) -> None:
    calls = []
    handles = [node.module.register_forward_hook(lambda m, i, o: calls.append(1)) for node in long_chain]
    long_chain(torch.randn(1, 2))
    for handle in handles:
        handle.remove()
    assert len(calls) == N


def test_naive_recursion_never_happens_at_10000(long_chain: Chain) -> None:
    """Nothing in the module tree follows the links: it is one level deep, however long the chain."""
    depth = max(name.count(".") for name, _ in long_chain.named_modules())
    assert depth == 0
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(_stack_depth() + 100)  # far below the chain's length
    try:
        long_chain.state_dict()
        repr(long_chain)
        long_chain.train()
        long_chain(torch.randn(1, 2))
    finally:
        sys.setrecursionlimit(old)


def _stack_depth() -> int:
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


# -- the naive pattern, for contrast -------------------------------------------------


class NaiveNode(nn.Module):
    """The pattern Chain avoids: each node a module holding its neighbours as attributes."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.next: NaiveNode | None = None
        self.prev: NaiveNode | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.module(x)
        return self.next(x) if self.next is not None else x


def naive(n: int, *, both_ways: bool) -> NaiveNode:
    nodes = [NaiveNode(nn.Linear(2, 2)) for _ in range(n)]
    for a, b in itertools.pairwise(nodes):
        a.next = b  # registered as a submodule: the module tree is as deep as the list
        if both_ways:
            b.prev = a  # ... and now it has a cycle too
    return nodes[0]


NAIVE_FAILURES = {
    "state_dict": lambda m: m.state_dict(),
    "repr": repr,
    "to": lambda m: m.to(torch.float64),
    "train": lambda m: m.train(),
    "eval": lambda m: m.eval(),
    "forward": lambda m: m(torch.randn(1, 2)),
}


@pytest.mark.parametrize("both_ways", [False, True], ids=["deep", "cyclic"])
@pytest.mark.parametrize("operation", list(NAIVE_FAILURES))
def test_the_naive_linked_list_fails_where_chain_does_not(operation: str, both_ways: bool) -> None:
    n = 3 * sys.getrecursionlimit()
    run = NAIVE_FAILURES[operation]
    with pytest.raises(RecursionError):  # depth alone breaks it; a cycle would recurse forever anyway
        run(naive(n, both_ways=both_ways))
    chain = Chain([(f"n{i}", nn.Linear(2, 2)) for i in range(n)])
    run(chain)  # the same modules, linked by Chain: no recursion anywhere


# -- torch.compile -------------------------------------------------------------------


def test_torch_compile_inductor_on_a_small_chain() -> None:
    torch._dynamo.reset()
    chain = Chain([("fc1", nn.Linear(4, 8)), ("act", nn.ReLU()), ("fc2", nn.Linear(8, 2))])
    compiled = torch.compile(chain)
    x = torch.randn(3, 4)
    assert torch.allclose(compiled(x), chain(x), atol=1e-6)
    chain.insert_after("act", "drop", nn.Dropout(0.5))  # a splice is seen by the compiled module
    chain.eval()
    assert torch.allclose(compiled(x), chain(x), atol=1e-6)
    chain.remove("act")
    assert torch.allclose(compiled(x), chain(x), atol=1e-6)


@pytest.mark.slow
def test_torch_compile_at_10000_nodes() -> None:
    """dynamo traces all 10,000 nodes into one graph.

    The backend is dynamo's CompileCounter, which records each graph dynamo
    produces and runs it as is: the tracing (the part that would hit the
    recursion limit if it followed the links) is real, and inductor's code
    generation for 10,000 ops would only add minutes.
    """
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    chain = Chain([(f"n{i}", Mul(math.exp(1 / N))) for i in range(N)])
    counter = CompileCounter()
    compiled = torch.compile(chain, backend=counter)
    x = torch.ones(1, dtype=torch.float64)
    assert torch.allclose(compiled(x), torch.tensor([math.e], dtype=torch.float64))
    assert counter.frame_count == 1 and counter.op_count == N  # one graph, one mul per node
