"""The pydantic models of spec format version 1: the single source of truth for its structure.

The JSON Schema in ``schemas/`` and the reference in ``docs/spec-format.md``
are generated from, or checked against, these models. They describe structure
only; what needs the registry (type names, argument names and types) or the
whole document (ids, stages, cycles) is checked in :mod:`chainspec.read.resolve`.

Reading a spec does not build these models: it validates with the validator
pydantic makes of them, written out as plain data by :mod:`chainspec.read.codegen`
into :mod:`chainspec.read.records`, whose read-only records have the same fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .._limits import FLOAT32_MAX, MAX_DIM  # noqa: F401 - the format's bounds, here with the format
from .format import (  # noqa: F401 - the format's constants, here with the format
    FORMAT_VERSION,
    IDENT,
    INPUT_DTYPES,
    MAX_STAGES,
    MERGES,
    PARAM_REF,
    SOURCE_WORDS,
)

Identifier = Annotated[str, Field(pattern=IDENT, max_length=100)]
#: A whole-value ``${...}`` expression, evaluated per stage with ``stage`` in scope.
StageExpr = Annotated[str, Field(pattern=r"^\s*\$\{[^{}]+\}\s*$", max_length=500)]
ArgValue = Any


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class PartSpec(_Strict):
    """One part inside a composite type: an id, a type and its args."""

    id: Identifier = Field(description="Name of the part inside the composite; its state_dict keys start with it.",
                           examples=["conv"])
    type: str = Field(min_length=1, description="A built-in, registered or composite node type.",
                      examples=["conv2d"])
    args: dict[str, ArgValue] = Field(default_factory=dict,
                                      description="Arguments of the type; strings may hold ${...} expressions.",
                                      examples=[{"in_channels": "${in_ch}", "out_channels": "${out_ch}"}])


class CopyInit(_Strict):
    """``init: {copy: b2}``: a node that joins starts as a copy of another node of the same definition."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    source: Identifier = Field(alias="copy",
                               description="The id of a node of the chain's old revision with the same definition "
                                           "(type and arguments): the new node starts with its weights and buffers "
                                           "(depth growth by stacking copies, as G_stack does).",
                               examples=["h1"])
    optimizer: Literal["copy", "fresh"] = Field(
        "copy", description="The new parameters' optimizer state: a copy of the source's (Adam's moments and "
                            "step count), so that they take the step the source would; or none, as new "
                            "parameters have.")


class NodeSpec(PartSpec):
    """One node of a chain: a part plus when it joins and leaves the chain, and where its input comes from."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    id: Identifier = Field(description="Stable id, unique in its chain; state_dict keys start with it.",
                           examples=["b1"])
    stage: Annotated[int, Field(ge=0, le=MAX_STAGES - 1)] = Field(
        0, description="The growth stage at which the node joins the chain (0 = from the start).")
    until: Annotated[int, Field(ge=1, le=MAX_STAGES)] | None = Field(
        None, description="The stage at which the node leaves the chain (it is active for stage <= s < until).")
    init: Literal["fresh", "keep", "preserve"] | CopyInit = Field(
        "fresh",
        description="How new weights start when a live revision inserts this node or changes its parameter shapes: "
                    "fresh = the type's own initialisation; keep = copy the overlapping slice of the old weights; "
                    "preserve = function-preserving (Net2WiderNet when widened, identity when inserted; a "
                    "residual block starts by adding nothing); {copy: ID} = the weights of another node of the "
                    "same definition. See docs/revisions.md for the types that support each mode.")
    optim: dict[Identifier, bool | int | float | list[float]] = Field(
        default_factory=dict,
        description="Optimizer hyperparameters for this node's parameters, overriding those of the param group "
                    "they would join when a live revision adds them (for example a lower lr for a new block).",
        examples=[{"lr": 0.0005}])
    from_: list[Identifier] = Field(
        default_factory=list, alias="from", max_length=64,
        description="Where the node's input comes from, by id: earlier nodes of the chain, `prev` (the node before "
                    "it, the default) and `input` (the chain's input). With more than one, `merge` says how they "
                    "are combined. Ids are stable, so inserting or removing other nodes never changes what a node "
                    "takes.",
        examples=[["enc2", "prev"]])
    merge: Literal["add", "concat"] | None = Field(
        None, description="How the outputs named in `from` are combined: add (same shapes) or concat (on the "
                          "channel dimension, the first of a sample). Required when `from` names more than one.")
    tie: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$", max_length=200)],
              Annotated[str, Field(pattern=PARAM_REF, max_length=200)]] = Field(
        default_factory=dict, max_length=64,
        description="Parameters of this node that are another node's parameter (one tensor, trained once): "
                    "`{weight: tok.weight}` makes this node's `weight` the parameter `weight` of node `tok`, as "
                    "GPT ties its output layer to the token embedding.",
        examples=[{"weight": "tok.weight"}])


class TypeDef(_Strict):
    """A composite node type defined in the spec from other types."""

    description: str = Field("", description="What the type is for (shown by `chainspec build`).")
    params: dict[Identifier, ArgValue] = Field(
        default_factory=dict,
        description="Parameters and their defaults; a parameter whose default is null is required.",
        examples=[{"in_ch": None, "out_ch": None, "slope": 0.2}])
    nodes: list[PartSpec] = Field(min_length=1, description="The parts, in order (the body of a residual type).")
    residual: bool = Field(
        False, description="The type's output is its input (through `shortcut`, if given) plus what its parts "
                           "make of it: a residual block. Its parts' state_dict keys start with `body.`.")
    shortcut: list[PartSpec] = Field(
        default_factory=list,
        description="Only with residual: the parts the input goes through on the way to the sum (a projection, "
                    "or subsample_pad for a parameter-free shortcut); none: the input itself. Keys start with "
                    "`shortcut.`.")
    after: list[PartSpec] = Field(
        default_factory=list,
        description="Only with residual: parts applied after the sum (a ResNet's last ReLU). Keys start with "
                    "`after.`.")


class ChainSpec(_Strict):
    """One chain: its input shape and its nodes in order."""

    description: str = Field("", description="What the chain is.")
    input_shape: list[Annotated[int, Field(ge=1, le=MAX_DIM)] | StageExpr] = Field(
        min_length=1,
        description="Shape of one input sample, without the batch dimension. An entry may be a ${...} expression "
                    "of `stage` (and the spec vars) when the input grows, e.g. a discriminator's resolution.",
        examples=[[3, 32, 32], [3, "${4 * 2**stage}", "${4 * 2**stage}"]])
    input_dtype: Literal["float32", "float64", "float16", "bfloat16", "int64", "int32"] | None = Field(
        None, description="The dtype of the chain's input: an integer dtype for token ids (`input_shape: [T]`); "
                          "by default the parameters' floating-point dtype.")
    nodes: list[NodeSpec] = Field(min_length=1, description="The nodes, head to tail.")


class StagePhases(_Strict):
    """Phase lengths for one stage, overriding the growth section's defaults."""

    stage: Annotated[int, Field(ge=0, le=MAX_STAGES - 1)] = Field(description="The stage these lengths apply to.")
    stabilize: Annotated[int, Field(ge=0)] | None = Field(
        None, description="Length of this stage's stabilise phase (in the growth unit); null keeps the default.")
    fade: Annotated[int, Field(ge=0)] | None = Field(
        None, description="Length of the fade-in into this stage (stage >= 1; in the growth unit); 0 grows "
                          "abruptly; null keeps the default.")
    minibatch: Annotated[int, Field(ge=1, le=MAX_DIM)] | None = Field(
        None, description="The minibatch size while this stage trains (its fade-in included); null keeps the "
                          "default.")


