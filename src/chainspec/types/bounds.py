"""Numeric bounds on a node type's arguments, as ``Annotated`` metadata that costs no import.

pydantic reads them when it builds an arguments model (as it reads ``Field(ge=1)``),
``chainspec types`` shows them, and the built-in types use them instead of
``pydantic.Field`` so that registering the built-ins imports nothing of pydantic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Bounds:
    """Bounds on a number: ``ge``/``gt`` below, ``le``/``lt`` above, and ``finite`` to refuse inf and nan.

    Example:
        >>> from typing import Annotated
        >>> from pydantic import TypeAdapter
        >>> size = TypeAdapter(Annotated[int, Bounds(ge=1, le=8)])
        >>> size.validate_python(3)
        3
        >>> size.validate_python(9)
        Traceback (most recent call last):
        ...
        pydantic_core._pydantic_core.ValidationError: 1 validation error for constrained-int
          Input should be less than or equal to 8 ...
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    finite: bool = False

    def __get_pydantic_core_schema__(self, source: Any, handler: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
        """The number's schema with these bounds: what ``Field(ge=..., le=..., allow_inf_nan=False)`` gives."""
        schema = handler(source)
        for key in ("ge", "gt", "le", "lt"):
            value = getattr(self, key)
            if value is not None:
                schema[key] = value
        if self.finite:
            schema["allow_inf_nan"] = False
        return schema
