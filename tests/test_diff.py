"""chainspec.diff: matching by id, the five op kinds, rendering, and large chains."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import chainspec
from chainspec import Spec
from chainspec.read.document import Document
from chainspec.read.model import SpecModel
from chainspec.read.resolve import resolve
from chainspec.revise import diff as _diff
from chainspec.revise.diff import longest_increasing, match_ids
from specs import MLP as SHARED_MLP
from specs import without

MLP = without(SHARED_MLP, "bn")

BLOG = Path(__file__).resolve().parent.parent / "specs" / "blog.yaml"


def spec(text: str = MLP, source: str = "net.yaml") -> chainspec.Spec:
    return chainspec.loads(text, source=source)


def kinds(plan: chainspec.Plan) -> list[tuple[str, str]]:
    return [(op.kind, op.node_id) for op in plan.ops]


# -- matching ------------------------------------------------------------------------------------

def test_match_ids_minimal_moves() -> None:
    m = match_ids(list("abcdef"), list("abdecf"))
    assert m.moved == ("c",)
    assert m.stay == frozenset("abdef")
    assert m.inserted == () and m.removed == ()


def test_match_ids_inserts_and_removes() -> None:
    m = match_ids(["a", "b", "c"], ["x", "a", "c", "y"])
    assert m.inserted == ("x", "y")
    assert m.removed == ("b",)
    assert m.moved == ()


def test_reversal_moves_all_but_one() -> None:
    ids = [f"n{i}" for i in range(50)]
    assert len(match_ids(ids, ids[::-1]).moved) == 49


def _lcs_length(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


@settings(max_examples=150, deadline=None)
@given(st.permutations(list(range(12))), st.sets(st.integers(0, 11)), st.sets(st.integers(100, 104)),
       st.randoms(use_true_random=False))
def test_matching_is_a_longest_common_subsequence(perm: list[int], dropped: set[int], added: set[int],
                                                  rnd: object) -> None:
    old = [f"n{i}" for i in range(12)]
    new = [f"n{i}" for i in perm if i not in dropped]
    for extra in sorted(added):
        new.insert(rnd.randrange(len(new) + 1), f"n{extra}")  # type: ignore[attr-defined]
    m = match_ids(old, new)
    common = [x for x in new if x in old]
    assert m.stay | set(m.moved) == set(common)
    # The kept ids are in the same order in both sequences ...
    assert [x for x in old if x in m.stay] == [x for x in new if x in m.stay]
    # ... and there is no longer such subsequence: the moves are minimal.
    assert len(m.stay) == _lcs_length(old, new)
    assert set(m.inserted) == set(new) - set(old)
    assert set(m.removed) == set(old) - set(new)


class CountedId(str):
    """An id that counts how often it is compared for equality (a hash lookup compares once)."""

    calls = 0

    def __eq__(self, other: object) -> bool:
        CountedId.calls += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


class CountedRank(int):
    """A position that counts the ``<`` comparisons made on it (what ``bisect`` does)."""

    calls = 0

    def __lt__(self, other: object) -> bool:
        CountedRank.calls += 1
        return int.__lt__(self, other)  # type: ignore[operator]


@pytest.mark.parametrize("order", ["same", "reversed", "shuffled"])
def test_matching_ten_thousand_ids_is_n_log_n(order: str) -> None:
    # Counted, not timed: a quadratic matching (a list lookup, a pairwise LCS) costs about n²/2 = 5e7
    # comparisons here; hashing and patience sorting stay near n and n·log2(n) = 1.3e5.
    import random

    n = 10_000
    old = [CountedId(f"n{i}") for i in range(n)]
    new = [CountedId(f"n{i}") for i in range(n)]  # equal ids, distinct objects: lookups must compare
    if order == "reversed":
        new.reverse()
    elif order == "shuffled":
        random.Random(0).shuffle(new)
    CountedId.calls = 0
    matching = match_ids(old, new)
    assert CountedId.calls <= 10 * n
    assert len(matching.stay) + len(matching.moved) == n
    rank = {node_id: CountedRank(i) for i, node_id in enumerate(old)}
    CountedRank.calls = 0
    longest_increasing(new, rank)
    assert CountedRank.calls <= n * (n.bit_length() + 1)


def test_longest_increasing_empty() -> None:
    assert longest_increasing([], {}) == []


# -- the op kinds ----------------------------------------------------------------------------------

def test_identical_specs_give_an_empty_plan() -> None:
    plan = chainspec.diff(spec(), spec(MLP + "# a comment\n"))
    assert plan.is_empty and plan.ops == [] and plan.param_delta == 0
    assert "No changes" in str(plan)


def test_update_when_no_parameter_shape_changes() -> None:
    plan = chainspec.diff(spec(), spec(MLP.replace("negative_slope: 0.2", "negative_slope: 0.1")
                                          .replace("p: 0.1", "p: 0.3")))
    assert kinds(plan) == [("update", "act1"), ("update", "drop")]
    assert plan.ops[0].changes[0].format() == "negative_slope 0.2 → 0.1"
    assert plan.param_delta == 0
    assert "~ act1 (leaky_relu): negative_slope 0.2 → 0.1" in str(plan)


def test_replace_when_parameter_shapes_change() -> None:
    new = MLP.replace("in_features: 16, out_features: 16", "in_features: 16, out_features: 24").replace(
        "in_features: 16, out_features: 4", "in_features: 24, out_features: 4")
    plan = chainspec.diff(spec(), spec(new))
    assert kinds(plan) == [("replace", "fc2"), ("replace", "fc3")]
    fc2 = plan.ops[0]
    assert fc2.params_before == 16 * 16 + 16 and fc2.params_after == 16 * 24 + 24
    assert fc2.param_delta == 8 * 16 + 8
    assert plan.param_delta == fc2.param_delta + 8 * 4
    assert "! fc2 (linear): out_features 16 → 24 (weights reinitialized)" in str(plan)
    assert "+136 params" in str(plan)


def test_replace_note_follows_init_mode() -> None:
    new = MLP.replace("out_features: 4}}", "out_features: 6}, init: keep}")
    plan = chainspec.diff(spec(), spec(new))
    assert kinds(plan) == [("replace", "fc3")]
    assert plan.ops[0].init == "keep"
    assert "(overlapping weights kept)" in str(plan)


def test_insert_and_remove() -> None:
    new = MLP.replace("      - {id: drop, type: dropout, args: {p: 0.1}}\n", "").replace(
        "      - {id: act2, type: relu}\n",
        "      - {id: act2, type: relu}\n      - {id: fc_extra, type: linear, args: {in_features: 16, "
        "out_features: 16}}\n")
    plan = chainspec.diff(spec(), spec(new))
    assert kinds(plan) == [("remove", "drop"), ("insert", "fc_extra")]
    insert = plan.ops[1]
    assert insert.after == "act2" and insert.position == 4
    assert insert.param_delta == 16 * 16 + 16
    text = str(plan)
    assert "- drop (dropout)" in text and "+ fc_extra (linear) after act2" in text
    assert "Plan: 1 to insert, 1 to remove; parameters +272." in text


def test_insert_at_head() -> None:
    new = MLP.replace("    nodes:\n", "    nodes:\n      - {id: pre, type: identity}\n")
    plan = chainspec.diff(spec(), spec(new))
    assert kinds(plan) == [("insert", "pre")]
    assert plan.ops[0].after is None and "at the head" in str(plan)


def test_move_is_minimal() -> None:
    lines = MLP.splitlines(keepends=True)
    drop = next(line for line in lines if "id: drop" in line)
    lines.remove(drop)
    lines.insert(next(i for i, line in enumerate(lines) if "id: act2" in line) + 1, drop)
    plan = chainspec.diff(spec(), spec("".join(lines)))
    assert kinds(plan) == [("move", "drop")]
    assert plan.ops[0].after == "act2"
    assert "> drop (dropout) moved after act2" in str(plan)
    assert plan.param_delta == 0


def test_moved_and_changed_node_gets_two_ops() -> None:
    lines = MLP.replace("p: 0.1", "p: 0.5").splitlines(keepends=True)
    drop = next(line for line in lines if "id: drop" in line)
    lines.remove(drop)
    lines.insert(next(i for i, line in enumerate(lines) if "id: act2" in line) + 1, drop)
    plan = chainspec.diff(spec(), spec("".join(lines)))
    assert kinds(plan) == [("move", "drop"), ("update", "drop")]


def test_type_change_is_a_replace() -> None:
    plan = chainspec.diff(spec(), spec(MLP.replace("{id: act2, type: relu}", "{id: act2, type: tanh}")))
    assert kinds(plan) == [("replace", "act2")]
    assert plan.ops[0].changes[0].format() == "type relu → tanh"


def test_optimizer_override_change_is_an_update_without_rebuild() -> None:
    new = MLP.replace("out_features: 4}}", "out_features: 4}, optim: {lr: 0.01}}")
    plan = chainspec.diff(spec(), spec(new))
    assert kinds(plan) == [("update", "fc3")]
    op = plan.ops[0]
    assert not op.rebuild
    assert op.changes[0].format() == "optim.lr (none) → 0.01"


def test_init_and_stage_bookkeeping_alone_change_nothing() -> None:
    new = MLP.replace("out_features: 4}}", "out_features: 4}, init: preserve}")
    assert chainspec.diff(spec(), spec(new)).is_empty


COMPOSITE = """\
chainspec: 1
vars: {width: 16}
types:
  block:
    params: {ch: null, slope: 0.2}
    nodes:
      - {id: fc, type: linear, args: {in_features: "${ch}", out_features: "${ch}"}}
      - {id: act, type: leaky_relu, args: {negative_slope: "${slope}"}}
