"""A plan is a promise: ``diff`` refuses exactly what ``apply`` refuses, and says what apply will do.

- The four plans that ``diff`` once described as function-preserving and ``apply`` then refused
  (or applied with the loss moving) are refused at diff time, located, or described plainly.
- A property test draws random revisions of a small network (insert, remove, move, widen,
  narrow, change an activation, each with every ``init``) and checks that ``diff`` raises a
  SpecError exactly when ``apply`` of the same plan, made without diff's rehearsal, does; and,
  where the plan claims the function is kept, that it is, on a probe batch.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import chainspec
from chainspec import CertificateError, SpecError
from chainspec.revise.diff import _plan  # the plan without diff's rehearsal: what apply alone refuses
from specs import one_chain


def mlp(*lines: str) -> chainspec.Spec:
    return chainspec.loads(one_chain(*lines), source="net.yaml")


def linear(node_id: str, fan_in: int, fan_out: int, init: str = "") -> str:
    extra = f", init: {init}" if init else ""
    return f"{{id: {node_id}, type: linear, args: {{in_features: {fan_in}, out_features: {fan_out}}}{extra}}}"


# -- the four plans of the issue -------------------------------------------------------------------

def test_a_preserve_after_a_removed_node_names_the_removal() -> None:
    old = mlp(linear("fc1", 8, 16), "{id: a1, type: relu}", linear("fc2", 16, 16), "{id: a2, type: relu}",
              linear("fc3", 16, 4))
    new = mlp(linear("fc1", 8, 24, "preserve"), "{id: a1, type: relu}", linear("fc3", 24, 4, "preserve"))
    with pytest.raises(SpecError, match=r"net\.yaml:\d+:\d+: chains\.net\.nodes\[2\]\.init: .*Linear in node "
                                        r"'fc3': its input grows 16 → 24, but node 'a2' before it is removed"):
        chainspec.diff(old, new)


PROJECTION = """\
chainspec: 1
types:
  block:
    residual: true
    params: {{width: 8}}
    nodes:
      - {{id: fc, type: linear, args: {{in_features: 8, out_features: "${{width}}"}}}}
    shortcut:
      - {{id: proj, type: linear, args: {{in_features: 8, out_features: "${{width}}"}}}}
chains:
  net:
    input_shape: [8]
    nodes:
      - {{id: b, type: block, args: {{width: {width}}}{init}}}
      - {{id: out, type: linear, args: {{in_features: {width}, out_features: 2}}{init}}}
"""


def test_widening_a_block_with_a_projection_shortcut_is_refused_at_diff() -> None:
    old = chainspec.loads(PROJECTION.format(width=8, init=""), source="old.yaml")
    new = chainspec.loads(PROJECTION.format(width=12, init=", init: preserve"), source="new.yaml")
    with pytest.raises(SpecError, match=r"new\.yaml:\d+:\d+: chains\.net\.nodes\[0\]\.init: init: preserve cannot "
                                        r"keep the sum of Residual in node 'b': its body and its shortcut would"):
        chainspec.diff(old, new)


def test_inserting_a_non_residual_block_with_a_norm_and_preserve_is_refused_at_diff() -> None:
    text = """\
chainspec: 1
types:
  conv_block:
    nodes:
      - {id: conv, type: conv2d, args: {in_channels: 4, out_channels: 4, padding: 1}}
      - {id: bn, type: batchnorm2d, args: {num_features: 4}}
chains:
  net:
    input_shape: [4, 6, 6]
    nodes:
      - {id: b1, type: conv_block}
      - {id: b2, type: conv_block, stage: 1, init: preserve}
