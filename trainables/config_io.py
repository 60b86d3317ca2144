"""A config as the user writes it: YAML files (YAML 1.2 floats), `--set key=value` overrides, and pydantic's
errors turned into one line per problem, each naming the field the way it is spelled in YAML and, for a
misspelled key, the closest valid one.

    python -c "from trainables.config_io import load_trial_spec; print(load_trial_spec(None, ['dpo.beta=0.2']).dpo)"
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from trainables.config import ConfigError, TrialSpec

# Names people type for fields that are spelled otherwise here.
ALIASES = {"lr": "learning_rate", "epochs": "num_train_epochs", "grad_accum": "gradient_accumulation_steps",
           "accumulation": "gradient_accumulation_steps", "batch_size": "per_device_train_batch_size",
           "rank": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "model": "name_or_path",
           "path": "name_or_path", "dataset": "source", "smoothing": "label_smoothing", "loss": "loss_type"}


def _field_name(loc: tuple[Any, ...]) -> str:
    """A location as the user writes it in YAML: validator functions and union tags ('~grid') left out."""
    return ".".join(str(p) for p in loc if not str(p).startswith(("function-", "~"))) or "(top level)"


def _model_at(root: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    model = root
    for part in path:
        info = model.model_fields.get(str(part))
        ann = getattr(info, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def closest_field(root: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    """The valid key the user most likely meant at `loc`, or None."""
    model = _model_at(root, loc[:-1])
    if model is None:
        return None
    wrong, valid = str(loc[-1]), list(model.model_fields)
    return closest_name(wrong, valid)


def closest_name(wrong: str, valid: list[str], cutoff: float = 0.7) -> str | None:
    """An alias, a unique name the key abbreviates ('grace' -> 'grace_period'), or a close spelling."""
    if ALIASES.get(wrong) in valid:
        return ALIASES[wrong]
    prefixed = [v for v in valid if len(wrong) >= 3 and v.split(".")[-1].startswith(wrong.split(".")[-1])]
    if len(prefixed) == 1:
        return prefixed[0]
    match = difflib.get_close_matches(wrong, valid, n=1, cutoff=cutoff)
    return match[0] if match else None


def format_validation_error(err: ValidationError, root: type[BaseModel] | None = None) -> list[str]:
    """Turn pydantic's errors into 'field: message, got value' lines."""
    problems = []
    for e in err.errors():
        name = _field_name(e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            guess = closest_field(root, e["loc"]) if root else None
            hint = f"did you mean '{guess}'?" if guess else "remove it or check its spelling"
            problems.append(f"{name}: unknown key; {hint}")
        elif e["type"] == "missing":
            problems.append(f"{name}: required")
        elif isinstance(e.get("input"), dict):  # a model's own check: its message names the fields
            problems.append(msg if name == "(top level)" else f"{name}: {msg}")
        elif e["type"] == "literal_error" and isinstance(e.get("input"), str):
            guess = closest_name(e["input"], re.findall(r"'([^']*)'", e["ctx"]["expected"]), cutoff=0.6)
            hint = f"; did you mean '{guess}'?" if guess else ""
            problems.append(f"{name}: {msg}, got {e['input']!r}{hint}")
        else:
            problems.append(f"{name}: {msg}, got {e.get('input')!r}")
    return problems


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with YAML 1.2's floats: `5e-4` and `1E3` are numbers, not the strings YAML 1.1 makes
    of exponents without a dot (a learning-rate grid written [5e-4, 1e-3] would otherwise sweep text)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.VERBOSE),
    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """User YAML (a sweep or trial file, a --set value) as data, YAML 1.2 floats included."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects


def parse_override(text: str) -> tuple[list[str], Any]:
    """'dpo.beta=0.2' -> (['dpo', 'beta'], 0.2); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError([f"--set {text!r}: expected key=value, e.g. --set dpo.beta=0.2"])
    key, _, raw = text.partition("=")
    if not key.strip():
        raise ConfigError([f"--set {text!r}: empty key"])
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def set_path(raw: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    """A copy of `raw` with raw[path[0]][path[1]]... = value (mappings on the way are copied, not shared)."""
    out = dict(raw)
    node = out
    for part in path[:-1]:
        child = node.get(part)
        node[part] = child = dict(child) if isinstance(child, dict) else {}
        node = child
    node[path[-1]] = value
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = dict(raw)
    for text in overrides:
        path, value = parse_override(text)
        out = set_path(out, path, value)
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    if not str(path).strip():
        raise ConfigError(["config file: the path is empty; give a YAML file, or leave it out to use the defaults"])
    p = Path(path)
    if p.is_dir():
        raise ConfigError([f"config file {str(p)!r} is a directory; give a YAML file inside it"])
    if not p.exists():
        raise ConfigError([f"config file {str(p)!r} does not exist"])
    if not p.is_file():
        raise ConfigError([f"config file {str(p)!r} is not a regular file (a device, pipe or socket); give a YAML file"])
    try:
        raw = load_yaml(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}"], source=str(p)) from None
    if raw is None:
        raise ConfigError([("the file is empty (no keys); add the settings to change, or leave the file out to use "
                           "the defaults")], source=str(p))
    if not isinstance(raw, dict):
        raise ConfigError([f"top level must be a mapping of keys, got {type(raw).__name__}"], source=str(p))
    return raw


def load_trial_spec(path: str | Path | None = None, overrides: list[str] = ()) -> TrialSpec:
    """YAML file (optional) + `--set` overrides -> validated TrialSpec, or ConfigError listing every problem."""
    raw = read_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, list(overrides))
    return validate_trial_spec(raw, source=str(path) if path is not None else None)


def validate_trial_spec(raw: dict[str, Any], source: str | None = None) -> TrialSpec:
    try:
        return TrialSpec.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, TrialSpec), source=source) from None
