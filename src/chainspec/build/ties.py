"""Tied parameters: one node's parameter made another node's, as GPT ties its output layer to the token embedding.

A tie is written on the node that borrows (``tie: {weight: tok.weight}``): after every node is
built, the borrower's parameter is replaced by the owner's own ``nn.Parameter`` object. From
then on there is one tensor: ``parameters()`` lists it once, an optimizer keeps one state for
it, and ``state_dict()`` lists it under both names (as torch does for any shared parameter),
so a checkpoint loads either way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import nn


class TieError(ValueError):
    """A tie that cannot be made; ``param`` is the borrower's parameter path (the key under ``tie``)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param, self.message = param, message


def owned_parameter(module: nn.Module, path: str, owner_id: str) -> nn.Parameter:
    """The parameter at dotted ``path`` of ``module`` (node ``owner_id``'s), or :class:`TieError`.

    Example:
        >>> owned_parameter(nn.Linear(2, 3), "weight", "fc").shape
        torch.Size([3, 2])
    """
    try:
        found = module.get_parameter(path)
    except AttributeError:
        found = None
    if not isinstance(found, nn.Parameter):
        names = [name for name, _ in module.named_parameters()]
        listed = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") if names else "none"
        raise TieError("", f"node {owner_id!r} has no parameter {path!r} (it has: {listed})")
    return found


def planned_tie(module: nn.Module, path: str, ref: str, owner: Callable[[str], nn.Module], node_id: str = "this node"
                ) -> tuple[nn.Module, str, nn.Parameter]:
    """Where tying ``module``'s parameter ``path`` to ``ref`` (``owner_id.parameter.path``) writes:
    ``(the submodule holding it, its name there, the owner's parameter)``, checked but not yet made.

    Raises:
        TieError: a path names no parameter, or the two parameters differ in shape or dtype.

    Example:
        >>> emb, head = nn.Embedding(5, 3), nn.Linear(3, 5, bias=False)
        >>> holder, name, param = planned_tie(head, "weight", "tok.weight", {"tok": emb}.__getitem__)
        >>> holder is head, name, param is emb.weight
        (True, 'weight', True)
    """
    owner_id, _, owner_path = ref.partition(".")
    try:
        param = owned_parameter(owner(owner_id), owner_path, owner_id)
    except TieError as exc:
        raise TieError(path, exc.message) from None
    mine = owned_parameter(module, path, node_id)
    if mine.shape != param.shape or mine.dtype != param.dtype:
        raise TieError(path, f"cannot tie {path!r} (shape {list(mine.shape)}, {_dtype(mine)}) to {ref!r} "
                             f"(shape {list(param.shape)}, {_dtype(param)}): a tied parameter is one tensor")
    holder_path, _, name = path.rpartition(".")
    return (module.get_submodule(holder_path) if holder_path else module), name, param


def tie(module: nn.Module, ties: Mapping[str, str], owner: Callable[[str], nn.Module],
        node_id: str = "this node") -> list[str]:
    """Make each of ``module``'s parameters named in ``ties`` the owner's parameter it names.

    ``ties`` maps the borrower's parameter path to ``owner_id.parameter.path``; ``owner(owner_id)``
    gives that node's module; ``node_id`` names the borrower in messages. Shapes and dtypes must
    match. Returns the paths tied.

    Raises:
        TieError: a path names no parameter, or the two parameters differ in shape or dtype.

    Example:
        >>> emb, head = nn.Embedding(5, 3), nn.Linear(3, 5, bias=False)
        >>> tie(head, {"weight": "tok.weight"}, {"tok": emb}.__getitem__)
        ['weight']
        >>> head.weight is emb.weight
        True
    """
    done = []
    for path, ref in ties.items():
        holder, name, param = planned_tie(module, path, ref, owner, node_id)
        setattr(holder, name, param)
        done.append(path)
    return done


def _dtype(tensor: nn.Parameter) -> str:
    return str(tensor.dtype).removeprefix("torch.")
