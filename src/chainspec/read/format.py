"""The spec format's constants: its version, its bounds and its words, shared by the models and the readers.

Free of pydantic, so that reading a spec can use them without building the
models of :mod:`chainspec.read.model`.

Example:
    >>> FORMAT_VERSION, "prev" in SOURCE_WORDS
    (1, True)
"""

from __future__ import annotations

#: The format version this release writes and reads natively.
FORMAT_VERSION = 1
#: Most growth stages a spec may have. Real schedules have about ten (PG-GAN:
#: nine); the bound keeps every per-stage loop (gap checks, stage-dependent
#: input shapes, schedules, shape-checking all stages) fast for any input.
MAX_STAGES = 1000

#: An identifier: a node id, a type name, a var or a parameter name.
IDENT = r"^[A-Za-z_][A-Za-z0-9_]*$"

#: Where the published JSON Schema of the format lives, relative to the repository root.
SCHEMA_PATH = "schemas/chainspec.schema.json"

#: What a node's ``from`` may name besides earlier node ids: the previous node's output, the chain's input.
SOURCE_WORDS = ("prev", "input")
#: How a node merges the outputs it takes ``from`` several nodes: summed, or concatenated on the channel
#: dimension (the first dimension of a sample).
MERGES = ("add", "concat")
#: The dtypes a chain's input may declare: floating point, or integer token ids.
INPUT_DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32")
#: ``node_id.dotted.parameter.path``: a parameter of another node of the chain, for ``tie``.
PARAM_REF = r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+$"
