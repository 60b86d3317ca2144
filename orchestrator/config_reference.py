"""docs/config.md, the config reference, written from the pydantic models' own fields and descriptions.

    .venv/bin/python -m orchestrator.config_reference > docs/config.md

tests/test_config.py fails when the page and the code disagree, so a new field or a changed default
reaches the reference by running the command above.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from orchestrator.config import SweepConfig

HEADER = """# Config reference

Every field of a sweep YAML (`dpo-sweep run my_sweep.yaml`) with its default. The `trial:` section is a
trial config (`dpo-sweep trial my_trial.yaml` takes it at the top level); a swept key overrides it per
trial, by its short name (`beta`, `learning_rate`, ...) or its dotted path below `trial.` (`lora.r`).
Written by `python -m orchestrator.config_reference` from the code's own field descriptions; a test
fails when it is out of date.
"""


def _default(field) -> str:
    if field.default is PydanticUndefined:
        value = field.default_factory() if field.default_factory is not None else None
        if value is None:
            return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return ""
    return f"`{json.dumps(value, default=str)}`"


def _section(model: type[BaseModel], path: str, out: list[str], level: int) -> None:
    rows, subs = [], []
    for name, field in model.model_fields.items():
        ann = field.annotation
        key = f"{path}{name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            subs.append((ann, key, field.description or ""))
            continue
        text = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{key}` | {_default(field)} | {text} |")
    if rows:
        out += ["| field | default | what it is |", "|---|---|---|", *rows, ""]
    for sub, key, text in subs:
        out += [f"{'#' * level} `{key}`", ""]
        if text:
            out += [text, ""]
        _section(sub, f"{key}.", out, min(level + 1, 4))


def render() -> str:
    out: list[str] = [HEADER]
    _section(SweepConfig, "", out, 2)
    return "\n".join(out).rstrip() + "\n"


def main(argv: Any = None) -> None:
    print(render(), end="")


if __name__ == "__main__":
    main()
