"""Node types: the registry, the built-in types (registered on import) and the layers they build.

The bottom of the pipeline: reading a spec looks types up here, building calls their
factories. Importing it does not import torch; a factory imports torch when it is called.
"""

from . import builtins as _builtins  # noqa: F401 - registers the built-in types before any lookup
from .registry import NodeType, get_type, is_registered, list_types, register_type

__all__ = ["NodeType", "get_type", "is_registered", "list_types", "register_type"]