chains:
  net:
    input_shape: [16]
    nodes:
      - {id: b1, type: block, args: {ch: "${width}"}}
      - {id: b2, type: block, args: {ch: 16, slope: 0.1}}
"""


def test_composite_args_are_shown_at_node_level() -> None:
    plan = chainspec.diff(spec(COMPOSITE), spec(COMPOSITE.replace("slope: 0.1", "slope: 0.3")))
    assert kinds(plan) == [("update", "b2")]
    assert [c.format() for c in plan.ops[0].changes] == ["slope 0.1 → 0.3"]


def test_composite_definition_change_is_shown_per_part() -> None:
    new = COMPOSITE.replace("type: leaky_relu", "type: leaky_relu").replace(
        '{negative_slope: "${slope}"}', '{negative_slope: 0.05}')
    plan = chainspec.diff(spec(COMPOSITE), spec(new))
    assert kinds(plan) == [("update", "b1"), ("update", "b2")]
    assert [c.format() for c in plan.ops[0].changes] == ["act.negative_slope 0.2 → 0.05"]


def test_vars_change_reaches_expressions() -> None:
    new = COMPOSITE.replace("vars: {width: 16}", "vars: {width: 16}").replace(
        'args: {ch: "${width}"}', 'args: {ch: "${width}", slope: 0.25}')
    plan = chainspec.diff(spec(COMPOSITE), spec(new))
    assert [c.format() for c in plan.ops[0].changes] == ["slope 0.2 → 0.25"]


def test_part_type_change_in_a_composite_is_a_replace() -> None:
    new = COMPOSITE.replace("type: leaky_relu, args: {negative_slope: \"${slope}\"}", "type: tanh")
    plan = chainspec.diff(spec(COMPOSITE), spec(new))
    assert [op.kind for op in plan.ops] == ["replace", "replace"]
    assert "act.type leaky_relu → tanh" in str(plan)


# -- stages ----------------------------------------------------------------------------------------

def test_growth_step_compares_two_stages(tmp_path: object) -> None:
    blog = chainspec.load(BLOG)
    plan = chainspec.diff(blog, blog, stage=(1, 2))
    assert kinds(plan) == [("insert", "b3")]
    assert plan.old_stage == 1 and plan.new_stage == 2
    assert plan.param_delta == 73_984
    assert str(plan).startswith(f"chain 'net', stage 1 → 2 ({blog.source})")
    assert chainspec.diff(blog, blog, stage=0).is_empty


def test_final_stage_is_each_specs_own() -> None:
    blog = chainspec.load(BLOG)
    flat = chainspec.loads(blog.text.replace(", stage: 1", "").replace(", stage: 2", ""), source="flat.yaml")
    assert chainspec.diff(blog, flat).is_empty  # final (2) vs final (0): same three blocks


def test_errors_name_the_problem() -> None:
    blog = chainspec.load(BLOG)
    with pytest.raises(ValueError, match="out of range"):
        chainspec.diff(blog, blog, stage=7)
    with pytest.raises(ValueError, match="no chain 'nett'; did you mean 'net'"):
        chainspec.diff(blog, blog, chain="nett")
    with pytest.raises(ValueError, match="pair"):
        chainspec.diff(blog, blog, stage=(0, 1, 2))  # type: ignore[arg-type]
    renamed = chainspec.loads(blog.text.replace("  net:", "  cnn:"), source="renamed.yaml")
    with pytest.raises(ValueError, match="matched by name"):
        chainspec.diff(blog, renamed)


def test_several_chains_need_a_name() -> None:
    two = MLP + "  other:\n    input_shape: [2]\n    nodes:\n      - {id: a, type: relu}\n"
    with pytest.raises(ValueError, match="chain=NAME"):
        chainspec.diff(spec(two), spec(two))
    assert chainspec.diff(spec(two), spec(two), chain="other").is_empty


def test_unbuildable_node_is_located() -> None:
    bad = MLP.replace("{id: fc2, type: linear, args: {in_features: 16, out_features: 16}}",
                      "{id: fc2, type: conv2d, args: {in_channels: 16, out_channels: 16, groups: 5}}")
    with pytest.raises(chainspec.SpecError, match=r"net\.yaml:9:\d+: .*cannot build node 'fc2'"):
        chainspec.diff(spec(), spec(bad))


# -- rendering -------------------------------------------------------------------------------------

def test_text_and_json_agree() -> None:
    new = MLP.replace("negative_slope: 0.2", "negative_slope: 0.1").replace(
        "      - {id: drop, type: dropout, args: {p: 0.1}}\n", "").replace(
        "out_features: 4}}", "out_features: 5}}")
    plan = chainspec.diff(spec(), spec(new, source="new.yaml"))
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["chain"] == "net" and data["old"] == {"source": "net.yaml", "stage": 0}
    assert data["counts"] == {"insert": 0, "remove": 1, "move": 0, "update": 1, "replace": 1}
    assert data["param_delta"] == plan.param_delta == 17
    assert [(o["marker"], o["node_id"]) for o in data["ops"]] == [("-", "drop"), ("~", "act1"), ("!", "fc3")]
    assert data["ops"][1]["changes"] == [{"field": "negative_slope", "old": 0.2, "new": 0.1}]
    lines = str(plan).splitlines()
    assert lines[0] == "chain 'net', stage 0 (net.yaml → new.yaml)"
    markers = [line.split()[0] for line in lines if re.match(r"^  [-+~!>] ", line)]
    assert markers == ["-", "~", "!"]
    assert lines[-1] == "Plan: 1 to remove, 1 to update, 1 to replace; parameters +17."


def test_tuple_args_render_as_lists() -> None:
    conv = """\
