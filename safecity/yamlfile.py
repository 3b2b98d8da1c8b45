"""YAML files validated by pydantic models, with the line of every problem.

The YAML is composed into nodes as well as loaded, so that a pydantic error location
(`routes.3.match.severities`) maps back to the line of the offending key.
"""

from __future__ import annotations

from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from safecity.errors import SafecityError

M = TypeVar("M", bound=BaseModel)


def line_of(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int:
    """1-based line of the deepest YAML node along a pydantic error location."""
    node = root
    line = node.start_mark.line + 1 if node is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    # The key's own line: for a bad scalar it is the value's line too.
                    line = key.start_mark.line + 1
                    node = value
                    break
            else:
                # A discriminator tag or a missing key: stay at the enclosing node.
                continue
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if 0 <= part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
        else:
            continue
    return line


def compose(text: str, source: str, error: type[SafecityError]) -> tuple[yaml.Node | None, Any]:
    """(node tree, plain data) of a YAML text; `error` names the line of a syntax error."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader), yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else 1
        raise error(f"{source}:{line}: not valid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML: {exc}") from None


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<file>"


def validate(model: type[M], text: str, source: str, error: type[SafecityError]) -> M:
    """The model of a YAML text; `error` lists every problem as `source:line: where: what`."""
    root, data = compose(text, source, error)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            loc = tuple(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{source}:{line_of(root, loc)}: {_where(loc)}: {msg}")
        raise error("; ".join(problems)) from None
