"""Read `mlbus.yaml` into a `ProjectSpec`, or fail with messages a user can act on.

Every failure is a `SpecError` naming the file, the YAML line, the field path
(`sources.transactions.contract.fields.amount.min`), what was expected and
what was given. Pydantic's messages are rephrased in that one shape; line
numbers come from the YAML node tree, looked up by the error's path.
"""

from __future__ import annotations

import os
import types
import typing
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mlbus.errors import ConfigError
from mlbus.spec._base import IDENTIFIER, CrossFieldError, Loc, format_loc, one_of
from mlbus.spec._project import ProjectSpec

_YAML_BOOL_HINT = " (YAML reads yes/no/on/off/y/n as booleans: quote the value)"
_SIMPLE: dict[str, str] = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
    "list_type": "a list",
    "tuple_type": "a list",
}
"""Pydantic error types whose fix is "give a value of this type"."""


@dataclass(frozen=True)
class SpecIssue:
    """One problem in a spec: where (`loc`, `line`) and what is wrong (`message`)."""

    loc: str
    message: str
    line: int | None = None


class SpecError(ConfigError):
    """A spec file cannot be used. `str()` is the whole human message; `issues` the parts."""

    def __init__(self, message: str, *, file: str, issues: tuple[SpecIssue, ...] = ()) -> None:
        super().__init__(message)
        self.file = file
        self.issues = issues


def load_spec(path: str | os.PathLike[str]) -> ProjectSpec:
    """Read and validate the spec at `path`; raise `SpecError` with a readable message."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{file}: no such file (expected a mlbus.yaml spec)", file=file) from None
    except IsADirectoryError:
        raise SpecError(f"{file}: is a directory, expected a mlbus.yaml file", file=file) from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{file}: not UTF-8 text ({exc.reason})", file=file) from None
    except OSError as exc:
        raise SpecError(f"{file}: cannot read: {exc.strerror or exc}", file=file) from None
    return parse_spec(text, filename=file)


def parse_spec(text: str, *, filename: str = "<string>") -> ProjectSpec:
    """Validate spec YAML given as text; `filename` is only used in messages."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        raise SpecError(_yaml_message(filename, exc), file=filename) from None
    except yaml.YAMLError as exc:
        flat = " ".join(str(exc).split())
        raise SpecError(f"{filename}: invalid YAML: {flat}", file=filename) from None
    if data is None:
        raise SpecError(
            f"{filename}: the file is empty; expected a mapping with project, sources, "
            "features, model, drift and serving",
            file=filename,
        )
    if not isinstance(data, dict):
        raise SpecError(
            f"{filename}: expected a mapping at the top level (project:, sources:, model:, …), "
            f"got {_describe(data)}",
            file=filename,
        )
    duplicates = _duplicate_keys(root, ())
    if duplicates:
        raise _spec_error(filename, duplicates)
    try:
        return ProjectSpec.model_validate(data)
    except ValidationError as exc:
        issues = [
            SpecIssue(format_loc(loc), message, _line_of(root, loc))
            for loc, message in _issues(exc, data)
        ]
        raise _spec_error(filename, issues) from None


def _spec_error(filename: str, issues: list[SpecIssue]) -> SpecError:
    issues.sort(key=lambda issue: (issue.line or 0, issue.loc))

    def where(issue: SpecIssue) -> str:
        line = f":{issue.line}" if issue.line else ""
        return f"{filename}{line}: {issue.loc}: {issue.message}"

    if len(issues) == 1:
        message = where(issues[0])
    else:
        lines = [f"invalid spec {filename} ({len(issues)} problems):"]
        lines.extend(f"  {where(issue)}" for issue in issues)
        message = "\n".join(lines)
    return SpecError(message, file=filename, issues=tuple(issues))


