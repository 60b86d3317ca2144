"""The keys a sweep may vary, and a trial's spec built from them.

A key is a DPO knob by its short name (`beta`) or any trial field by its dotted path (`lora.r`, `dpo.beta`);
after preflight every key goes by its canonical name (`canonical_param_key`), and `trial_spec` is the one
place a trial's spec is made from the sweep's base config and its swept values.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from trainables.config import DPOSettings, TrialSpec
from trainables.config_io import closest_name, set_path


def _leaf_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    paths = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            paths += _leaf_paths(ann, f"{prefix}{name}.")
        else:
            paths.append(prefix + name)
    return paths


def param_keys() -> list[str]:
    """Keys a search space may use: DPO knobs by short name, any trial field by dotted path."""
    return list(DPOSettings.model_fields) + _leaf_paths(TrialSpec)


def resolve_param_key(key: str) -> str | None:
    """'beta' -> 'dpo.beta'; 'lora.r' -> 'lora.r'; unknown -> None."""
    if key in DPOSettings.model_fields:
        return f"dpo.{key}"
    return key if key in _leaf_paths(TrialSpec) else None


def closest_param_key(key: str) -> str | None:
    # Dotted paths are long: a looser spelling match than for one field name.
    return closest_name(key, param_keys(), cutoff=0.6)


def canonical_param_key(key: str) -> str | None:
    """The one name a swept key goes by everywhere after preflight (Ray's configs, the results table, the
    plots, MLflow): a DPO knob by its short name ('dpo.beta' -> 'beta'), any other field by its dotted path
    ('lora.r'); unknown -> None."""
    path = resolve_param_key(key)
    if path is None:
        return None
    return path.removeprefix("dpo.") if path.startswith("dpo.") else path


def canonical_params(params: dict[str, Any]) -> dict[str, Any]:
    """Swept values under their canonical keys (a key that names no field is kept as it is)."""
    return {(canonical_param_key(k) or k): v for k, v in params.items()}


def spec_with_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The base trial config with each swept key set (keys as in the search space)."""
    out = dict(base)
    for key, value in params.items():
        out = set_path(out, (resolve_param_key(key) or key).split("."), value)
    return out


def trial_spec(base: dict[str, Any], params: dict[str, Any], **fields: Any) -> TrialSpec:
    """The one place a trial's spec is built: the sweep's base trial config, the trial's swept values, and any
    top-level fields set (output_dir)."""
    return TrialSpec.model_validate({**spec_with_params(base, params), **fields})
