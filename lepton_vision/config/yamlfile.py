"""YAML loading that keeps line numbers and refuses duplicate keys.

PyYAML silently keeps the last of two equal keys; a recipe with ``epochs`` twice would then train
with a value the user may not have meant. We compose the node tree ourselves, refuse duplicates,
and remember the line of every path (``train.optimizer.name``, ``augment[2].params``) so that
schema errors can point at a line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lepton_vision.config.errors import Problem, RecipeError


def render_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """Render a location tuple as ``a.b[2].c``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


@dataclass
class YamlDoc:
    """A parsed YAML mapping and the line of each path in it.

    Attributes:
        data: The plain Python value (dicts, lists, scalars).
        lines: Rendered path (``a.b[0].c``) → 1-based line number.
        file: The source file name (for messages).
    """

    data: Any
    lines: dict[str, int] = field(default_factory=dict)
    file: str = "<string>"
    overridden: set[str] = field(default_factory=set)

    def from_override(self, loc: tuple[Any, ...] | list[Any]) -> bool:
        """Whether ``loc`` (or a parent of it) was set by a ``--set`` override."""
        loc = list(loc)
        while loc:
            if render_path(loc) in self.overridden:
                return True
            loc.pop()
        return False

    def line_of(self, loc: tuple[Any, ...] | list[Any]) -> int | None:
        """The line of ``loc`` or of its nearest parent that has one (None for overrides)."""
        if self.from_override(loc):
            return None
        loc = list(loc)
        while loc:
            line = self.lines.get(render_path(loc))
            if line is not None:
                return line
            loc.pop()
        return None


class _Loader(yaml.SafeLoader):
    """SafeLoader (no arbitrary objects) used only to compose nodes."""


def _construct(node: yaml.Node, path: tuple[Any, ...], lines: dict[str, int], file: str) -> Any:
    lines.setdefault(render_path(path), node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            if key in seen:
                raise RecipeError(
                    "duplicate key",
                    file=file,
                    problems=[
                        Problem(
                            render_path(path + (key,)),
                            f"key '{key}' appears twice (lines {seen[key]} and "
                            f"{key_node.start_mark.line + 1}). Keep one of them.",
                            line=key_node.start_mark.line + 1,
                        )
                    ],
                )
            seen[key] = key_node.start_mark.line + 1
            lines[render_path(path + (key,))] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, path + (key,), lines, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, path + (i,), lines, file) for i, v in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    loader = _Loader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def load_yaml_text(text: str, file: str = "<string>") -> YamlDoc:
    """Parse YAML text into a :class:`YamlDoc`.

    Raises:
        RecipeError: On a YAML syntax error (with its line) or a duplicate key.
    """
    lines: dict[str, int] = {}
    try:
        node = yaml.compose(text, Loader=_Loader)
        # Constructing can fail too (an unknown tag such as "!0", a list used as a key).
        data = {} if node is None else _construct(node, (), lines, file)
    except TypeError as e:  # e.g. "unhashable type: 'list'" for `? [a, b]: 1`
        raise RecipeError(
            "not a usable YAML mapping",
            file=file,
            problems=[Problem("", f"a mapping key must be a plain value (text or number) ({e})")],
            hint="Use plain keys: `name: value`.",
        ) from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        what = getattr(e, "problem", None) or str(e)
        raise RecipeError(
            "not valid YAML",
            file=file,
            problems=[Problem("", f"{what}", line=line)],
            hint="Check indentation and quoting near that line (YAML uses spaces, not tabs).",
        ) from e
    if node is None:
        return YamlDoc(data={}, file=file)
    return YamlDoc(data=data, lines=lines, file=file)


def load_yaml(path: str | Path) -> YamlDoc:
    """Read a YAML file into a :class:`YamlDoc`.

    Raises:
        RecipeError: The file is missing, unreadable, not YAML, or has duplicate keys.
    """
    p = Path(path)
    if not p.is_file():
        raise RecipeError(
            f"file not found: {p}",
            hint="Check the path (it is relative to the current directory).",
        )
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"cannot read {p}: {e}") from e
    return load_yaml_text(text, file=str(p))
