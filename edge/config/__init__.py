"""Typed configuration: YAML files validated into pydantic models.

`load_config(path, Model)` is the one way a config file is read.  Any problem — unreadable
file, bad YAML, unknown key, wrong type, value out of range — raises `edge.errors.ConfigError`
naming the file, the key path (`buffer.max_bytes`, `mqtt.listeners[1].port`) and the reason.

Secrets need not live in files: after parsing, environment variables override values.  The
variable for a key path is `FIELDLINK_` + the path upper-cased with `__` between levels, e.g.
`FIELDLINK_UPLINK__SECRET` overrides `uplink.secret`.  Only keys a model marks as secret
(`json_schema_extra={"secret": True}` via `SecretField`) are overridable this way, so the
environment cannot silently change behaviour.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

from edge.errors import ConfigError

M = TypeVar("M", bound=pydantic.BaseModel)

ENV_PREFIX = "FIELDLINK_"


class StrictModel(pydantic.BaseModel):
    """Base for config sections: unknown keys are errors (a typo must not be ignored)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


def SecretField(default: Any = None, **kwargs: Any) -> Any:  # noqa: N802 - reads like Field
    """A field whose value may come from the environment and is masked in logs."""
    return pydantic.Field(default, json_schema_extra={"secret": True}, **kwargs)


def _path_str(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _secret_paths(model: type[pydantic.BaseModel], prefix: tuple[str, ...] = ()
                  ) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("secret"):
            paths.append(prefix + (name,))
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
            paths += _secret_paths(annotation, prefix + (name,))
    return paths


def _apply_env(data: dict[str, Any], model: type[pydantic.BaseModel],
               environ: Mapping[str, str]) -> dict[str, Any]:
    for path in _secret_paths(model):
        var = ENV_PREFIX + "__".join(p.upper() for p in path)
        if var not in environ:
            continue
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = environ[var]
    return data


def parse_config(data: Any, model: type[M], *, file: str = "<config>",
                 environ: Mapping[str, str] | None = None) -> M:
    """Validate already-parsed YAML data.  Raises ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(file, [("", f"expected a mapping at the top level, got "
                                      f"{type(data).__name__}")])
    data = _apply_env(dict(data), model, os.environ if environ is None else environ)
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling against the commented example config)"
            problems.append((_path_str(tuple(err["loc"])), msg))
        raise ConfigError(file, problems) from None


def load_config(path: str | os.PathLike[str], model: type[M], *,
                environ: Mapping[str, str] | None = None) -> M:
    """Read and validate a YAML config file.  Raises ConfigError naming file/key/reason."""
    file = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(file, [("", f"cannot read file: {exc.strerror or exc}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(file, [("", f"invalid YAML at {where}: {problem}")]) from None
    return parse_config(data, model, file=file, environ=environ)
