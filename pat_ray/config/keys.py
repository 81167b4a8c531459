"""A config's dotted keys (``training.epochs``): set from the command line, and described.

Overrides (``key.path=value``) are merged into the YAML before validation. Values are YAML
(``training.epochs=3``, ``oracle.seeds=[0,1]``, ``tracking.mlflow=false``), so every error is the
validator's, naming the key; a key that names no field is refused before that, with the closest
valid key suggested. ``start.kind=<kind>`` switches the start policy to that kind's defaults
(keeping ``snapshot_every``); ``start.<field>=...`` after it sets one of its fields.
``model.target=...`` clears ``model.name`` (and the other way round; ``data`` likewise).
``describe`` reads each field's type, default and description from the pydantic schema, for
``pat-ray config``.
"""

from __future__ import annotations

import difflib
import functools
import operator
import types
import typing
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel, Field, TypeAdapter

from pat_ray.config import Config
from pat_ray.config.start import BaseStartPolicy, start_policy_classes
from pat_ray.errors import ConfigError

SOURCE = "override"
SOURCES = {
    "model.name": "model.target",
    "model.target": "model.name",
    "data.name": "data.target",
    "data.target": "data.name",
}


def is_override(text: str) -> bool:
    """``a.b=c`` (an override), not a path to a config file."""
    key = text.split("=", 1)[0]
    return "=" in text and bool(key) and "/" not in key and not key.endswith((".yaml", ".yml"))


def apply_overrides(data: dict[str, Any] | None, overrides: list[str]) -> dict[str, Any]:
    """``data`` (a parsed config file, or None for the default pipeline) with ``overrides`` set."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(SOURCE, ["the config file is not a mapping of sections, so keys cannot be set in it"])
    merged: dict[str, Any] = dict(data or {})
    known = field_paths()
    errors = []
    for text in overrides:
        key, sep, raw = text.partition("=")
        if not sep or not key:
            errors.append(f"{text!r} is not key.path=value")
            continue
        if not _known(key, known):
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            errors.append(f"{key}: no such key" + (f"; did you mean {close[0]}?" if close else ""))
            continue
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            errors.append(f"{key}: {raw!r} is not a YAML value ({err.__class__.__name__})")
            continue
        if key == "start.kind":
            merged["start"] = _switched_policy(merged.get("start"), value)
        else:
            _set(merged, key.split("."), value)
            if key in SOURCES:  # a model (or data) comes from a name or a target: setting one clears the other
                _set(merged, SOURCES[key].split("."), None)
    if errors:
        raise ConfigError(SOURCE, errors)
    return merged


def _switched_policy(start: Any, kind: Any) -> Any:
    """``start.kind=<kind>``: the start section as that policy's defaults (a config group, as
    Hydra's), keeping what every policy shares (``snapshot_every``); the same kind changes nothing."""
    current = start if isinstance(start, dict) else {}
    if current.get("kind", Config.model_fields["start"].get_default().kind) == kind:
        return {**current, "kind": kind}
    shared = set(BaseStartPolicy.model_fields) - {"kind"}
    return {"kind": kind, **{key: value for key, value in current.items() if key in shared}}


@dataclass(frozen=True)
class KeyInfo:
    key: str
    type: str
    default: Any
    description: str
    free_form: bool  # a plugin's params: any key below it is the plugin's to check
    section: bool  # a section of other keys


def field_paths() -> dict[str, bool]:
    """Every dotted key a config has, mapped to whether it holds free-form keys below it
    (a plugin's ``params``); the start policies' fields are all under ``start``."""
    return {info.key: info.free_form for info in keys()}


def config_schema() -> dict[str, Any]:
    """The JSON schema of a pipeline config, editors' completion included: ``start`` is the
    union of every start policy on ``kind`` (the built-ins and the plugins installed here)."""
    schema = Config.model_json_schema()
    union: Any = functools.reduce(operator.or_, start_policy_classes().values())  # EPIStart | ... | a plugin's
    union = typing.Annotated[union, Field(discriminator="kind")]
    start = TypeAdapter(union).json_schema(ref_template="#/$defs/{model}")
    schema.setdefault("$defs", {}).update(start.pop("$defs", {}))
    described = schema["properties"]["start"]
    schema["properties"]["start"] = {**start, "description": described.get("description", "")}
    return schema


def keys(section: str | None = None) -> list[KeyInfo]:
    """Every dotted key of a config (or of one top-level ``section``), sections first, in the
    schema's order. Only ``start`` reads the plugins (their start policies' fields), so the other
    sections are described without importing them (or torch)."""
    found: dict[str, KeyInfo] = {}
    _walk(Config, "", found, section)
    return list(found.values())


def describe(prefix: str | None = None) -> list[KeyInfo]:
    """The keys at and below ``prefix`` (all when None); ConfigError suggesting a close key."""
    first = (prefix or "").split(".")[0]
    known = keys(first if first in Config.model_fields else None)
    chosen = [info for info in known if prefix is None or info.key == prefix or info.key.startswith(prefix + ".")]
    if not chosen:
        close = difflib.get_close_matches(prefix or "", [info.key for info in keys()], n=1, cutoff=0.6)
        raise ConfigError("config", [f"{prefix}: no such key" + (f"; did you mean {close[0]}?" if close else "")])
    return chosen


def _walk(model: type[BaseModel], prefix: str, found: dict[str, KeyInfo], only: str | None = None) -> None:
    for name, field in model.model_fields.items():
        if only is not None and name != only:
            continue
        key = f"{prefix}{name}"
        models = [t for t in _types(field.annotation) if isinstance(t, type) and issubclass(t, BaseModel)]
        if BaseStartPolicy in models:  # ``start``: every policy's keys, plugins' included
            models = list(start_policy_classes().values())
        free_form = not models and any(typing.get_origin(t) is dict for t in _types(field.annotation))
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        kind = _type_name(field.annotation)
        if key in found:  # a field the start policies share: its first default and description, every type
            seen = found[key]
            kinds = " | ".join(dict.fromkeys([*seen.type.split(" | "), *kind.split(" | ")]))
            found[key] = KeyInfo(key, kinds, seen.default, seen.description, seen.free_form, seen.section)
        else:
            found[key] = KeyInfo(key, kind, default, field.description or "", free_form, bool(models))
        for sub in models:
            _walk(sub, f"{key}.", found)


def _type_name(annotation: Any) -> str:
    names = []
    for t in _types(annotation):
        if typing.get_origin(t) is typing.Literal:
            names.append(" | ".join(repr(v) for v in typing.get_args(t)))
        elif isinstance(t, type) and issubclass(t, BaseModel):
            names.append("section")
        else:
            names.append(getattr(t, "__name__", None) or str(t).replace("typing.", ""))
    return " | ".join(dict.fromkeys(names))


def _types(annotation: Any) -> list[Any]:
    """The types a field may hold (the members of a union, the model inside Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _types(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in _types(arg)]
    return [annotation]


def _known(key: str, known: dict[str, bool]) -> bool:
    if key in known:
        return True
    parts = key.split(".")
    return any(known.get(".".join(parts[:i])) for i in range(1, len(parts)))


def _set(data: dict[str, Any], path: list[str], value: Any) -> None:
    head, *rest = path
    if not rest:
        data[head] = value
        return
    inner = data.get(head)
    data[head] = inner = dict(inner) if isinstance(inner, dict) else {}
    _set(inner, rest, value)
