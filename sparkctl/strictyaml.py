"""Strict, bounded YAML loading for inventories and playbooks.

PyYAML's safe loader accepts duplicate keys silently, expands alias bombs until
memory runs out, and forgets where each value came from. This module composes
the document first (linear in its size), refuses what a configuration file
should never contain, and builds plain Python data together with a map from
each key path to the line it was written on, so that every later error can
name the file, the line and the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_FILE_BYTES = 1024 * 1024
# Values after alias expansion. A real inventory has a few hundred; an alias
# bomb has billions. Counting happens on the composed graph, before anything
# is expanded, so refusing costs no memory.
MAX_EXPANDED_VALUES = 20_000
MAX_DEPTH = 64

Path_ = tuple[Any, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a file: where (key path and line) and what."""

    file: str
    line: int | None
    loc: Path_
    message: str

    def render(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = render_loc(self.loc)
        return f"{where}: {key}: {self.message}" if key else f"{where}: {self.message}"


class YamlProblems(Exception):
    def __init__(self, problems: list[Problem]):
        super().__init__("; ".join(p.render() for p in problems))
        self.problems = problems


@dataclass
class LoadedYaml:
    file: str
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)

    def line_for(self, loc: Path_) -> int | None:
        """The line of the deepest part of `loc` that exists in the file."""
        for cut in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:cut]))
            if line is not None:
                return line
        return None

    def problem(self, loc: Path_, message: str) -> Problem:
        return Problem(self.file, self.line_for(loc), tuple(loc), message)


def render_loc(loc: Path_) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def load_file(path: str | os.PathLike[str]) -> LoadedYaml:
    """Read and compose one YAML document, refusing anything unsafe or ambiguous."""
    shown = str(path)
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise YamlProblems([Problem(shown, None, (), "file not found")]) from None
    except OSError as exc:
        raise YamlProblems([Problem(shown, None, (), f"cannot read: {exc.strerror}")]) from None
    if Path(path).is_dir():
        raise YamlProblems([Problem(shown, None, (), "is a directory, expected a YAML file")])
    if size > MAX_FILE_BYTES:
        raise YamlProblems(
            [Problem(shown, None, (), f"file is {size} bytes; the limit is {MAX_FILE_BYTES} (1 MiB)")]
        )
    with open(path, "rb") as handle:
        raw = handle.read(MAX_FILE_BYTES + 1)
    return load_bytes(raw, shown)


def load_bytes(raw: bytes, file: str) -> LoadedYaml:
    if len(raw) > MAX_FILE_BYTES:
        raise YamlProblems([Problem(file, None, (), "file is larger than 1 MiB")])
    if b"\x00" in raw:
        line: int | None = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise YamlProblems([Problem(file, line, (), "binary file (contains a NUL byte), expected YAML text")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise YamlProblems([Problem(file, line, (), "not valid UTF-8 text")]) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        what = exc.problem or exc.context or "invalid YAML"
        raise YamlProblems([Problem(file, line, (), f"YAML syntax error: {what}")]) from None
    except yaml.YAMLError as exc:
        raise YamlProblems([Problem(file, None, (), f"YAML error: {exc}")]) from None
    if len(nodes) > 1:
        raise YamlProblems([Problem(file, nodes[1].start_mark.line + 1, (), "expected one YAML document, found several")])
    loaded = LoadedYaml(file, None)
    if not nodes:
        return loaded
    root = nodes[0]
    _check_expansion(root, file)
    builder = _Builder(file, loaded.lines)
    loaded.data = builder.build(root, ())
    if builder.problems:
        raise YamlProblems(builder.problems)
    return loaded


def _check_expansion(root: Node, file: str) -> None:
    """Refuse recursive aliases and alias bombs by counting, not expanding."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise YamlProblems([Problem(file, node.start_mark.line + 1, (), "recursive YAML alias")])
        if depth > MAX_DEPTH:
            raise YamlProblems([Problem(file, node.start_mark.line + 1, (), f"nesting deeper than {MAX_DEPTH} levels")])
        active.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            for child in node.value:
                total += size(child, depth + 1)
                if total > MAX_EXPANDED_VALUES:
                    break
        elif isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                total += size(key_node, depth + 1) + size(value_node, depth + 1)
                if total > MAX_EXPANDED_VALUES:
                    break
        active.discard(key)
        if total > MAX_EXPANDED_VALUES:
            raise YamlProblems(
                [
                    Problem(
                        file,
                        node.start_mark.line + 1,
                        (),
                        f"aliases expand to more than {MAX_EXPANDED_VALUES} values (an alias bomb?)",
                    )
                ]
            )
        sizes[key] = total
        return total

    size(root, 0)


class _Builder:
    """Composed nodes -> plain data, recording the line of every key path."""

    def __init__(self, file: str, lines: dict[Path_, int]):
        self.file = file
        self.lines = lines
        self.problems: list[Problem] = []
        self._scalars = yaml.SafeLoader("")

    def build(self, node: Node, path: Path_) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, MappingNode):
            return self._mapping(node, path)
        if isinstance(node, SequenceNode):
            return [self.build(child, path + (i,)) for i, child in enumerate(node.value)]
        return self._scalar(cast(ScalarNode, node), path)  # YAML has no fourth kind of node

    def _scalar(self, node: ScalarNode, path: Path_) -> Any:
        try:
            return self._scalars.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            self.problems.append(Problem(self.file, node.start_mark.line + 1, path, f"unsupported YAML value: {problem}"))
            return None

    def _mapping(self, node: MappingNode, path: Path_) -> dict:
        result: dict = {}
        explicit_lines: dict = {}
        merged: list[tuple[Any, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged.extend(self._merge_sources(value_node, path))
                continue
            if not isinstance(key_node, ScalarNode):
                self.problems.append(
                    Problem(self.file, key_node.start_mark.line + 1, path, "mapping keys must be plain scalars")
                )
                continue
            key = self._scalar(key_node, path)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                key = str(key)
            line = key_node.start_mark.line + 1
            if key in explicit_lines:
                self.problems.append(
                    Problem(
                        self.file,
                        line,
                        path + (key,),
                        f"duplicate key (first defined on line {explicit_lines[key]})",
                    )
                )
                continue
            explicit_lines[key] = line
            self.lines[path + (key,)] = line
            result[key] = self.build(value_node, path + (key,))
        # Merge keys (<<: *anchor) fill in only what the mapping does not set itself.
        for key, value_node in merged:
            if key not in result:
                self.lines.setdefault(path + (key,), value_node.start_mark.line + 1)
                result[key] = self.build(value_node, path + (key,))
        return result

    def _merge_sources(self, value_node: Node, path: Path_) -> list[tuple[Any, Node]]:
        sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
        pairs: list[tuple[Any, Node]] = []
        for source in sources:
            if not isinstance(source, MappingNode):
                self.problems.append(
                    Problem(self.file, source.start_mark.line + 1, path, "'<<' merge needs a mapping")
                )
                continue
            for key_node, sub_value in source.value:
                if isinstance(key_node, ScalarNode) and key_node.tag != _MERGE_TAG:
                    pairs.append((self._scalar(key_node, path), sub_value))
        return pairs
