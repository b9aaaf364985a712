"""Names a node id may not take: they would shadow an attribute of ``nn.Module``, ``Chain`` or a composite.

A node's module is registered on its chain under the node's id (and a part's
on its composite, an ``nn.Sequential``, under the part's id), so an id such as
``forward``, ``training`` or ``insert`` would collide with the attribute of that name.
The list is static so that validating a spec needs no torch import; a test
checks it against the installed torch.
"""

from __future__ import annotations

import keyword

RESERVED_IDS: frozenset[str] = frozenset({
    "T_destination",
    "add_module",
    "append",
    "apply",
    "bfloat16",
    "buffers",
    "call_super_init",
    "capture",
    "children",
    "clear",
    "compile",
    "cpu",
    "cuda",
    "double",
    "dump_patches",
    "eval",
    "extend",
    "extra_repr",
    "float",
    "forward",
    "get",
    "get_buffer",
    "get_extra_state",
    "get_parameter",
    "get_submodule",
    "half",
    "head",
    "ids",
    "index",
    "insert",
    "insert_after",
    "insert_before",
    "ipu",
    "load_state_dict",
    "modules",
    "move_after",
    "move_before",
    "mtia",
    "name",
    "named_buffers",
    "named_children",
    "named_modules",
    "named_parameters",
    "node",
    "nodes",
    "order_modules",
    "parameters",
    "placement",
    "pop",
    "prepend",
    "record_revision",
    "register_backward_hook",
    "register_buffer",
    "register_forward_hook",
    "register_forward_pre_hook",
    "register_full_backward_hook",
    "register_full_backward_pre_hook",
    "register_load_state_dict_post_hook",
    "register_load_state_dict_pre_hook",
    "register_module",
    "register_parameter",
    "register_state_dict_post_hook",
    "register_state_dict_pre_hook",
    "remove",
    "replace",
    "route",
    "routes",
    "requires_grad_",
    "revision",
    "set_extra_state",
    "set_submodule",
    "share_memory",
    "snapshot",
    "spec",
    "stage",
    "state_dict",
    "tail",
    "to",
    "to_empty",
    "train",
    "training",
    "type",
    "type_name",
    "xpu",
    "zero_grad",
})


def id_problem(node_id: str) -> str | None:
    """Explain why ``node_id`` cannot name a node, or return None if it can.

    Example:
        >>> id_problem("forward")
        "'forward' is an attribute of nn.Module, Chain or composite modules"
        >>> id_problem("b1") is None
        True
    """
    if not node_id.isidentifier():
        return f"{node_id!r} is not a valid identifier (letters, digits and _, not starting with a digit)"
    if keyword.iskeyword(node_id):
        return f"{node_id!r} is a Python keyword"
    if node_id.startswith("_"):
        return f"{node_id!r} starts with '_', which is reserved for nn.Module internals"
    if node_id in RESERVED_IDS:
        return f"{node_id!r} is an attribute of nn.Module, Chain or composite modules"
    return None
