"""Assignment specs: the schema, the forward-definition language and the loader."""

from grader.spec.load import (
    Assignment,
    Function,
    LeafInfo,
    SpecError,
    builtin_dir,
    builtin_ids,
    load_builtin,
    load_folder,
    parse_spec,
)
from grader.spec.program import Program, ProgramError

__all__ = [
    "Assignment",
    "Function",
    "LeafInfo",
    "Program",
    "ProgramError",
    "SpecError",
    "builtin_dir",
    "builtin_ids",
    "load_builtin",
    "load_folder",
    "parse_spec",
]
