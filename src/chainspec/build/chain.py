"""``Chain``: an ``nn.Module`` that is a doubly linked list of nodes.

Unlike ``nn.Sequential``, a chain's members are addressed by stable ids rather
than positions, and it can be spliced in O(1) anywhere (``insert_after``,
``remove``, ``replace``, ...) while its state_dict keys stay the same. The
``prev``/``next`` links live on plain :class:`Node` objects, never as module
attributes, so the module tree stays one level deep and acyclic: ``state_dict``,
``repr``, ``.to()``, ``.train()``, ``deepcopy`` and pickling never recurse
along the chain, and ``forward`` is a loop, not a recursion.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys

from .._errors import ChainspecError
from ..read.reserved import id_problem

if TYPE_CHECKING:
    from ..read.spec import Spec


class NodeNotFoundError(ChainspecError, KeyError):
    """No node with that id (or that node object) is in the chain.

    Example:
        >>> issubclass(NodeNotFoundError, KeyError)
        True
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Node:
    """One link of a :class:`Chain`: an id, a module, and the neighbours.

    Nodes are created by the chain; treat ``prev`` and ``next`` as read-only,
    and swap a node's module with ``chain.replace`` (or ``chain.<id> = module``).

    Example:
        >>> chain = Chain([("a", nn.ReLU()), ("b", nn.Tanh())])
        >>> chain.head.id, chain.head.next.id, chain.tail.prev.id
        ('a', 'b', 'a')
    """

    __slots__ = ("_module", "_owner", "_table", "id", "next", "prev", "type")

    def __init__(self, node_id: str, module: nn.Module, node_type: str | None = None) -> None:
        self.id = node_id
        self._module = module
        # The owning chain's ``_modules``: while the node is linked (``_owner``
        # set), the module registered there is the node's module, even when a
        # tool swapped it by writing ``_modules`` directly (as quantization does).
        self._table: dict[str, nn.Module | None] | None = None
        self.type = node_type or type(module).__name__
        self.prev: Node | None = None
        self.next: Node | None = None
        self._owner: int | None = None

    @property
    def module(self) -> nn.Module:
        """The node's module (while it is linked: the one registered on its chain under its id)."""
        table = self._table
        if table is not None and self._owner is not None:
            module = table.get(self.id)
            if module is not None:
                return module
        return self._module

    @module.setter
    def module(self, module: nn.Module) -> None:
        self._module = module
        if self._table is not None and self._owner is not None:
            self._table[self.id] = module

    def __repr__(self) -> str:
        return f"Node({self.id!r}, type={self.type!r})"


NodeRef = str | Node