"""
    spec = chainspec.loads(text, source="bn.yaml")
    with pytest.raises(SpecError, match=r"bn\.yaml:12:\d+: chains\.net\.nodes\[1\]\.init: init: preserve cannot "
                                        r"make BatchNorm2d \(bn\) an identity"):
        chainspec.diff(spec, spec, stage=(0, 1))


def test_an_identity_insert_next_to_a_changed_activation_does_not_claim_the_function() -> None:
    old = mlp(linear("fc1", 8, 8), "{id: act, type: gelu}", linear("fc2", 8, 4))
    new = mlp(linear("fc1", 8, 8), "{id: act, type: gelu, args: {approximate: tanh}}",
              linear("extra", 8, 8, "preserve"), linear("fc2", 8, 4))
    plan = chainspec.diff(old, new)
    text = str(plan)
    assert "+ extra (linear) after act (identity init)" in text
    assert "Function: not claimed: act changes (approximate)." in text and "Function: preserved" not in text
    assert plan.to_dict()["function_preserved"] is False


def test_an_inserted_relu_claims_the_function_only_on_non_negative_inputs() -> None:
    old = mlp(linear("fc1", 8, 8), linear("fc2", 8, 4))
    new = mlp(linear("fc1", 8, 8), "{id: act, type: relu, init: preserve}", linear("fc2", 8, 4))
    plan = chainspec.diff(old, new)
    assert "Function: preserved where the inputs of act (relu) are not negative" in str(plan)
    net = old.build()
    with pytest.raises(CertificateError):  # fc1's outputs are negative somewhere: measured, and rolled back
        plan.apply(net, probe=torch.randn(32, 8))
    assert net.ids() == ["fc1", "fc2"]


@pytest.mark.parametrize("layer", ["gelu", "tanh", "sigmoid"])
def test_a_parameterless_layer_that_is_no_identity_is_refused_with_preserve(layer: str) -> None:
    old = mlp(linear("fc1", 8, 8), linear("fc2", 8, 4))
    new = mlp(linear("fc1", 8, 8), f"{{id: act, type: {layer}, init: preserve}}", linear("fc2", 8, 4))
    with pytest.raises(SpecError, match=r"init: preserve cannot make .* an identity"):
        chainspec.diff(old, new)


def test_given_the_optimizer_diff_refuses_an_override_it_cannot_take() -> None:
    old = mlp(linear("fc1", 8, 4))
    new = chainspec.loads(one_chain(linear("fc1", 8, 4), "{id: fc2, type: linear, args: {in_features: 4, "
                                    "out_features: 4}, optim: {lrr: 0.1}}"), source="net.yaml")
    net = old.build()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    chainspec.diff(old, new)  # without the optimizer, nothing says what it takes
    with pytest.raises(SpecError, match=r"net\.yaml:\d+:\d+: chains\.net\.nodes\[1\]\.optim\.lrr: SGD has no "
                                        r"hyperparameter 'lrr'; did you mean 'lr'\?"):
        chainspec.diff(old, new, optimizer=opt)
    with pytest.raises(SpecError, match="SGD has no hyperparameter 'lrr'"):  # as apply refuses it
        _plan(old, new, chain=None, stage="final").apply(net, opt)


def test_diff_leaves_the_random_stream_as_it_was() -> None:
    old = mlp(linear("fc1", 8, 8), linear("fc2", 8, 4))
    new = mlp(linear("fc1", 8, 13, "preserve"), linear("fc2", 13, 4, "preserve"))
    torch.manual_seed(5)
    chainspec.diff(old, new)  # draws replicas while it rehearses the widening
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(3), after)


# -- the property: diff refuses exactly what apply refuses ---------------------------------------------

ACTIVATIONS = ["relu", "gelu", "tanh", "leaky_relu"]
INITS = ["", "fresh", "keep", "preserve"]


@st.composite
def revisions(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """A network of linear layers and activations, and a random revision of it (spec lines)."""
    widths = [8, *draw(st.lists(st.sampled_from([4, 6, 8, 12]), min_size=2, max_size=4))]
    old: list[tuple[str, str, dict]] = []  # (id, type, args)
    for i in range(len(widths) - 1):
        old.append((f"fc{i}", "linear", {"in_features": widths[i], "out_features": widths[i + 1]}))
        if i < len(widths) - 2:
            old.append((f"act{i}", draw(st.sampled_from(ACTIVATIONS)), {}))
    new = [(node_id, kind, dict(args), "") for node_id, kind, args in old]
    growing = draw(st.booleans())  # half the time, a growth step: inserts and widenings, all init: preserve
    inits = st.just("preserve") if growing else st.sampled_from(INITS)
    kinds = ["insert", "resize"] if growing else ["insert", "resize", "remove", "move", "activation"]
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.sampled_from(kinds))
        init = draw(inits)
        at = draw(st.integers(0, len(new) - 1))
        if what == "insert":
            widths_before = [8] + [a["out_features"] for _, k, a, _ in new[:at] if k == "linear"]
            fan = widths_before[-1] if growing or draw(st.booleans()) else draw(st.sampled_from([4, 6, 8, 12]))
            kind = draw(st.sampled_from(["linear", "linear", "relu"] if growing else ["linear", *ACTIVATIONS]))
            args = {"in_features": fan, "out_features": fan} if kind == "linear" else {}
            new.insert(at, (f"new{len(new)}", kind, args, init))
        elif what == "remove" and len(new) > 2:
            new.pop(at)
        elif what == "move" and len(new) > 2:
            node = new.pop(at)
            new.insert(draw(st.integers(0, len(new))), node)
        elif what == "resize" and new[at][1] == "linear":
            node_id, kind, args, _ = new[at]
            args = dict(args, out_features=draw(st.sampled_from([4, 6, 8, 12, 16])))
            new[at] = (node_id, kind, args, init)
            for later in range(at + 1, len(new)):  # the next linear takes the new width (or not: a misfit)
                if new[later][1] == "linear" and (growing or draw(st.booleans())):
                    lid, lkind, largs, _ = new[later]
                    new[later] = (lid, lkind, dict(largs, in_features=args["out_features"]), draw(inits))
                    break
        elif what == "activation" and new[at][1] != "linear":
            node_id, _, _, _ = new[at]
            new[at] = (node_id, draw(st.sampled_from(ACTIVATIONS)), {}, init)

    def line(node_id: str, kind: str, args: dict, init: str = "") -> str:
        body = ", ".join(f"{k}: {v}" for k, v in args.items())
        return (f"{{id: {node_id}, type: {kind}" + (f", args: {{{body}}}" if args else "")
                + (f", init: {init}" if init else "") + "}")

    return [line(*node) for node in old], [line(*node) for node in new]


def _refusal(run) -> str | None:
    try:
        run()
    except SpecError as exc:
        return re.sub(r"\s+", " ", str(exc))
    return None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(revision=revisions())
def test_diff_refuses_exactly_what_apply_refuses(revision: tuple[list[str], list[str]]) -> None:
    old_lines, new_lines = revision
    old = mlp(*old_lines)
    try:
        new = mlp(*new_lines)
    except SpecError:
        return  # not a valid spec at all (say, a duplicate id): nothing to diff
    from_diff = _refusal(lambda: chainspec.diff(old, new))
    torch.manual_seed(0)
    net = old.build()
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(4, 8)).square().mean().backward()
    opt.step()
    before = copy.deepcopy(net.state_dict())
    probe = torch.randn(16, 8)
    # The plan apply gets: diff's own where diff accepts it (its claims are diff's), else one made without
    # diff's rehearsal, to see whether apply alone refuses it too.
    plan = chainspec.diff(old, new) if from_diff is None else _plan(old, new, chain=None, stage="final")
    claimed: list[bool] = []

    def apply() -> None:
        try:
            found = plan.apply(net, opt, probe=probe)
        except CertificateError:  # only a conditional claim may fail: measured, and rolled back
            assert "are not negative" in str(plan)
            claimed.append(False)
        else:
            assert found is not None
            claimed.append(found.claimed)
            if found.claimed and "are not negative" not in str(plan):
                assert found.holds, f"claimed the function and moved it by {found.output_change}"

    from_apply = _refusal(apply)
    event("refused" if from_diff is not None else "claimed the function" if any(claimed) else "applied")
    assert (from_diff is None) == (from_apply is None), (new_lines, from_diff, from_apply)
    if from_diff is not None:
        assert from_diff == from_apply  # the same located message
        assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
