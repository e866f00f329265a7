"""YAML loading that remembers where every value came from.

Validation errors must name the line of the offending field, so documents are composed
into nodes first and a map from field path (``scenarios[2].workloads[0]``) to line is
kept beside the plain data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cvmharness.errors import InputError, Problem


def join_path(base: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{base}[{key}]"
    return f"{base}.{key}" if base else str(key)


@dataclass(frozen=True)
class Located:
    """A loaded YAML document with the source line of each field path."""

    data: Any
    file: str
    lines: dict[str, int] = field(default_factory=dict)

    def line_of(self, path: str) -> int | None:
        """Line of ``path``, or of its nearest ancestor that has one."""
        probe = path
        while probe:
            if probe in self.lines:
                return self.lines[probe]
            cut = max(probe.rfind("."), probe.rfind("["))
            probe = probe[:cut] if cut > 0 else ""
        return self.lines.get("")

    def problem(self, path: str, message: str) -> Problem:
        return Problem(file=self.file, path=path, message=message, line=self.line_of(path))


class _NoDuplicatesLoader(yaml.SafeLoader):
    pass


def _construct(node: yaml.Node, path: str, lines: dict[str, int], loader: yaml.SafeLoader,
               problems: list[Problem], file: str) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool):
                problems.append(Problem(file, path, "mapping keys must be scalars",
                                        key_node.start_mark.line + 1))
                continue
            sub = join_path(path, str(key))
            if key in out:
                problems.append(Problem(file, sub, "duplicate key", key_node.start_mark.line + 1))
            lines[sub] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, sub, lines, loader, problems, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _construct(item, join_path(path, i), lines, loader, problems, file)
            for i, item in enumerate(node.value)
        ]
    return loader.construct_object(node, deep=True)


def load_located(text: str, file: str) -> Located:
    """Parse one YAML document; syntax errors become an InputError with the line."""
    loader = _NoDuplicatesLoader(text)
    try:
        node = loader.get_single_node()
        problems: list[Problem] = []
        lines: dict[str, int] = {}
        data = None if node is None else _construct(node, "", lines, loader, problems, file)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = None if mark is None else mark.line + 1
        raise InputError([Problem(file, "", f"not valid YAML: {exc.problem}", line)]) from None
    except yaml.YAMLError as exc:
        raise InputError([Problem(file, "", f"not valid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    if problems:
        raise InputError(problems)
    return Located(data=data, file=file, lines=lines)


def load_located_file(path: Path, display: str | None = None) -> Located:
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError([Problem(name, "", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise InputError([Problem(name, "", "not UTF-8 text")]) from None
    return load_located(text, name)