class Chain(nn.Module):
    """A doubly linked chain of modules, applied head to tail.

    Args:
        nodes: ``(id, module)`` pairs, head first, or a mapping of id to module.
        name: the chain's name (the spec's chain name when built from a spec).

    A chain records the revision it runs (:attr:`revision`: the spec, the stage and where its
    tensors live). ``Spec.build`` sets it; a plan's ``apply``, a checkpoint load and a
    grower's step update it; a chain assembled by hand has none (``chain.spec`` is None).

    Attributes:
        name: the chain's name.
        revision: the :class:`Revision` the chain runs, or None for a chain assembled by hand.

    Example:
        >>> import torch
        >>> chain = Chain([("fc", nn.Linear(4, 8)), ("act", nn.ReLU())])
        >>> node = chain.insert_after("fc", "drop", nn.Dropout(0.1))
        >>> [n.id for n in chain], chain(torch.zeros(2, 4)).shape
        (['fc', 'drop', 'act'], torch.Size([2, 8]))
        >>> sorted(chain.state_dict())
        ['fc.bias', 'fc.weight']
    """

    revision: Revision | None

    def __init__(self, nodes: Iterable[tuple[str, nn.Module]] | dict[str, nn.Module] = (), *,
                 name: str = "chain") -> None:
        super().__init__()
        self.name = name
        self.revision = None
        #: Nodes that take their input from elsewhere than the node before: id -> (sources, merge).
        self._routes: dict[str, tuple[tuple[str, ...], str | None]] = {}
        self._schedule: tuple[tuple[str, ...], Any] | None = None
        self._reset_links()
        items = nodes.items() if isinstance(nodes, dict) else nodes
        for node_id, module in items:
            self.append(node_id, module)

    def _reset_links(self) -> None:
        self._links: dict[str, Node] = {}
        self._head: Node | None = None
        self._tail: Node | None = None
        # The nodes head to tail as a flat tuple, rebuilt lazily after a splice
        # (None = stale), so splicing stays O(1). ``forward`` runs over this
        # tuple rather than following ``next`` links: torch.compile would
        # otherwise guard on ``_head.next.next...``, a chain of attribute
        # accesses as deep as the chain itself, and hit the recursion limit.
        self._order: tuple[str, ...] | None = None

    def _flat(self) -> tuple[str, ...]:
        """The node ids, head to tail, from the cache or rebuilt."""
        order = self._order
        if order is None:
            # While torch.compile traces, walk the links outside the trace so
            # that no guard follows them; the trace resumes on the flat tuple.
            order = _walk_untraced(self) if torch.compiler.is_compiling() else _walk(self)
        return order

    # -- sequence protocol -------------------------------------------------------
    @property
    def head(self) -> Node | None:
        """The first node, or None for an empty chain."""
        return self._head

    @property
    def tail(self) -> Node | None:
        """The last node, or None for an empty chain."""
        return self._tail

    def __len__(self) -> int:
        return len(self._links)

    def __iter__(self) -> Iterator[Node]:
        node = self._head
        while node is not None:
            yield node
            node = node.next

    def __reversed__(self) -> Iterator[Node]:
        node = self._tail
        while node is not None:
            yield node
            node = node.prev

    def __contains__(self, ref: object) -> bool:
        if isinstance(ref, Node):
            return ref._owner == id(self) and self._links.get(ref.id) is ref
        return isinstance(ref, str) and ref in self._links

    def __getitem__(self, node_id: str) -> Node:
        return self._node(node_id)

    def ids(self) -> list[str]:
        """The node ids, head to tail.

        Example:
            >>> Chain([("a", nn.ReLU()), ("b", nn.ReLU())]).ids()
            ['a', 'b']
        """
        return [n.id for n in self]

    # -- running -----------------------------------------------------------------
    def forward(self, x: Any) -> Any:
        """Apply every node's module in turn, head to tail (a loop: no recursion depth limit)."""
        # Read the cache here, not only inside _flat: torch.compile then guards
        # on "order is None" in this frame, so the graph break that a stale
        # order needs (see _flat) is compiled into a variant of its own, and
        # once the order is fresh again this frame recompiles into one graph
        # with no break, as fast as a compiled nn.Sequential.
        order = self._order
        if order is None:
            order = self._flat()
        modules = self._modules  # by id, not Node.module: a tool may have swapped a module in _modules
        if self._routes:
            return self._run_routed(x, self._routed(order), None)[0]
        for node_id in order:
            x = modules[node_id](x)
        return x

    # -- routes ----------------------------------------------------------------------------------------------
    @property
    def routes(self) -> dict[str, tuple[tuple[str, ...], str | None]]:
        """The nodes that take their input from elsewhere than the node before: ``id -> (sources, merge)``.

        Example:
            >>> chain = Chain([("a", nn.Linear(2, 2)), ("b", nn.ReLU()), ("c", nn.Identity())])
            >>> chain.route("c", ["a", "prev"], "add")
            >>> chain.routes
            {'c': (('a', 'prev'), 'add')}
        """
        return dict(self._routes)

    def route(self, node_id: str, sources: Iterable[str], merge: str | None = None) -> None:
        """Make node ``node_id`` take the outputs of ``sources`` (ids of earlier nodes, ``"prev"`` for the node
        before, ``"input"`` for the chain's input), merged by ``merge`` (``"add"`` or ``"concat"`` on dim 1)
        when there are several. No sources: the node takes the previous node's output again.

        The chain keeps a node's output only until its last consumer has run, as a hand-written forward
        would. A source must come before the node whenever the chain runs (checked at the next forward).

        Raises:
            NodeNotFoundError: ``node_id`` or a source is not in the chain.
            ValueError: several sources without a merge, an unknown merge, or a node named as its own source.

        Example:
            >>> import torch
            >>> chain = Chain([("a", nn.Identity()), ("b", nn.Identity()), ("c", nn.Identity())])
            >>> chain.route("c", ["input", "b"], "concat")
            >>> chain(torch.ones(1, 2)).shape
            torch.Size([1, 4])
        """
        self._node(node_id)
        sources = tuple(sources)
        for source in sources:
            if source == node_id:
                raise ValueError(f"node {node_id!r} cannot take its own output")
            if source not in ("prev", "input"):
                self._node(source)
        if len(sources) > 1 and merge not in ("add", "concat"):
            raise ValueError(f"node {node_id!r} takes {len(sources)} inputs; merge must be 'add' or 'concat', "
                             f"got {merge!r}")
        if not sources or sources == ("prev",):
            self._routes.pop(node_id, None)
        else:
            self._routes[node_id] = (sources, merge if len(sources) > 1 else None)
        self._schedule = None

    def _routed(self, order: tuple[str, ...]) -> Any:
        """The run schedule of a routed chain in ``order``, cached until the order or the routes change."""
        cached = self._schedule
        if cached is not None and cached[0] is order:
            return cached[1]
        position = {node_id: i for i, node_id in enumerate(order)}
        last_use: dict[str, int] = {}
        routes = {node_id: route for node_id, route in self._routes.items() if node_id in position}
        for node_id, (sources, _) in routes.items():
            for source in sources:
                if source == "prev":
                    continue
                if source != "input" and position.get(source, len(order)) >= position[node_id]:
                    where = "is not in the chain" if source not in position else "comes after it"
                    raise RuntimeError(f"node {node_id!r} takes the output of {source!r}, which {where}")
                last_use[source] = max(last_use.get(source, -1), position[node_id])
        release: dict[int, list[str]] = {}
        for source, i in last_use.items():
            release.setdefault(i, []).append(source)
        steps = tuple((node_id, *routes.get(node_id, ((), None)), node_id in last_use, tuple(release.get(i, ())))
                      for i, node_id in enumerate(order))
        schedule = ("input" in last_use, steps)
        self._schedule = (order, schedule)
        return schedule

    def _run_routed(self, x: Any, schedule: Any, wanted: set[str] | None) -> tuple[Any, dict[str, Any]]:
        """Run a routed chain: each node's inputs gathered and merged, each output dropped after its last use."""
        keeps_input, steps = schedule
        modules = self._modules
        kept: dict[str, Any] = {"input": x} if keeps_input else {}
        features: dict[str, Any] = {}
        for node_id, sources, merge, keep, release in steps:
            if sources:
                inputs = [x if source == "prev" else kept[source] for source in sources]
                if len(inputs) == 1:
                    x = inputs[0]
                elif merge == "add":
                    x = sum(inputs[1:], start=inputs[0])  # no loop variable left holding a source
                else:
                    x = torch.cat(inputs, dim=1)
                del inputs
            for source in release:
                del kept[source]
            x = modules[node_id](x)
            if keep:
                kept[node_id] = x
            if wanted is not None and node_id in wanted:
                features[node_id] = x
        return x, features

    def capture(self, x: Any, ids: Iterable[str] | str) -> tuple[Any, dict[str, Any]]:
        """Run forward and also return the outputs of the nodes named in ``ids`` (a list of ids, or one id).

        The nodes run as in ``forward`` (their own hooks fire), but this is not ``chain(x)``:
        hooks registered on the chain itself do not run.

        Raises:
            NodeNotFoundError: an id is not in the chain (before anything runs).

        Example:
            >>> import torch
            >>> chain = Chain([("fc", nn.Linear(4, 8)), ("act", nn.ReLU())])
            >>> out, feats = chain.capture(torch.zeros(1, 4), ["fc"])
            >>> feats["fc"].shape
            torch.Size([1, 8])
        """
        wanted = {ids} if isinstance(ids, str) else set(ids)  # "b1" is one id, not the ids 'b' and '1'
        for node_id in wanted:
            self._node(node_id)
        features: dict[str, Any] = {}
        modules = self._modules
        if self._routes:
            return self._run_routed(x, self._routed(self._flat()), wanted)
        for node_id in self._flat():
            x = modules[node_id](x)
            if node_id in wanted:
                features[node_id] = x
        return x, features

    # -- splicing (each O(1)) ----------------------------------------------------
    def append(self, node_id: str, module: nn.Module, *, node_type: str | None = None) -> Node:
        """Add a node at the tail and return it."""
        return self._link(self._new(node_id, module, node_type), self._tail, None)

    def prepend(self, node_id: str, module: nn.Module, *, node_type: str | None = None) -> Node:
        """Add a node at the head and return it."""
        return self._link(self._new(node_id, module, node_type), None, self._head)

    def insert_after(self, ref: NodeRef, node_id: str, module: nn.Module, *, node_type: str | None = None) -> Node:
        """Insert a new node right after ``ref`` (an id or a node) and return it.

        Raises:
            NodeNotFoundError: ``ref`` is not in the chain.
            ChainspecError: ``node_id`` is taken or not a valid id.
        """
        anchor = self._node(ref)
        return self._link(self._new(node_id, module, node_type), anchor, anchor.next)

    def insert_before(self, ref: NodeRef, node_id: str, module: nn.Module, *, node_type: str | None = None) -> Node:
        """Insert a new node right before ``ref`` (an id or a node) and return it."""
        anchor = self._node(ref)
        return self._link(self._new(node_id, module, node_type), anchor.prev, anchor)

    def remove(self, ref: NodeRef) -> Node:
        """Unlink a node and drop its module from the chain; return the detached node."""
        node = self._node(ref)
        self._unlink(node)
        del self._links[node.id]
        if self._routes.pop(node.id, None) is not None:
            self._schedule = None
        node._module = self._modules.pop(node.id) or node._module
        node._owner = None
        return node

    def replace(self, ref: NodeRef, module: nn.Module, *, node_type: str | None = None) -> nn.Module:
        """Put ``module`` in place of a node's module, keeping the id and position; return the old module."""
        node = self._node(ref)
        if not isinstance(module, nn.Module):
            raise TypeError(f"node {node.id!r}: expected an nn.Module, got {type(module).__name__}")
        old = node.module
        node.module = module  # also registers it on the chain
        if node_type is not None:
            node.type = node_type
        return old

    def move_after(self, ref: NodeRef, anchor: NodeRef | None) -> Node:
        """Move a node (module and all) right after ``anchor``, or to the head if ``anchor`` is None."""
        node = self._node(ref)
        target = None if anchor is None else self._node(anchor)
        if target is node:
            raise ChainspecError(f"cannot move node {node.id!r} after itself")
        self._unlink(node)
        return self._link(node, target, target.next if target is not None else self._head)

    def move_before(self, ref: NodeRef, anchor: NodeRef | None) -> Node:
        """Move a node right before ``anchor``, or to the tail if ``anchor`` is None."""
        node = self._node(ref)
        target = None if anchor is None else self._node(anchor)
        if target is node:
            raise ChainspecError(f"cannot move node {node.id!r} before itself")
        self._unlink(node)
        return self._link(node, target.prev if target is not None else self._tail, target)

    # -- internals -----------------------------------------------------------------
    def _stale(self) -> None:
        # Test first: nn.Module.__setattr__ is slow enough to matter when
        # appending 100,000 nodes, and the cache is usually already stale then.
        if self._order is not None:
            self._order = None

    def _node(self, ref: NodeRef) -> Node:
        if isinstance(ref, Node):
            if ref in self:
                return ref
            raise NodeNotFoundError(f"node {ref.id!r} is not in chain {self.name!r}")
        if isinstance(ref, (int, slice)) and not isinstance(ref, bool):
            hint = ""
            if isinstance(ref, int) and -len(self) <= ref < len(self):
                hint = f": chain.ids()[{ref}] is {self.ids()[ref]!r}"
            raise NodeNotFoundError(f"chain {self.name!r} is indexed by node id, not by position{hint}")
        node = self._links.get(ref)
        if node is None:
            import difflib

            close = difflib.get_close_matches(str(ref), list(self._links), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise NodeNotFoundError(f"no node {ref!r} in chain {self.name!r}{hint}")
        return node

    def _new(self, node_id: str, module: nn.Module, node_type: str | None) -> Node:
        why = id_problem(node_id) if isinstance(node_id, str) else f"{node_id!r} is not a string"
        if why:
            raise ChainspecError(f"cannot add node: {why}")
        if node_id in self._links:
            raise ChainspecError(f"cannot add node: chain {self.name!r} already has a node {node_id!r}")
        if not isinstance(module, nn.Module):
            raise TypeError(f"node {node_id!r}: expected an nn.Module, got {type(module).__name__}")
        return Node(node_id, module, node_type)

    def _link(self, node: Node, prev: Node | None, nxt: Node | None) -> Node:
        self._stale()
        node.prev, node.next = prev, nxt
        if prev is None:
            self._head = node
        else:
            prev.next = node
        if nxt is None:
            self._tail = node
        else:
            nxt.prev = node
        if node.id not in self._links:
            self._links[node.id] = node
            self._modules[node.id] = node.module
            node._table = self._modules
        node._owner = id(self)
        return node

    def _unlink(self, node: Node) -> None:
        self._stale()
        if node.prev is None:
            self._head = node.next
        else:
            node.prev.next = node.next
        if node.next is None:
            self._tail = node.prev
        else:
            node.next.prev = node.prev
        node.prev = node.next = None

    # -- the revision it runs ---------------------------------------------------------
    @property
    def spec(self) -> Spec | None:
        """The spec revision the chain runs (``revision.spec``), or None."""
        return self.revision.spec if self.revision is not None else None

    @spec.setter
    def spec(self, spec: Spec | None) -> None:
        self.record_revision(spec, self.stage)

    @property
    def stage(self) -> int | None:
        """The stage of :attr:`spec` the chain runs (``revision.stage``), or None."""
        return self.revision.stage if self.revision is not None else None

    @stage.setter
    def stage(self, stage: int | None) -> None:
        self.record_revision(self.spec, stage)

    @property
    def placement(self) -> tuple[torch.device, torch.dtype] | None:
        """Where new nodes go once no tensor is left to tell: the device and dtype it was built with."""
        return self.revision.placement if self.revision is not None else None

    @placement.setter
    def placement(self, placement: tuple[torch.device, torch.dtype] | None) -> None:
        self.revision = Revision(self.spec, self.stage, placement)

    def record_revision(self, spec: Spec | None, stage: int | None,
                        placement: tuple[torch.device, torch.dtype] | None = None) -> None:
        """Record the revision the chain now runs (the placement, if not given, is kept).

        Example:
            >>> chain = Chain([("act", nn.ReLU())], name="net")
            >>> chain.record_revision(None, 2)
            >>> chain.stage
            2
        """
        if placement is None and self.revision is not None:
            placement = self.revision.placement
        self.revision = Revision(spec, stage, placement)

    def snapshot(self) -> ChainSnapshot:
        """The chain's links, modules and revision as they are now; ``restore()`` puts them back exactly.

        The same :class:`Node` and module objects come back, so references held elsewhere stay
        valid. A transaction (``Plan.apply``, a grower's step, a distributed apply) takes one
        before changing the chain.

        Example:
            >>> chain = Chain([("a", nn.ReLU())])
            >>> saved = chain.snapshot()
            >>> _ = chain.append("b", nn.Tanh())
            >>> saved.restore()
            >>> chain.ids()
            ['a']
        """
        return ChainSnapshot(self)

    def order_modules(self) -> None:
        """Register the modules in chain order, as a fresh build does, after nodes were inserted or moved.

        ``parameters()``, ``state_dict()`` and an optimizer made from them then match those
        of the same chain built from scratch.

        Example:
            >>> chain = Chain([("a", nn.Linear(1, 1)), ("b", nn.Linear(1, 1))])
            >>> _ = chain.move_after("a", "b")
            >>> chain.order_modules()
            >>> list(chain._modules)
            ['b', 'a']
        """
        ordered = [(node.id, node.module) for node in self]
        self._modules.clear()
        self._modules.update(ordered)

    # -- module plumbing -------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        # ``chain.b2 = module`` is a replace: the node keeps its id and place and
        # forward runs the new module. Tools that swap children this way (FSDP's
        # auto-wrap, quantization's prepare/convert) then work on chains too.
        links = self.__dict__.get("_links")
        if links is not None and isinstance(value, nn.Module) and not name.startswith("_"):
            if name in links:
                self.replace(name, value)
                return
            raise ChainspecError(f"chain {self.name!r} has no node {name!r}: a module set as an attribute would "
                                 "never run; add it with append, prepend, insert_after or insert_before")
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if name in self.__dict__.get("_links", ()):
            self.remove(name)  # ``del chain.b2`` unlinks the node as well
            return
        super().__delattr__(name)

    def __getstate__(self) -> dict[str, Any]:
        # Pickle (and deepcopy) the order as a flat list, not the links: following
        # ``next`` pointers recursively would hit the recursion limit on long chains.
        state = self.__dict__.copy()
        state["_chain_order"] = [(n.id, n.type) for n in self]
        for key in ("_links", "_head", "_tail", "_order", "_schedule"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        order = state.pop("_chain_order")
        state.setdefault("_routes", {})  # a chain pickled before chains had routes
        state["_schedule"] = None  # the run schedule is rebuilt from the routes on the next forward
        super().__setstate__(state)
        self._reset_links()
        for node_id, node_type in order:
            node = Node(node_id, self._modules[node_id], node_type)  # type: ignore[arg-type]
            node._table = self._modules
            self._links[node_id] = node
            prev = self._tail
            node.prev = prev
            if prev is None:
                self._head = node
            else:
                prev.next = node
            self._tail = node
            node._owner = id(self)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False) -> _IncompatibleKeys:
        """``nn.Module.load_state_dict``, in time linear in the number of keys.

        torch's version hands each child the keys under its prefix by scanning
        every key once per child: quadratic, about half a minute for 10,000
        nodes. This one splits the keys among the nodes in a single pass and
        otherwise does exactly what torch does (the same pre and post hooks,
        metadata, ``strict``, ``assign`` and error messages).

        Example:
            >>> src = Chain([("fc", nn.Linear(2, 2))])
            >>> Chain([("fc", nn.Linear(2, 2))]).load_state_dict(src.state_dict())
            <All keys matched successfully>
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"Expected state_dict to be dict-like, got {type(state_dict)}.")
        missing_keys: list[str] = []
        unexpected_keys: list[str] = []
        error_msgs: list[str] = []
        metadata = getattr(state_dict, "_metadata", None)
        state_dict = OrderedDict(state_dict)  # _load_from_state_dict may modify it
        if metadata is not None:
            state_dict._metadata = metadata  # type: ignore[attr-defined]
        by_node = _split_by_node(state_dict)

        def load(module: nn.Module, local_state_dict: Mapping[str, Any], prefix: str = "") -> None:
            local_metadata = {} if metadata is None else metadata.get(prefix[:-1], {})
            if assign:
                local_metadata["assign_to_params_buffers"] = assign
            module._load_from_state_dict(local_state_dict, prefix, local_metadata, True, missing_keys,
                                         unexpected_keys, error_msgs)
            for name, child in module._modules.items():
                if child is not None:
                    child_prefix = prefix + name + "."
                    if module is self:  # the one level that is long: split in one pass above
                        child_state_dict = by_node.get(name, {})
                    else:
                        child_state_dict = {k: v for k, v in local_state_dict.items() if k.startswith(child_prefix)}
                    load(child, child_state_dict, child_prefix)
            incompatible_keys = _IncompatibleKeys(missing_keys, unexpected_keys)
            for hook in module._load_state_dict_post_hooks.values():
                if hook(module, incompatible_keys) is not None:
                    raise AssertionError("Hooks registered with ``register_load_state_dict_post_hook`` are not "
                                         "expected to return new values, if incompatible_keys need to be "
                                         "modified, it should be done inplace.")

        load(self, state_dict)
        if strict:
            if unexpected_keys:
                error_msgs.insert(0, f"Unexpected key(s) in state_dict: {_quoted(unexpected_keys)}. ")
            if missing_keys:
                error_msgs.insert(0, f"Missing key(s) in state_dict: {_quoted(missing_keys)}. ")
        if error_msgs:
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}:\n\t"
                               + "\n\t".join(error_msgs))
        return _IncompatibleKeys(missing_keys, unexpected_keys)

    def __repr__(self) -> str:
        lines = [f"Chain(name={self.name!r}, {len(self)} nodes"]
        for node in self:
            text = repr(node.module).replace("\n", "\n  ")
            lines.append(f"  ({node.id}): {text}")
        return "\n".join(lines) + "\n)" if len(lines) > 1 else lines[0] + ")"

    def __dir__(self) -> list[str]:
        return list(super().__dir__())


@dataclass(frozen=True)
class Revision:
    """The revision a chain runs: the spec, its stage, and the device and dtype of its tensors.

    Example:
        >>> Revision(None, 0, None).stage
        0
    """

    spec: Spec | None
    stage: int | None
    placement: tuple[torch.device, torch.dtype] | None = None


class ChainSnapshot:
    """A chain's links, modules and revision, restorable exactly (the same Node objects); see :meth:`Chain.snapshot`.

    ``restore`` sets state, never adjusts it, so running it twice (a second Ctrl-C during a
    rollback) is safe.
    """

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self.nodes: list[Node] = list(chain)
        self.parts = [(n.module, n.type) for n in self.nodes]
        self.modules = dict(chain._modules)
        self.revision = chain.revision
        self.routes = dict(chain._routes)

    def restore(self) -> None:
        """Put the chain back as it was when the snapshot was taken."""
        chain = self.chain
        chain._modules.clear()
        chain._modules.update(self.modules)
        links: dict[str, Node] = {}
        prev: Node | None = None
        for node, (module, node_type) in zip(self.nodes, self.parts, strict=True):
            node.module, node.type = module, node_type
            node.prev, node.next = prev, None
            if prev is not None:
                prev.next = node
            node._owner = id(chain)
            links[node.id] = node
            prev = node
        chain._links = links
        chain._head = self.nodes[0] if self.nodes else None
        chain._tail = prev
        chain._order = None  # forward's cached id order is rebuilt from the restored links
        chain.revision = self.revision
        chain._routes = dict(self.routes)
        chain._schedule = None


def _split_by_node(state_dict: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The entries of ``state_dict`` grouped by their first key component (the node id), in one pass."""
    by_node: dict[str, dict[str, Any]] = {}
    for key, value in state_dict.items():
        node_id, dot, _ = key.partition(".")
        if dot:
            by_node.setdefault(node_id, {})[key] = value
    return by_node


def _quoted(keys: list[str]) -> str:
    return ", ".join(f'"{k}"' for k in keys)


def _walk(chain: Chain) -> tuple[str, ...]:
    """Follow the links head to tail once and cache the ids on the chain."""
    order = tuple(node.id for node in chain)
    chain._order = order
    return order


#: ``_walk`` run eagerly even inside a torch.compile trace (torch._dynamo is
#: imported only on the first such call, keeping ``import chainspec`` light).
_walk_untraced = torch._disable_dynamo(_walk)
