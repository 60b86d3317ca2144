"""The sweep report: one self-contained HTML page (plots embedded) and a Markdown summary.

Built from a `SweepAnalysis` alone, so `dpo-sweep report <sweep>` regenerates it from Ray's results
without re-running anything. Both files go beside the analysis and onto the sweep's parent MLflow run.
"""

from __future__ import annotations

import base64
import html
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.analysis import SweepAnalysis

# The order plots appear in, with what each answers.
PLOT_CAPTIONS = {
    "heatmap": "The metric over the beta x learning-rate grid at the common budget, each cell with its generations' "
               "health (nll: how much less plausible the reference finds them than its own); the red box is the "
               "sweet spot, ! a flagged trial.",
    "frontier": "The over-optimisation frontier: each trial's metric against how far it moved from the reference "
                "(sampled KL). Gains bought with a long way travelled are the ones that break; red crosses were "
                "flagged and left out.",
    "interaction": "One line per beta across learning rates: crossing or diverging lines are an interaction. "
                   "Grey rings: stopped early; red crosses: reward-hacking flag.",
    "interaction_means": "Means and standard errors over seeds, with the interaction's ANOVA p-value.",
    "main_effects": "Each knob's marginal mean (± standard error): how much the metric moves with it on its own.",
    "parallel_coordinates": "Every trial across every swept knob, coloured by the metric.",
    "learning_curves": "The metric at every report; dashed: stopped early; red: reward-hacking flag.",
}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _table_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    return list(table.columns), [[_fmt(v) for v in row] for row in table.itertuples(index=False)]


def _anova_rows(analysis: SweepAnalysis) -> list[list[str]]:
    a = analysis.anova
    if a is None or a.method is None:
        return []
    return [[name, f"{t.f:.3g}", f"{t.p:.3g}", f"{t.df:g}", f"{t.partial_eta_sq:.2f}"] for name, t in a.terms.items()]


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in rows)])


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _sections(analysis: SweepAnalysis) -> list[tuple[str, str]]:
    """(title, plain text) of the report's prose, shared by both formats."""
    out = [("Recommendation", analysis.recommendation or analysis.sweet_spot_line), ("Trials", analysis.trials_line)]
    if analysis.anova is not None:
        out.append(("Interaction (ANOVA)", analysis.anova.describe()))
    if analysis.sensitivity_line:
        out.append(("Sensitivity", "Knobs ranked by the share of the metric's variation each explains (eta^2): "
                    + ", ".join(f"{k} {v:.2f}" for k, v in analysis.sensitivity)))
    notes = [analysis.sweet_spot_line, analysis.best_line, *analysis.findings]
    out.append(("Findings", "\n".join(n for n in notes if n)))
    if analysis.cost:
        out.append(("Cost", analysis.cost.describe()))
    if analysis.compute:
        out.append(("Compute", (f"The figures came from trials computed in {analysis.compute}; the same sweep on a "
                               "device with another compute dtype can rank the top cells differently.")))
    return out


EXAMPLES = 4  # held-out prompts shown side by side


def _completion_rows(analysis: SweepAnalysis) -> tuple[list[str], list[list[str]]]:
    """Prompt | reference | each shown trial's completion, for the first EXAMPLES prompts."""
    if not analysis.completions:
        return [], []
    header = ["prompt", "reference"] + [f"{label} ({trial}, step {rows[0]['step']})"
                                        for label, trial, rows in analysis.completions]
    first = analysis.completions[0][2]
    rows = []
    for i in range(min(EXAMPLES, len(first))):
        rows.append([first[i]["prompt"][-120:], first[i]["reference"]]
                    + [r[i]["policy"] if i < len(r) else "" for _, _, r in analysis.completions])
    return header, rows


def write_report(analysis: SweepAnalysis, out_dir: Path, title: str, context: dict[str, str]) -> tuple[Path, Path]:
    """report.html and report.md in `out_dir`; `context`: label -> value lines (MLflow run, paths)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    header, rows = _table_rows(analysis.table)
    anova_rows = _anova_rows(analysis)
    anova_header = ["term", "F", "p", "df", "partial eta^2"]
    stamp = time.strftime("%Y-%m-%d %H:%M")
    plots = [(name, analysis.plots[name]) for name in PLOT_CAPTIONS if analysis.plots.get(name)]

    md = [f"# {title}", "", f"Metric: `{analysis.metric}` ({analysis.mode}); generated {stamp}.", ""]
    for heading, text in _sections(analysis):
        md += [f"## {heading}", "", text.replace("\n", "\n\n"), ""]
        if heading == "Interaction (ANOVA)" and anova_rows:
            md += [_markdown_table(anova_header, anova_rows), ""]
    gen_header, gen_rows = _completion_rows(analysis)
    if gen_rows:
        md += ["## What the trials generate", "", _markdown_table(gen_header, [[c.replace("\n", " ") for c in r]
                                                                          for r in gen_rows]), ""]
    md += ["## Plots", ""]
    md += [f"![{name}]({path.name})\n\n{PLOT_CAPTIONS[name]}\n" for name, path in plots]
    md += ["## Results", "", _markdown_table(header, rows), ""]
    md += ["## Where things are", "", *(f"- {k}: `{v}`" for k, v in context.items()), ""]
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(md))

    parts = [f"<h1>{html.escape(title)}</h1>",
             (f"<p class='meta'>Metric <code>{html.escape(analysis.metric)}</code> ({analysis.mode}); generated "
             f"{stamp}.</p>")]
    for heading, text in _sections(analysis):
        paras = "".join(f"<p>{html.escape(p)}</p>" for p in text.splitlines() if p.strip())
        parts.append(f"<h2>{html.escape(heading)}</h2>{paras}")
        if heading == "Interaction (ANOVA)" and anova_rows:
            parts.append(_html_table(anova_header, anova_rows))
    if gen_rows:
        parts += ["<h2>What the trials generate</h2>", ("<p>Greedy completions of held-out prompts at the trials' "
                  "best checkpoints, beside the reference model's (MLflow keeps every report's in each trial's "
                  "completions.json table).</p>"), _html_table(gen_header, gen_rows)]
    parts.append("<h2>Plots</h2>")
    for name, path in plots:
        data = base64.b64encode(Path(path).read_bytes()).decode()
        parts.append(f"<figure><img alt='{name}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(PLOT_CAPTIONS[name])}</figcaption></figure>")
    parts += ["<h2>Results</h2>", _html_table(header, rows), "<h2>Where things are</h2><ul>"]
    parts += [f"<li>{html.escape(k)}: <code>{html.escape(str(v))}</code></li>" for k, v in context.items()]
    parts.append("</ul>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;"
             "text-align:right;white-space:pre-wrap}th{background:#f3f3f3}img{max-width:100%}figure{margin:1.5em 0}"
             "figcaption{color:#555;font-size:13px}.meta{color:#666}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    html_path = out_dir / "report.html"
    html_path.write_text(page)
    return html_path, md_path
