"""YAML loading that remembers where every key came from, so errors can say FILE:LINE."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Loc = tuple[str | int, ...]
# Values in one document at most, counting every use of an alias: a "billion laughs" file
# (aliases of aliases) expands exponentially and is stopped here instead of eating the memory.
MAX_NODES = 200_000


@dataclass
class Located:
    """A parsed YAML document plus the 1-based line of every key path in it."""

    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    duplicates: list[tuple[Loc, int]] = field(default_factory=list)
    nodes: int = 0

    def line_of(self, loc: Loc) -> int:
        """Line of `loc`, or of its nearest ancestor that exists in the file."""
        probe = tuple(loc)
        while probe:
            if probe in self.lines:
                return self.lines[probe]
            probe = probe[:-1]
        return self.lines.get((), 1)


class YamlSyntaxError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def load_located(text: str) -> Located:
    """Parse one YAML document with the safe loader, keeping line numbers."""
    try:
        loader = yaml.SafeLoader(text)  # checks for unprintable characters at once
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(0, exc.position)) + 1
        raise YamlSyntaxError(line, f"character U+{exc.character:04X} is not allowed") from None
    try:
        node = loader.get_single_node()
        out = Located(data=None)
        if node is not None:
            out.data = _walk(loader, node, (), out)
        return out
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlSyntaxError(line, f"{exc.problem or exc}") from None
    except yaml.YAMLError as exc:  # no mark, a position at best
        raise YamlSyntaxError(1, str(exc)) from None
    except RecursionError:
        raise YamlSyntaxError(1, "nested too deeply") from None
    finally:
        loader.dispose()


def _walk(loader: yaml.SafeLoader, node: yaml.Node, path: Loc, out: Located) -> Any:
    out.nodes += 1
    if out.nodes > MAX_NODES:
        raise YamlSyntaxError(
            node.start_mark.line + 1,
            f"more than {MAX_NODES} values once aliases are expanded (an alias bomb?)",
        )
    out.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int):
                key = str(key)
            child = (*path, key)
            if key in result:
                out.duplicates.append((child, key_node.start_mark.line + 1))
            out.lines[child] = key_node.start_mark.line + 1
            result[key] = _walk(loader, value_node, child, out)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            out.lines[(*path, i)] = item.start_mark.line + 1
            items.append(_walk(loader, item, (*path, i), out))
        return items
    return loader.construct_object(node, deep=True)