class GrowthSpec(_Strict):
    """The growth schedule: how long each stage trains, and how long each new stage fades in.

    Stage 0 stabilises; every later stage k first fades in (the old and new
    paths blended with alpha going 0 -> 1), then stabilises at alpha = 1.
    """

    unit: Literal["images", "steps"] = Field(
        "images", description="What the phase lengths count: training images shown, or optimizer steps.")
    stabilize: Annotated[int, Field(ge=0)] = Field(
        800_000, description="Length of each stage's stabilise phase (the paper: 800k images).")
    fade: Annotated[int, Field(ge=0)] = Field(
        800_000, description="Length of each fade-in into a new stage (the paper: 800k images); 0 grows abruptly.")
    policy: Literal["keep", "reset"] = Field(
        "keep", description="Optimizer state of surviving parameters at each growth step: keep their moments, "
                            "or reset them as the official PG-GAN code does.")
    minibatch: Annotated[int, Field(ge=1, le=MAX_DIM)] | None = Field(
        None, description="The minibatch size the schedule is meant for (the paper: 16); null leaves it to the "
                          "training script. Grower.minibatch says it for the current stage.")
    per_stage: list[StagePhases] = Field(
        default_factory=list, description="Per-stage overrides of the phase lengths and the minibatch size.",
        examples=[[{"stage": 8, "stabilize": 1_600_000}]])


class SpecModel(_Strict):
    """A chainspec file, format version 1."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, title="chainspec spec")

    chainspec: Literal[1] = Field(description="Format version of this file.")
    description: str = Field("", description="What the spec builds.")
    vars: dict[Identifier, bool | int | float | str] = Field(
        default_factory=dict, description="Constants usable in ${...} expressions anywhere in the spec.",
        examples=[{"base_ch": 32}])
    stages: Annotated[int, Field(ge=1, le=MAX_STAGES)] | None = Field(
        None, description="Number of growth stages; defaults to one more than the largest stage used.")
    defaults: dict[str, dict[str, ArgValue]] = Field(
        default_factory=dict, description="Per-type default args, applied wherever that type is used.",
        examples=[{"conv2d": {"kernel_size": 3, "padding": 1, "bias": False}}])
    types: dict[Identifier, TypeDef] = Field(default_factory=dict, description="Composite node types.")
    chains: dict[Identifier, ChainSpec] = Field(min_length=1, description="The chains the spec builds, by name.")
    growth: GrowthSpec | None = Field(
        None, description="The progressive-growing schedule (phase lengths and fade-ins); see docs/growing.md.")