def _yaml_message(filename: str, exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
    problem = exc.problem or "syntax error"
    context = f" ({exc.context})" if exc.context else ""
    return f"{where}: invalid YAML: {problem}{context}"


# ── pydantic errors → (location, message) ────────────────────────────────────


def _issues(exc: ValidationError, data: dict[str, Any]) -> list[tuple[Loc, str]]:
    out: list[tuple[Loc, str]] = []
    union_members: dict[Loc, list[tuple[str, Any]]] = {}
    for err in exc.errors():
        loc, in_key, tagged = _clean_loc(data, tuple(err["loc"]))
        ctx = err.get("ctx") or {}
        error = ctx.get("error")
        if isinstance(error, CrossFieldError):
            out.extend(((*loc, *rel), message) for rel, message in error.problems)
            continue
        if tagged and err["type"] in _SIMPLE:  # one failed member of a union such as bool | str
            union_members.setdefault(loc, []).append((_SIMPLE[err["type"]], err.get("input")))
            continue
        message = _message(err["type"], ctx, err.get("input"), err["msg"], loc)
        out.append((loc, f"invalid key: {message}" if in_key else message))
    for loc, members in union_members.items():
        expected = list(dict.fromkeys(thing for thing, _ in members))
        either = (
            ", ".join(expected[:-1]) + " or " + expected[-1] if len(expected) > 1 else expected[0]
        )
        out.append((loc, f"expected {either}, got {_describe(members[0][1])}"))
    return out


def _clean_loc(data: Any, loc: Loc) -> tuple[Loc, bool, bool]:
    """Drop pydantic's own path parts (union tags, `[key]`) so the path matches the YAML.

    Returns the cleaned path, whether the error is about a mapping key, and
    whether a union member's tag was dropped.
    """
    kept: list[int | str] = []
    current = data
    in_key = tagged = False
    for i, part in enumerate(loc):
        if part == "[key]":
            in_key = True
        elif _has(current, part):
            kept.append(part)
            current = current[part]
        elif i == len(loc) - 1 and isinstance(current, dict):
            kept.append(part)  # a missing field: the path names it although the YAML cannot
        else:
            tagged = True
    return tuple(kept), in_key, tagged


def _has(container: Any, part: int | str) -> bool:
    if isinstance(container, dict):
        return part in container
    return isinstance(container, list) and isinstance(part, int) and 0 <= part < len(container)


def _message(kind: str, ctx: dict[str, Any], given: Any, default: str, loc: Loc) -> str:
    got = f", got {_describe(given)}"
    hint = _YAML_BOOL_HINT if isinstance(given, bool) else ""
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return _unknown_field(loc)
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", default))
    if kind == "literal_error":
        return f"expected {ctx.get('expected', 'one of the allowed values')}{got}{hint}"
    if kind == "string_pattern_mismatch":
        if ctx.get("pattern") == IDENTIFIER:
            return f"expected a name of letters, digits and _ not starting with a digit{got}"
        return f"expected text matching {ctx.get('pattern')}{got}"
    if kind in _SIMPLE:
        return f"expected {_SIMPLE[kind]}{got}{hint}"
    bounds = {
        "greater_than": ("a value >", "gt"),
        "greater_than_equal": ("a value >=", "ge"),
        "less_than": ("a value <", "lt"),
        "less_than_equal": ("a value <=", "le"),
        "too_short": ("at least this many items:", "min_length"),
        "too_long": ("at most this many items:", "max_length"),
        "string_too_short": ("at least this many characters:", "min_length"),
        "string_too_long": ("at most this many characters:", "max_length"),
    }
    if kind in bounds:
        text, key = bounds[kind]
        return f"expected {text} {ctx.get(key)}{got}"
    return f"{default}{got}"


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _unknown_field(loc: Loc) -> str:
    """Name the fields that are allowed here, and the likely intended one."""
    key = str(loc[-1]) if loc else "?"
    model = _model_at(loc[:-1])
    if model is None:
        return f"unknown field {key!r}"
    allowed = list(model.model_fields)
    close = get_close_matches(key, allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown field {key!r}: expected one of {one_of(allowed)}{hint}"


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The spec model class found at `loc` by walking field annotations from `ProjectSpec`."""
    current: Any = ProjectSpec
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        elif typing.get_origin(current) in (tuple, list):
            current = typing.get_args(current)[0]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    """`Annotated[X, …]` → X; `X | None` → X (the model member of a union, if any)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        for member in members:
            if isinstance(member, type) and issubclass(member, BaseModel):
                return member
        return members[0] if len(members) == 1 else tp
    return tp


# ── YAML node tree: line numbers and duplicate keys ──────────────────────────


def _line_of(node: yaml.Node | None, loc: Loc) -> int | None:
    """1-based line of the deepest YAML node on `loc` (the key's line for mapping entries)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and _same_key(key_node, part):
                    line = key_node.start_mark.line + 1
                    node = value_node
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _same_key(key_node: yaml.ScalarNode, part: int | str) -> bool:
    return bool(key_node.value == str(part))


def _duplicate_keys(node: yaml.Node | None, loc: Loc) -> list[SpecIssue]:
    """YAML keeps the last of two equal keys silently; a spec must not."""
    issues: list[SpecIssue] = []
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in first_line:
                issues.append(
                    SpecIssue(
                        format_loc((*loc, key)),
                        f"expected each key once, got {key!r} again "
                        f"(first on line {first_line[key]})",
                        line,
                    )
                )
            else:
                first_line[key] = line
            issues.extend(_duplicate_keys(value_node, (*loc, key)))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            issues.extend(_duplicate_keys(item, (*loc, i)))
    return issues
