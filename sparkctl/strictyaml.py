"""Strict, bounded YAML loading for inventories and playbooks.

PyYAML's safe loader accepts duplicate keys silently, expands alias bombs until
memory runs out, and forgets where each value came from. This module composes
the document first (linear in its size), refuses what a configuration file
should never contain, and builds plain Python data together with a map from
each key path to the line it was written on, so that every later error can
name the file, the line and the key.

YAML 1.1 reads `022` as 18, `1:20` as 80 and `0x1F` as 31. Where the schema wants
text (environment values, `text_at`), a plain scalar keeps the text written; an
integer written in one of those forms anywhere else is refused, not reinterpreted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, cast

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from sparkctl.files import NotARegularFile, open_regular

MAX_FILE_BYTES = 1024 * 1024
# Values that aliases add when expanded. A real inventory adds a few hundred; an
# alias bomb adds billions. Counting happens on the composed graph, before anything
# is expanded, so refusing costs no memory. Values written out are bounded by the
# file size alone.
MAX_EXPANDED_VALUES = 20_000
MAX_DEPTH = 64

Path_ = tuple[Any, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_COLLECTION_TAGS: dict[type[Node], str] = {MappingNode: "tag:yaml.org,2002:map", SequenceNode: "tag:yaml.org,2002:seq"}
_NUMBER_KINDS = {_INT_TAG: "whole number", _FLOAT_TAG: "number", _TIMESTAMP_TAG: "date"}


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


def _nowhere(loc: Path_) -> bool:
    return False


def load_file(path: str | os.PathLike[str], *, text_at: Callable[[Path_], bool] = _nowhere) -> LoadedYaml:
    """Read and compose one YAML document, refusing anything unsafe or ambiguous."""
    shown = str(path)
    try:
        with open_regular(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise YamlProblems(
                    [Problem(shown, None, (), f"file is {size} bytes; the limit is {MAX_FILE_BYTES} (1 MiB)")]
                )
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise YamlProblems([Problem(shown, None, (), "file not found")]) from None
    except IsADirectoryError:
        raise YamlProblems([Problem(shown, None, (), "is a directory, expected a YAML file")]) from None
    except NotARegularFile as exc:
        raise YamlProblems([Problem(shown, None, (), f"{exc.strerror}, expected a YAML file")]) from None
    except OSError as exc:
        raise YamlProblems([Problem(shown, None, (), f"cannot read: {exc.strerror}")]) from None
    return load_bytes(raw, shown, text_at=text_at)


def load_bytes(raw: bytes, file: str, *, text_at: Callable[[Path_], bool] = _nowhere) -> LoadedYaml:
    """`text_at(path)`: whether the value at that key path is text, kept as written."""
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
        loader = _DepthLimitedLoader(text, file)
        try:
            nodes: list[Node] = []
            while loader.check_node():
                node = loader.get_node()
                if node is not None:  # check_node() said there is one
                    nodes.append(node)
        finally:
            loader.dispose()
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
    builder = _Builder(file, loaded.lines, text_at)
    loaded.data = builder.build(root, ())
    if builder.problems:
        raise YamlProblems(builder.problems)
    return loaded


class _DepthLimitedLoader(yaml.SafeLoader):
    """PyYAML composes recursively: a few thousand nested brackets exhaust Python's
    stack (RecursionError, "internal error"). Stop at MAX_DEPTH with the line."""

    def __init__(self, text: str, file: str):
        super().__init__(text)
        self._file = file
        self._depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001 (PyYAML's signature)
        if self._depth >= MAX_DEPTH:
            line = self.peek_event().start_mark.line + 1
            raise YamlProblems([Problem(self._file, line, (), f"nesting deeper than {MAX_DEPTH} levels")])
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _check_expansion(root: Node, file: str) -> None:
    """Refuse recursive aliases and alias bombs by counting, not expanding."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    added = 0  # values that alias uses add to the document

    def size(node: Node, depth: int) -> int:
        nonlocal added
        key = id(node)
        if key in sizes:  # only an alias reaches a composed node twice
            added += sizes[key]
            if added > MAX_EXPANDED_VALUES:
                raise YamlProblems([Problem(
                    file, node.start_mark.line + 1, (),
                    f"aliases expand to more than {MAX_EXPANDED_VALUES} values (an alias bomb?)")])
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
        elif isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                total += size(key_node, depth + 1) + size(value_node, depth + 1)
        active.discard(key)
        sizes[key] = total
        return total

    size(root, 0)


