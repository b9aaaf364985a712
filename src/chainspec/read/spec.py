"""``Spec``: a loaded, validated spec, and the ``load``/``loads`` entry points.

Loading runs three passes and reports every problem of all of them that can be
found at once: safe YAML parsing with positions, the structure of the format
(the validator of its pydantic models, run from :mod:`chainspec.read.records`
without building them), then the whole-document checks of :mod:`chainspec.read.resolve`. Shape
inference (which needs torch) runs on ``Spec.check()`` and before any build.
"""

from __future__ import annotations

import difflib
import functools
import operator
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .._errors import Problem, SpecError, require_torch
from .._gc import gc_paused
from .._limits import Limits, is_too_many_problems, limits_or_default, too_many_problems
from .._quickcheck import Unsure, validate_quickly
from . import records
from .document import Document, Path, format_path, parse_yaml, read_head, too_big
from .migrate import migrate
from .project import find_project
from .records import SpecData
from .resolve import ResolvedChain, resolve

if TYPE_CHECKING:
    import torch
    from pydantic_core import SchemaValidator, ValidationError

    from ..build.chain import Chain
    from ..build.summary import ChainSummary
    from .model import SpecModel


class Spec:
    """A validated spec: its chains, its stages and the text it came from.

    Build it with :func:`load` or :func:`loads`, not directly.

    Example:
        >>> spec = loads('''
        ... chainspec: 1
        ... chains:
        ...   net:
        ...     input_shape: [4]
        ...     nodes:
        ...       - {id: fc, type: linear, args: {in_features: 4, out_features: 2}}
        ...       - {id: act, type: relu, stage: 1}
        ... ''')
        >>> spec.chain_names, spec.stages
        (['net'], 2)
        >>> [n.id for n in spec.build(stage=1)]
        ['fc', 'act']
    """

    def __init__(self, data: SpecData, doc: Document, text: str, chains: dict[str, ResolvedChain], stages: int,
                 allow_imports: tuple[str, ...], limits: Limits | None = None) -> None:
        #: The validated document as read-only records, one attribute per key (``data.chains["g"].nodes``).
        self.data = data
        self.source = doc.source
        self.text = text
        self.stages = stages
        self.allow_imports = allow_imports
        #: The bounds it was loaded under; a revision of it (a watcher, a checkpoint) is read under the same.
        self.limits = limits_or_default(limits)
        self._doc = doc
        self._chains = chains

    def __repr__(self) -> str:
        return f"Spec({self.source!r}, chains={self.chain_names}, stages={self.stages})"

    @functools.cached_property
    def model(self) -> SpecModel:
        """The validated document as the format's pydantic models, built on first use.

        :attr:`data` holds the same values as read-only records and costs nothing;
        the models add pydantic's methods (``model_dump``, ``model_json_schema``).

        Example:
            >>> spec = loads("chainspec: 1\nchains: {n: {input_shape: [2], nodes: [{id: a, type: relu}]}}")
            >>> spec.model.model_dump()["chains"]["n"]["nodes"][0]["init"]
            'fresh'
        """
        from .model import SpecModel  # pydantic's model layer: not needed to read a spec

        data, _error = migrate(self._doc.data)
        return SpecModel.model_validate(data)

    @property
    def chain_names(self) -> list[str]:
        """Names of the chains, in file order."""
        return list(self._chains)

    def resolved(self, chain: str | None = None) -> ResolvedChain:
        """The resolved form of one chain (what the compiler and the diff engine work from)."""
        return self._chains[self._chain_name(chain)]

    def stage_index(self, stage: int | str) -> int:
        """Turn ``stage`` (an int, a numeric string, or ``"final"``) into a stage index.

        Raises:
            ValueError: the stage is out of range.

        Example:
            >>> spec = loads("chainspec: 1\\nstages: 3\\nchains: {c: {input_shape: [1], nodes: [{id: a, type: relu}]}}")
            >>> spec.stage_index("final"), spec.stage_index("1")
            (2, 1)
        """
        if stage == "final":
            return self.stages - 1
        try:
            # A string is parsed; otherwise only true integers: True is not stage 1, and 1.7 is not stage 1.
            if isinstance(stage, bool):
                raise TypeError
            index = int(stage) if isinstance(stage, str) else operator.index(stage)
        except (TypeError, ValueError):
            raise ValueError(f"stage must be a number or 'final', got {stage!r}") from None
        if not 0 <= index < self.stages:
            raise ValueError(f"stage {index} is out of range; {self.source} has stages 0..{self.stages - 1}")
        return index

    def _chain_name(self, chain: str | None) -> str:
        if chain is None:
            if len(self._chains) == 1:
                return next(iter(self._chains))
            raise ValueError(f"{self.source} has several chains ({', '.join(self._chains)}); pass chain=NAME")
        if chain not in self._chains:
            close = difflib.get_close_matches(chain, list(self._chains), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; it has {', '.join(self._chains)}"
            raise ValueError(f"{self.source} has no chain {chain!r}{hint}")
        return chain

    def summary(self, chain: str | None = None, *, stage: int | str = 0,
                dtype: torch.dtype | None = None) -> ChainSummary:
        """Shape-infer one chain at ``stage`` on the meta device, allocating no weights.

        Each row also says how many bytes the node's parameters and buffers (running
        statistics and the like) take, as measured on its meta-device build.

        Raises:
            SpecError: a node cannot take the output of the node before it.

        Example:
            >>> spec = loads("chainspec: 1\\nchains: {n: {input_shape: [4], nodes: "
            ...              "[{id: bn, type: batchnorm1d, args: {num_features: 4}}]}}")
            >>> summary = spec.summary()
            >>> summary.params, summary.param_bytes, summary.buffer_bytes
            (8, 32, 40)
        """
        require_torch("Spec.summary")
        from ..build.compile import check_dtype
        from ..build.shapes import infer

        check_dtype(dtype)
        summary, problems = infer(self.resolved(chain), self.stage_index(stage), self._doc, dtype=dtype)
        if problems or summary is None:
            raise SpecError(problems)
        return summary

    def check(self, stages: Iterable[int] | None = None, *, budget: float = 1.0) -> None:
        """Shape-check every chain at every stage (or at ``stages``), reporting all failures at once.

        Each distinct (node definition, input shape) pair is built and run once on the meta
        device, and stages share every run of nodes they have in common, so 1,000 stages of
        3,000 nodes cost about what their distinct pairs cost. The work is bounded (about a
        second: see ``build.shapes.MAX_CHECK_RUNS``, ``MAX_CHECK_SECONDS`` and ``MAX_CHECK_STEPS``)
        and a spec needing more is refused with a problem saying so; ``budget`` scales the
        bounds (``math.inf``: none) for a spec you trust.

        Raises:
            SpecError: listing every chain and stage that does not fit together, or the bound
                the check would go past.
            ValueError: ``budget`` is not a positive number, or a stage is out of range.

        Example:
            >>> spec = loads('''
            ... chainspec: 1
            ... chains:
            ...   net:
            ...     input_shape: [4]
            ...     nodes:
            ...       - {id: fc, type: linear, args: {in_features: 4, out_features: 2}}
            ...       - {id: out, type: linear, args: {in_features: 3, out_features: 1}, stage: 1}
            ... ''', source="net.yaml")
            >>> spec.check([0])
            >>> spec.check()
            Traceback (most recent call last):
            ...
            chainspec._errors.SpecError: net.yaml:8:9: chains.net.nodes[1] (out): expects 3 input features, but fc ...
        """
        require_torch("Spec.check")
        from ..build.shapes import check_stages

        chosen = range(self.stages) if stages is None else [self.stage_index(stage) for stage in stages]
        problems = check_stages(self._chains.values(), chosen, self._doc, budget=budget)
        if problems:
            raise SpecError(problems)

    def build(self, chain: str | None = None, *, stage: int | str = 0, device: torch.device | str | None = None,
              dtype: torch.dtype | None = None) -> Chain:
        """Build one chain at ``stage``: shape-check on the meta device, then allocate on ``device``.

        Args:
            chain: the chain's name; may be omitted when the spec has one chain.
            stage: the growth stage, or ``"final"``.
            device: where the parameters are created (default: torch's default device).
            dtype: the parameters' floating-point dtype (default: torch's default dtype).

        Raises:
            SpecError: the chain does not shape-check at that stage, or what it would allocate
                (parameters, buffers, any tensor a module keeps) exceeds the device's free memory.
            ValueError: unknown chain, out-of-range stage, a dtype that is not floating point, or a
                device that is not a device or is not available here (``"cuda"`` without CUDA).
            TypeError: ``dtype`` is not a ``torch.dtype``.

        Example:
            >>> spec = loads("chainspec: 1\\nchains: {n: {input_shape: [4], nodes: "
            ...              "[{id: fc, type: linear, args: {in_features: 4, out_features: 2}}]}}")
            >>> spec.build().fc.weight.shape
            torch.Size([2, 4])
        """
        require_torch("Spec.build")
        from ..build.compile import build_chain, check_device, check_dtype

        check_dtype(dtype)
        device = check_device(device)
        built = build_chain(self.resolved(chain), self.stage_index(stage), self._doc, device=device, dtype=dtype)
        built.record_revision(self, built.stage)  # the revision it runs: plans, watchers and checkpoints start there
        return built

    def build_all(self, *, stage: int | str = 0, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> dict[str, Chain]:
        """Build every chain at ``stage``, by name (for example PG-GAN's generator and discriminator).

        Raises:
            SpecError: as :meth:`build`, for the first chain that does not build, or when the chains
                together need more memory than the device has free (checked before any is built).
            ValueError: out-of-range stage, or a bad ``device`` or ``dtype``, as for :meth:`build`.
            TypeError: ``dtype`` is not a ``torch.dtype``.

        Example:
            >>> spec = loads("chainspec: 1\\nchains: {g: {input_shape: [2], nodes: [{id: a, type: relu}]},"
            ...              " d: {input_shape: [2], nodes: [{id: b, type: relu}]}}")
            >>> sorted(spec.build_all())
            ['d', 'g']
        """
        require_torch("Spec.build_all")
        from ..build.compile import check_device, check_dtype
        from ..build.memory import check_fits, needed_bytes
        from ..build.shapes import infer

        check_dtype(dtype)
        device, index = check_device(device), self.stage_index(stage)
        # All chains together must fit before any is built: a generator that fits and a
        # discriminator that then does not would be built for nothing.
        summaries = {}
        for name in self._chains:
            summary, problems = infer(self._chains[name], index, self._doc, dtype=dtype)
            if problems or summary is None:
                raise SpecError(problems)
            summaries[name] = summary
        needs = {name: needed_bytes(summary, dtype) for name, summary in summaries.items()}
        for name, summary in summaries.items():
            check_fits(summary, self._chains[name], self._doc, device=device, dtype=dtype,
                       others=sum(needs.values()) - needs[name])
        return {name: self.build(name, stage=index, device=device, dtype=dtype) for name in self._chains}

    def problem(self, path: Path, message: str, hint: str | None = None) -> Problem:
        """A :class:`Problem` located at a key path of this spec's file."""
        return self._doc.problem(path, message, hint)


def load(path: str | os.PathLike[str], *, allow_imports: Iterable[str] = (), limits: Limits | None = None,
         project: bool = True) -> Spec:
    """Read and validate a spec file, with the node types its project declares.

    The project is the ``[tool.chainspec]`` table of the nearest ``pyproject.toml`` above the file
    (not past its git repository's root; see :mod:`chainspec.read.project`): its ``imports`` are
    imported first (the modules that call ``register_type``), its ``allow-imports`` join
    ``allow_imports``, and the project root (and its ``pythonpath``) is importable while they are
    imported and the spec's import paths resolved. The spec itself has no say in any of it.
    :func:`loads` reads text and looks for no project.

    Args:
        path: the YAML file.
        allow_imports: module prefixes whose ``module:attr`` paths node types may name.
            Empty by default: a spec alone can never import code.
        limits: the bounds on size and expansion work (default: :class:`Limits`'s defaults).
        project: False ignores the file's project (for a spec from a checkout you do not trust).

    Raises:
        SpecError: listing every problem, each as ``file:line:col: path: message``; a project that
            cannot be read or whose modules do not import is reported in its ``pyproject.toml``.

    Example:
        >>> import os
        >>> os.makedirs("proj/specs", exist_ok=True)
        >>> _ = open("proj/pyproject.toml", "w").write('[tool.chainspec]\\nimports = ["proj_layers"]\\n')
        >>> _ = open("proj/proj_layers.py", "w").write(
        ...     "import chainspec\\n"
        ...     "@chainspec.register_type('proj_gate', replace=True)\\n"
        ...     "def gate(features: int):\\n"
        ...     "    from torch import nn\\n"
        ...     "    return nn.Linear(features, features)\\n")
        >>> _ = open("proj/specs/net.yaml", "w").write(
        ...     "chainspec: 1\\nchains: {net: {input_shape: [4], nodes: "
        ...     "[{id: g, type: proj_gate, args: {features: 4}}]}}")
        >>> load("proj/specs/net.yaml").build().g
        Linear(in_features=4, out_features=4, bias=True)
        >>> from chainspec.types.registry import unregister_type
        >>> unregister_type("proj_gate")  # registered types are process-wide; without it and its project:
        >>> load("proj/specs/net.yaml", project=False)
        Traceback (most recent call last):
        ...
        chainspec._errors.SpecError: ...unknown node type 'proj_gate'...
    """
    limits = limits_or_default(limits)
    try:
        # Read one byte past the limit, never the whole file: a 50 GB file is refused as quickly
        # as a 300 kB one, a device is never opened, and a pipe is read within limits.read_timeout.
        raw, size = read_head(path, limits.max_bytes, limits.read_timeout)
    except OSError as exc:
        problem = Problem(os.fspath(path), None, None, "", f"cannot read spec: {exc.strerror or exc}")
        raise SpecError([problem]) from None
    if len(raw) > limits.max_bytes:
        raise SpecError([too_big(os.fspath(path), size, limits.max_bytes)])
    found = find_project(path) if project else None
    if found is None:
        return loads(raw, source=os.fspath(path), allow_imports=allow_imports, limits=limits)
    found.import_modules()
    with found.on_path():  # the project's own modules, for the import paths it allows
        return loads(raw, source=os.fspath(path), allow_imports=(*allow_imports, *found.allow_imports),
                     limits=limits)


@gc_paused()
def loads(text: str | bytes | bytearray | memoryview, *, source: str = "<string>", allow_imports: Iterable[str] = (),
          limits: Limits | None = None) -> Spec:
    """Validate spec text; ``source`` names it in error messages and ``limits`` bounds the work.

    Raises:
        SpecError: listing every problem, each as ``source:line:col: path: message``.
        TypeError: ``text`` is not text or bytes.

    Example:
        >>> loads("chainspec: 1\\nchains: {}", source="x.yaml")
        Traceback (most recent call last):
        ...
        chainspec._errors.SpecError: x.yaml:2:1: chains: must have at least 1 chain
    """
    limits = limits_or_default(limits)
    if isinstance(text, (bytearray, memoryview)):
        text = bytes(text)
    if not isinstance(text, (str, bytes)):
        raise TypeError(f"spec text must be str or bytes, got {type(text).__name__}")
    data, doc, problems = validate_structure(text, source, limits)
    if data is None:
        # Report the whole-document problems too, where the structure allows it.
        lenient = _without_bad_keys(doc, problems)
        if lenient is not None:
            # Not again for values the YAML layer refused: they read as None, and "got None" is noise.
            known, refused = set(problems), _Refused(doc)
            problems += [p for p in resolve(lenient, doc, allow_imports, limits)[2]
                         if p not in known and not refused.covers(p)]
        raise SpecError(_capped(_in_file_order(problems), limits))
    chains, stages, problems = resolve(data, doc, allow_imports, limits)
    if problems:
        raise SpecError(_capped(_in_file_order(problems), limits))
    plain = text.decode("utf-8") if isinstance(text, bytes) else text
    return Spec(data, doc, plain, chains, stages, tuple(allow_imports), limits)


class _Refused:
    """The values the YAML layer refused, to tell whether a later problem is about one of them (a repeat).

    A problem is about a refused value when its path is that value's, lies under it or around it.
    Linear in the number of refused values and problems: every refused path and each of its
    prefixes go into sets once, and each problem's path is cut at its own ``.`` and ``[``.
    """

    def __init__(self, doc: Document) -> None:
        self.paths = {format_path(path) for path in doc.rejected}
        self.around = {format_path(path[:k]) for path in doc.rejected for k in range(1, len(path))}

    def covers(self, problem: Problem) -> bool:
        where = problem.path.split(" (", 1)[0]
        if where in self.paths or where in self.around:
            return True
        return any(where[:i] in self.paths for i, char in enumerate(where) if char in ".[")


@functools.cache
def structure_validator() -> SchemaValidator:
    """The validator of the format's structure, filling in :mod:`.records`.

    It is the one pydantic makes of :class:`~chainspec.read.model.SpecModel`, as
    :mod:`.codegen` wrote it into ``records.SPEC_SCHEMA``. Should the installed
    pydantic-core refuse that schema, it is made from the models now instead (the
    same checks, a slower start).

    Example:
        >>> doc = {"chainspec": 1, "chains": {"n": {"input_shape": [2], "nodes": [{"id": "a", "type": "relu"}]}}}
        >>> structure_validator().validate_python(doc).chains["n"].nodes[0].stage
        0
    """
    import pydantic_core  # not at import: a valid spec is read without it (see _quickcheck)

    try:
        return pydantic_core.SchemaValidator(records.SPEC_SCHEMA)
    except pydantic_core.SchemaError:
        from .codegen import spec_core_schema  # builds the models: only where the written schema is refused

        return pydantic_core.SchemaValidator(spec_core_schema())


def validate_structure(text: str | bytes, source: str,
                       limits: Limits | None = None) -> tuple[SpecData | None, Document, list[Problem]]:
    """Parse and check the structure only (YAML and the format's validator); never imports torch.

    A valid document takes :mod:`chainspec._quickcheck`'s fast path through ``records.SPEC_SCHEMA``;
    anything it cannot vouch for goes to pydantic-core, which gives the verdict and the errors.
    """
    doc = parse_yaml(text, source, limits)
    if doc.problems:
        return None, doc, doc.problems
    if not isinstance(doc.data, dict):
        return None, doc, [doc.problem((), f"a spec is a mapping, got {type(doc.data).__name__}",
                                       "start with 'chainspec: 1'")]
    data, error = migrate(doc.data)
    if error:
        return None, doc, [doc.problem(("chainspec",), error)]
    try:
        return validate_quickly(records.SPEC_SCHEMA, data), doc, []
    except Unsure:
        pass
    from pydantic_core import ValidationError

    try:
        return structure_validator().validate_python(data), doc, []
    except ValidationError as exc:
        return None, doc, pydantic_problems(exc, doc, data)


#: Keys that cannot be dropped to get past a structural error: without them
#: nothing sensible is left to check.
_ESSENTIAL = {"chainspec", "chains", "id", "type", "input_shape", "nodes"}


def _without_bad_keys(doc: Document, problems: list[Problem]) -> SpecData | None:
    """The model of the document with each offending optional key dropped, or None if that is not enough."""
    import copy

    from pydantic_core import ValidationError

    if not isinstance(doc.data, dict):
        return None
    data = copy.deepcopy(doc.data)
    for _ in range(3):
        try:
            return structure_validator().validate_python(data)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                path, _rest = _data_path(err["loc"], data)
                if not path or not isinstance(path[-1], str) or path[-1] in _ESSENTIAL:
                    return None
                parent: Any = data
                for part in path[:-1]:
                    parent = parent[part]
                if isinstance(parent, dict):
                    parent.pop(path[-1], None)
    return None


def pydantic_problems(exc: ValidationError, doc: Document, data: Any) -> list[Problem]:
    """Turn pydantic's errors into located, deduplicated problems with hints."""
    problems: list[Problem] = []
    seen: set[tuple[Path, str]] = set()
    for err in exc.errors(include_url=False):
        path, rest = _data_path(err["loc"], data)
        kind = err["type"]
        hint = None
        if kind == "extra_forbidden":
            key = path[-1]
            fields = _fields_at(path[:-1], data)
            close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.5)
            message = f"unknown key {key!r}"
            hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(fields)}" if fields else None
        elif kind == "missing":
            message = f"missing required key {err['loc'][-1]!r}"
        elif kind == "literal_error" and path == ("chainspec",):
            message = f"unsupported format version {err['input']!r}"
            hint = "this release reads 'chainspec: 1'"
        elif kind == "too_short" and path and path[-1] == "chains":
            message = "must have at least 1 chain"
        elif kind == "too_short" and path and path[-1] == "nodes":
            message = "must have at least 1 node"
            hint = "a composite type is made of at least one part" if path[0] == "types" else None
        elif kind == "string_pattern_mismatch":
            message = f"{err['input']!r} is not a valid identifier"
            hint = "use letters, digits and _, not starting with a digit"
        else:
            message = err["msg"].rstrip(".")
            message = message[0].lower() + message[1:]
            if rest:
                message = f"{message}, got {err['input']!r}" if "input" in err else message
            elif "input" in err:
                message += f", got {_describe(err['input'])}"
        if (path, kind) in seen or (kind != "missing" and (path, "*") in seen):
            continue
        seen.add((path, kind))
        seen.add((path, "*"))
        problems.append(doc.problem(path, message, hint))
    return problems


