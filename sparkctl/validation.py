"""Shared pieces for validating YAML-backed models: field types with clear
messages, and the translation of pydantic errors into located, one-line problems."""

from __future__ import annotations

import difflib
import ipaddress
import re
from typing import Annotated, Any, Callable, Mapping, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, ValidationError

from sparkctl.errors import InputError
from sparkctl.strictyaml import LoadedYaml, Path_, Problem, YamlProblems, load_file

SHELL_METACHARACTERS = set("`$&|;<>()[]{}*?!~#'\"\\")
# Used with fullmatch only: `$` after re.match also matches before a trailing newline.
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*\.?")
_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_IFNAME = re.compile(r"[A-Za-z0-9_.:-]{1,15}")


def _no_shell_chars(value: str, what: str) -> None:
    if any(ch.isspace() for ch in value):
        raise ValueError(f"{what} must not contain whitespace: {value!r}")
    bad = sorted({ch for ch in value if ch in SHELL_METACHARACTERS})
    if bad:
        raise ValueError(f"{what} must not contain shell metacharacters {''.join(bad)!r}: {value!r}")


def _check_host(value: str) -> str:
    _no_shell_chars(value, "host")
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(value):
        raise ValueError(f"not a hostname or IP address: {value!r}")
    return value


def _check_user(value: str) -> str:
    _no_shell_chars(value, "user")
    if not _USER.fullmatch(value):
        raise ValueError(f"not a valid user name: {value!r}")
    return value


def _check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid name: use letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def _check_ipv4(value: str) -> str:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"not an IPv4 address: {value!r}") from None
    return value


def _check_ifname(value: str) -> str:
    if not _IFNAME.fullmatch(value):
        raise ValueError(f"not a network interface name: {value!r}")
    return value


def _check_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _env_value(value: Any) -> Any:
    # YAML turns `NCCL_IB_DISABLE: 0` into an int; an environment only holds text.
    # Booleans are refused: `yes`/`on` would silently become "True".
    if isinstance(value, bool):
        raise ValueError("booleans are ambiguous in the environment; quote the value, e.g. \"1\" or \"true\"")
    if isinstance(value, (int, float)):
        return str(value)
    return value


def _check_env(env: dict[str, str]) -> dict[str, str]:
    for key in env:
        if not _ENV_NAME.fullmatch(key):
            raise ValueError(f"{key!r} is not a valid environment variable name")
    return env


Host = Annotated[str, AfterValidator(_check_host)]
User = Annotated[str, AfterValidator(_check_user)]
Name = Annotated[str, AfterValidator(_check_name)]
IPv4 = Annotated[str, AfterValidator(_check_ipv4)]
IfName = Annotated[str, AfterValidator(_check_ifname)]
Text = Annotated[str, AfterValidator(_check_text)]
Port = Annotated[int, Field(ge=1, le=65535)]
EnvValue = Annotated[str, BeforeValidator(_env_value), AfterValidator(_check_text)]
def _check_env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise ValueError(f"invalid value {value!r}")
    return value


EnvName = Annotated[str, AfterValidator(_check_env_name)]
Env = Annotated[dict[str, EnvValue], AfterValidator(_check_env)]

M = TypeVar("M", bound=BaseModel)


def host_identity(host: str) -> str:
    """One spelling per host, to find duplicates: `::1` and `0:0:0:0:0:0:0:1` are one
    address, `::ffff:10.0.0.1` is 10.0.0.1, and names ignore case and a final dot."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host.lower().rstrip(".")
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def _no_text(loc: Path_) -> bool:
    return False


def load_yaml_or_raise(path: str, text_at: Callable[[Path_], bool] = _no_text) -> LoadedYaml:
    try:
        return load_file(path, text_at=text_at)
    except YamlProblems as exc:
        raise input_error(path, exc.problems) from None


def load_strict(path: str, model: type[M], *, what: str, semantic: Callable[[M, LoadedYaml], list[Problem]],
                text_at: Callable[[Path_], bool] = _no_text) -> M:
    """Read a YAML file into `model`: syntax, types, unknown keys, then the
    file's own cross-key rules; every problem located, all reported at once.
    `text_at(key path)`: where a plain scalar keeps its text (environment values)."""
    loaded = load_yaml_or_raise(path, text_at)
    parsed, problems = validate_model(model, loaded, what=what)
    if parsed is not None:
        problems = semantic(parsed, loaded)
    if problems:
        raise input_error(path, problems)
    assert parsed is not None
    return parsed


def input_error(path: str, problems: list[Problem]) -> InputError:
    lines = [p.render() for p in problems]
    noun = "problem" if len(lines) == 1 else "problems"
    return InputError(f"{path}: {len(lines)} {noun}", details=lines)


def validate_model(model: type[M], loaded: LoadedYaml, *, what: str) -> tuple[M | None, list[Problem]]:
    """Validate `loaded.data` against `model`; return the model or located problems."""
    if not isinstance(loaded.data, dict):
        found = "an empty file" if loaded.data is None else f"a {type(loaded.data).__name__}"
        return None, [loaded.problem((), f"the top level of a {what} must be a mapping of keys, found {found}")]
    try:
        return model.model_validate(loaded.data), []
    except ValidationError as exc:
        return None, [_problem_from(error, model, loaded) for error in exc.errors()]


def _problem_from(error: Mapping[str, Any], model: type[BaseModel], loaded: LoadedYaml) -> Problem:
    loc = _clean_loc(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        key = loc[-1] if loc else "?"
        known = _fields_at(model, loc[:-1])
        message = f"unknown key {key!r}"
        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        elif known:
            message += f"; allowed keys: {', '.join(sorted(known))}"
        return loaded.problem(loc, message)
    if kind == "missing":
        return loaded.problem(loc, f"missing required key {loc[-1]!r}" if loc else "missing value")
    return loaded.problem(loc, _friendly(error))


def _clean_loc(loc: tuple) -> tuple:
    # pydantic adds pseudo-steps for Annotated/union validators such as
    # 'function-after[...]' or 'str'; they are not keys the user wrote.
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in {"str", "int", "float"})))


def _friendly(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind in {"int_type", "int_parsing", "int_from_float"}:
        return f"expected a whole number, got {shown}"
    if kind in {"float_type", "float_parsing"}:
        return f"expected a number, got {shown}"
    if kind in {"string_type"}:
        return f"expected text, got {shown}"
    if kind in {"bool_type", "bool_parsing"}:
        return f"expected true or false, got {shown}"
    if kind in {"list_type"}:
        return f"expected a list, got {shown}"
    if kind in {"dict_type", "model_type", "model_attributes_type"}:
        return f"expected a mapping, got {shown}"
    if kind in {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}:
        return f"{error['msg'].lower()}, got {shown}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '?')}, got {shown}"
    if kind == "string_pattern_mismatch":
        return f"invalid value {shown}"
    if kind in {"too_short", "too_long"}:
        return error["msg"]
    return f"{error['msg']} (got {shown})"


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (sub)model that `loc` points into, for 'did you mean'."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(part)
        if field is None:
            return []
        current = _inner_model(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None