chainspec: 1
chains:
  net:
    input_shape: [3, 8, 8]
    nodes:
      - {id: pool, type: avgpool2d, args: {kernel_size: [2, 2]}}
"""
    plan = chainspec.diff(spec(conv), spec(conv.replace("[2, 2]", "[4, 4]")))
    assert plan.ops[0].changes[0].format() == "kernel_size [2, 2] → [4, 4]"
    assert plan.to_dict()["ops"][0]["changes"][0]["new"] == [4, 4]


# -- big chains ------------------------------------------------------------------------------------

def big_spec(ids: list[str], source: str = "big.yaml", edits: dict[str, str] | None = None) -> Spec:
    """A spec with one node per id, built from YAML text without the loader's size limits."""
    edits = edits or {}
    nodes = ",".join(f"{{id: {i},type: {edits.get(i, 't')}}}" for i in ids)
    text = ("chainspec: 1\ntypes:\n  t: {nodes: [{id: l, type: linear, args: {in_features: 8, out_features: 8}}]}\n"
            "  u: {nodes: [{id: l, type: linear, args: {in_features: 8, out_features: 8, bias: false}}]}\n"
            f"chains:\n  net:\n    input_shape: [8]\n    nodes: [{nodes}]\n")
    data = yaml.safe_load(text)
    model = SpecModel.model_validate(data)
    doc = Document(source, data)
    # 10,000 nodes of one composite each are 20,000 modules (containers count): past the default max_nodes.
    chains, stages, problems = resolve(model, doc, (), chainspec.Limits(max_nodes=100_000))
    assert not problems
    return Spec(model, doc, text, chains, stages, ())


def test_ten_thousand_node_diff(monkeypatch: pytest.MonkeyPatch) -> None:
    old_ids = [f"n{i}" for i in range(10_000)]
    new_ids = list(old_ids)
    new_ids.remove("n5000")  # remove
    new_ids.insert(100, "fresh")  # insert
    new_ids.remove("n42")
    new_ids.insert(9000, "n42")  # move
    old, new = big_spec(old_ids), big_spec(new_ids, edits={"n7": "u"})
    measured: list[str] = []
    real = _diff._measure

    def counting(spec: Spec, node: object) -> object:
        measured.append(node.id)  # type: ignore[attr-defined]
        return real(spec, node)  # type: ignore[arg-type]

    monkeypatch.setattr(_diff, "_measure", counting)
    plan = chainspec.diff(old, new)
    assert sorted(kinds(plan)) == [("insert", "fresh"), ("move", "n42"), ("remove", "n5000"), ("replace", "n7")]
    assert plan.param_delta == 72 - 72 - 8
    # Only changed nodes are built (on the meta device), once per distinct definition: t and u.
    assert len(measured) == 2