class _Builder:
    """Composed nodes -> plain data, recording the line of every key path."""

    def __init__(self, file: str, lines: dict[Path_, int], text_at: Callable[[Path_], bool]):
        self.file = file
        self.lines = lines
        self.text_at = text_at
        self.problems: list[Problem] = []
        self._scalars = yaml.SafeLoader("")

    def _problem(self, node: Node, path: Path_, message: str) -> None:
        self.problems.append(Problem(self.file, node.start_mark.line + 1, path, message))

    def build(self, node: Node, path: Path_) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        expected = _COLLECTION_TAGS.get(type(node))
        if expected is not None and node.tag != expected:
            # `!!python/object/apply:...`, `!!set`, `!!omap`: nothing a configuration needs.
            self._problem(node, path, f"YAML tag {node.tag!r} is not allowed")
            return None
        if isinstance(node, MappingNode):
            return self._mapping(node, path)
        if isinstance(node, SequenceNode):
            return [self.build(child, path + (i,)) for i, child in enumerate(node.value)]
        return self._scalar(cast(ScalarNode, node), path)  # YAML has no fourth kind of node

    def _scalar(self, node: ScalarNode, path: Path_, *, key: bool = False) -> Any:
        kind = _NUMBER_KINDS.get(node.tag)
        if kind is not None and not key and self.text_at(path):
            return node.value
        try:
            value = self._scalars.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            self._problem(node, path, f"unsupported YAML value: {problem}")
            return None
        except Exception:  # noqa: BLE001 - PyYAML's constructors fail in many ways on odd text
            # int() past 4300 digits, a date like 2001-13-45, `!!int ""`, `!!bool maybe`
            shown = node.value if len(node.value) <= 40 else node.value[:40] + "..."
            self._problem(node, path, f"not a valid {kind or 'value'}: {shown!r}")
            return None
        form = _surprising_form(node.value, integer=node.tag == _INT_TAG) if node.tag in (_INT_TAG, _FLOAT_TAG) else None
        if form is not None:
            self._problem(node, path, f"{node.value!r} is {form} in YAML 1.1 ({value}); write it in decimal, "
                                      "or quote it if text is meant")
            return None
        return value

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
            key = self._scalar(key_node, path, key=True)
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
        """The pairs a `<<` brings in, highest precedence first: each source's own keys,
        then what that source merges itself (nesting is bounded by _check_expansion)."""
        sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
        pairs: list[tuple[Any, Node]] = []
        for source in sources:
            if not isinstance(source, MappingNode):
                self._problem(source, path, "'<<' merge needs a mapping")
                continue
            nested: list[tuple[Any, Node]] = []
            for key_node, sub_value in source.value:
                if key_node.tag == _MERGE_TAG:
                    nested.extend(self._merge_sources(sub_value, path))
                elif isinstance(key_node, ScalarNode):
                    pairs.append((self._scalar(key_node, path, key=True), sub_value))
            pairs.extend(nested)
        return pairs


def _surprising_form(text: str, *, integer: bool) -> str | None:
    """YAML 1.1 number forms that do not mean what a person reads."""
    digits = text.lstrip("+-")
    if ":" in digits:
        return "a base-60 number"
    if not integer:
        return None
    if digits[:2] in ("0x", "0X"):
        return "a hexadecimal number"
    if digits[:2] in ("0b", "0B"):
        return "a binary number"
    if len(digits) > 1 and digits[0] == "0" and digits[1] not in ".eE":
        return "an octal number"
    return None
