"""Rewrite one generated block of a Markdown file: the lines between '<!-- NAME:begin -->' and '<!-- NAME:end -->'.
The benchmarks and the GPU acceptance write their figures into the README this way, never by hand."""

from __future__ import annotations

from pathlib import Path


def replace_readme_block(path: Path, name: str, text: str) -> None:
    """Put `text` between the '<!-- name:begin -->' and '<!-- name:end -->' lines of a Markdown file."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    doc = path.read_text()
    if begin not in doc or end not in doc:
        raise SystemExit(f"{path} has no {begin} ... {end} block to rewrite")
    head, rest = doc.split(begin, 1)
    path.write_text(f"{head}{begin}\n{text.rstrip()}\n{end}{rest.split(end, 1)[1]}")
