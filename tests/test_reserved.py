"""``RESERVED_IDS`` against the installed torch: no node id may shadow an attribute of the modules holding it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import chainspec
from chainspec import Chain
from chainspec.read.reserved import RESERVED_IDS, id_problem
from chainspec.types.layers import Composite


def public(names) -> set[str]:
    return {name for name in names if not name.startswith("_")}


def test_reserved_ids_cover_nn_module() -> None:
    assert public(dir(nn.Module)) <= RESERVED_IDS, sorted(public(dir(nn.Module)) - RESERVED_IDS)
    assert public(vars(nn.Module())) <= RESERVED_IDS  # instance attributes such as 'training'


def test_reserved_ids_cover_chain_as_built(blog_path) -> None:
    """Class attributes of Chain, and the instance attributes a built chain carries."""
    chain = chainspec.load(blog_path).build(stage=2)
    attributes = public(dir(Chain)) | public(vars(chain))
    assert attributes <= RESERVED_IDS, sorted(attributes - RESERVED_IDS)


def test_reserved_ids_cover_composites() -> None:
    """A part id names a submodule of a composite (an nn.Sequential): it must not shadow that either."""
    block = Composite("blk", [("conv", nn.Conv2d(1, 1, 1))])
    attributes = public(dir(Composite)) | public(vars(block))
    assert attributes <= RESERVED_IDS, sorted(attributes - RESERVED_IDS)


@pytest.mark.parametrize("name", sorted(RESERVED_IDS))
def test_every_reserved_id_is_refused(name: str) -> None:
    assert id_problem(name) is not None
    with pytest.raises(chainspec.ChainspecError, match="cannot add node"):
        Chain().append(name, nn.Identity())


@pytest.mark.parametrize(("node_id", "message"), [
    ("forward", "'forward' is an attribute of nn.Module"),
    ("_private", "starts with '_'"),
    ("class", "is a Python keyword"),
    ("None", "is a Python keyword"),
    ("1st", "is not a valid identifier"),
    ("a-b", "is not a valid identifier"),
    ("", "is not a valid identifier"),
])
def test_id_problems(node_id: str, message: str) -> None:
    assert message in id_problem(node_id)


@pytest.mark.parametrize("node_id", ["b1", "conv", "block_2", "toRGB", "head0", "Forward", "stage0"])
def test_ordinary_ids_are_fine(node_id: str) -> None:
    assert id_problem(node_id) is None
    chain = Chain([(node_id, nn.Identity())])
    assert chain[node_id].id == node_id and getattr(chain, node_id) is chain[node_id].module
    x = torch.randn(2)
    assert torch.equal(chain(x), x)
