"""``Limits``: the bounds that keep reading any spec cheap, whoever wrote it.

A spec may come from someone you do not trust (a pull request, a watched
directory, the text stored in a checkpoint). Every stage of loading checks
its share of these bounds *as it goes*, so a hostile file is refused before
it costs more than a fraction of a second and a few megabytes, and the
refusal names the limit and where it was reached. No torch import.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ._errors import Problem

#: Largest size accepted for a dimension or a stage index: far beyond any real
#: model, small enough that arithmetic on it cannot overflow a tensor size.
MAX_DIM = 2**31 - 1
#: The largest magnitude a float32 tensor holds: a real-valued argument that a module mixes into
#: float32 arithmetic (a slope, a gain) beyond it passes Python and fails at the first forward.
FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class Limits:
    """Bounds on the size of a spec and on the work of expanding it.

    The defaults accept every real spec with room to spare (the full PG-GAN
    spec uses under 2% of each) and keep any file of at most ``max_bytes``
    within a second and 200 MB. Raise one for a generated spec you trust;
    ``dataclasses.replace`` (or :meth:`replace`) makes a copy with new values.

    Attributes:
        max_bytes: largest spec text, in bytes.
        max_values: most YAML values in a document, counted after following aliases.
        max_yaml_depth: deepest YAML nesting.
        max_composite_depth: deepest nesting of composite types in composite types.
        max_nodes: most modules the spec's chains may expand to, counting every part of every
            composite, summed over all chains (what building every node would create).
        max_expression_steps: most evaluation steps of ``${...}`` expressions in the whole spec.
        max_string: longest string an expression or substitution may produce, in characters.
        max_list: most items a list produced by an expression, or an argument value, may hold,
            counting the items of nested lists.
        read_timeout: seconds a spec read from a pipe (``-`` on the command line) may take.
        max_problems: most problems one load reports; past it the load stops with one more
            problem saying so (a file of thousands of mistakes is refused as fast as one of a few).

    ``max_composite_depth`` may be raised to at most :data:`COMPOSITE_DEPTH_CEILING`: expansion, the
    built module tree and what torch does recursively over it take a few Python frames per level.

    Example:
        >>> import chainspec
        >>> big = Limits().replace(max_values=200_000, max_nodes=200_000)
        >>> big.max_values
        200000
        >>> text = "chainspec: 1\\nchains: {n: {input_shape: [1], nodes: [{id: a, type: relu}]}}"
        >>> chainspec.loads(text, limits=big).chain_names
        ['n']
    """

    max_bytes: int = 256 * 1024
    max_values: int = 50_000
    max_yaml_depth: int = 64
    max_composite_depth: int = 32
    max_nodes: int = 10_000
    max_expression_steps: int = 100_000
    max_string: int = 10_000
    max_list: int = 10_000
    read_timeout: float = 5.0
    max_problems: int = 1_000

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name == "read_timeout":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                    raise ValueError(f"Limits.read_timeout must be a positive number of seconds, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{item.name} must be a positive integer, got {value!r}")
        if self.max_composite_depth > COMPOSITE_DEPTH_CEILING:
            raise ValueError(f"Limits.max_composite_depth must be at most {COMPOSITE_DEPTH_CEILING} (Python's "
                             f"recursion limit), got {self.max_composite_depth}")

    def replace(self, **changes: int | float) -> Limits:
        """A copy with some bounds changed.

        Example:
            >>> Limits().replace(max_nodes=50_000).max_nodes
            50000
        """
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


#: Highest ``max_composite_depth`` accepted: each level of composite nesting costs a few frames of
#: Python's recursion (1,000 by default) in expansion, in building the modules and inside torch.
COMPOSITE_DEPTH_CEILING = 100

#: The limits used when the caller passes none.
DEFAULT_LIMITS = Limits()


def limits_or_default(limits: Limits | None) -> Limits:
    """``limits``, or :data:`DEFAULT_LIMITS` for None; anything else is a ``TypeError``.

    Example:
        >>> limits_or_default(None) is DEFAULT_LIMITS
        True
    """
    if limits is None:
        return DEFAULT_LIMITS
    if not isinstance(limits, Limits):
        raise TypeError(f"limits must be a chainspec.Limits, got {type(limits).__name__}")
    return limits


def limit_hint(name: str) -> str:
    """The hint of a problem that reports a bound of :class:`Limits` reached: which field raises it.

    Example:
        >>> limit_hint("max_nodes")
        'raise Limits(max_nodes=...) if the spec is trusted'
    """
    return f"raise Limits({name}=...) if the spec is trusted"


def too_many_problems(limits: Limits, last: Problem) -> Problem:
    """The problem that ends a load stopped at ``limits.max_problems``, located where ``last`` (the last one kept) is.

    Example:
        >>> last = Problem("x.yaml", 9, 3, "chains.net.nodes[2]", "unknown node type 'relux'")
        >>> too_many_problems(Limits(max_problems=3), last).format()
        'x.yaml:9:3: more than 3 problems; stopped there; fix these first, or raise Limits(max_problems=...) if the ...'
    """
    return Problem(last.source, last.line, last.col, "", f"more than {limits.max_problems:,} problems; stopped there",
                   f"fix these first, or {limit_hint('max_problems')}")


def is_too_many_problems(problem: Problem) -> bool:
    """Whether ``problem`` is the one :func:`too_many_problems` makes.

    Example:
        >>> is_too_many_problems(too_many_problems(Limits(), Problem("x.yaml", 1, 1, "", "bad")))
        True
    """
    return problem.message.startswith("more than ") and problem.message.endswith(" problems; stopped there")