def _data_path(loc: tuple[Any, ...], data: Any) -> tuple[Path, tuple[Any, ...]]:
    """Split a pydantic location into the part that exists in the data and the rest (union tags)."""
    path: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        inside_dict = isinstance(node, dict) and part in node
        inside_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if inside_dict or inside_list:
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and i == len(loc) - 1:
            path.append(part)  # an extra or missing key of this mapping
            return tuple(path), ()
        else:
            return tuple(path), tuple(loc[i:])
        path.append(part)
    return tuple(path), ()


def _capped(problems: list[Problem], limits: Limits) -> list[Problem]:
    """At most ``limits.max_problems`` problems and, last, one saying so if there were more (each layer stops
    at its own bound too)."""
    rest = [p for p in problems if not is_too_many_problems(p)]
    if len(rest) == len(problems) and len(rest) <= limits.max_problems:
        return problems
    kept = rest[:limits.max_problems]
    return [*kept, too_many_problems(limits, kept[-1])]


def _in_file_order(problems: list[Problem]) -> list[Problem]:
    """Problems by line and column, as a compiler lists them; those without a position first."""
    return sorted(problems, key=lambda p: (p.line is not None, p.line or 0, p.col or 0))


def _describe(value: Any) -> str:
    """A short description of a wrong value: itself if scalar, else its kind ('a list', 'a mapping')."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _fields_at(path: Path, data: Any) -> list[str]:
    """The keys allowed in the mapping at ``path``, as a spec writes them, for 'did you mean' hints."""
    if path == ():
        return list(records.SpecData.KEYS)
    if len(path) == 2 and path[0] == "chains":
        return list(records.ChainData.KEYS)
    if len(path) == 4 and path[0] == "chains" and path[2] == "nodes":
        return list(records.NodeData.KEYS)
    if len(path) == 2 and path[0] == "types":
        return list(records.TypeData.KEYS)
    if len(path) == 4 and path[0] == "types" and path[2] == "nodes":
        return list(records.PartData.KEYS)
    if path == ("growth",):
        return list(records.GrowthData.KEYS)
    if len(path) == 3 and path[:2] == ("growth", "per_stage"):
        return list(records.StagePhasesData.KEYS)
    return []
