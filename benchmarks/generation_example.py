"""The generation evaluation on a finished sweep: every trial's last report beside its answers, and what the
evaluation cost. Prints Markdown; --readme writes it into docs/trial.md's generation_example block.

    .venv/bin/dpo-sweep run smollm2 --set storage.path=/tmp/smol       # the real-model example sweep
    .venv/bin/python benchmarks/generation_example.py /tmp/smol/<sweep> [--readme docs/trial.md]

Reads Ray's per-trial progress.csv (every report's metrics, `time_total_s`) and each trial's last
completions.json (trainables.generation) from the sweep's experiment directory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from readme_block import replace_readme_block

COLUMNS = [("eval_rewards_accuracies", "pair acc."), ("answer_exact_rate", "answers (probes)"),
           ("eval_reward_exact_answer", "exact (gen.)"), ("eval_win_rate_exact_answer", "win rate"),
           ("gen_truncation_rate", "truncated"), ("gen_length_ratio", "length ratio"),
           ("gen_repeat_ngram_rate", "repeats"), ("gen_ref_nll_per_token", "ref NLL/token"), ("gen_kl", "KL")]


def trials(experiment: Path) -> list[dict]:
    out = []
    for progress in sorted(experiment.glob("*/progress.csv")):
        h = pd.read_csv(progress)
        if not len(h) or "gen_seconds" not in h:
            continue
        h = h.drop_duplicates("step", keep="last").sort_values("step")
        last = h.iloc[-1]
        params = json.loads((progress.parent / "params.json").read_text())
        tables = sorted(progress.parent.glob("checkpoint_*/completions.json"))
        out.append({"dir": progress.parent, "params": params, "last": last, "history": h,
                    "completions": json.loads(tables[-1].read_text()) if tables else []})
    return out


def markdown(experiment: Path) -> str:
    rows = trials(experiment)
    if not rows:
        raise SystemExit(f"{experiment}: no trial with generation metrics (progress.csv with gen_seconds)")
    ref = rows[0]["last"]
    lines = [(f"Measured on the real-model example sweep (`dpo-sweep run smollm2`: SmolLM2-135M-Instruct, NF4 + LoRA, "
             f"the arithmetic chat task, 16 held-out questions), each trial's last report. The reference model: "
             f"truncated {ref['ref_gen_truncation_rate']:.2f}, {ref['ref_gen_length_tokens']:.1f} tokens, repeats "
             f"{ref['ref_gen_repeat_ngram_rate']:.2f}, ref NLL/token {ref['ref_gen_ref_nll_per_token']:.2f}, exact "
             f"answers {ref.get('ref_eval_reward_exact_answer', float('nan')):.2f}."), ""]
    header = ["beta", "learning rate", "step", *(label for _, label in COLUMNS)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in sorted(rows, key=lambda r: (r["params"].get("learning_rate", 0), r["params"].get("beta", 0))):
        last = r["last"]
        cells = [f"{r['params'].get('beta', '')}", f"{r['params'].get('learning_rate', ''):g}", f"{int(last['step'])}"]
        cells += [f"{last[c]:.2f}" if c in last and pd.notna(last[c]) else "–" for c, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    gen = sum(float(r["history"]["gen_seconds"].sum()) for r in rows)
    total = sum(float(r["last"]["time_total_s"]) for r in rows)
    per_report = pd.concat([r["history"]["gen_seconds"] for r in rows]).median()
    lines += ["", (f"**Cost**: the generation evaluation took {gen:.0f} s of the trials' {total:.0f} s "
              f"({gen / total:.1%}; median {per_report:.1f} s a report: greedy and sampled completions of 16 "
              "prompts, three scoring passes, the reward) on this 2-core CPU."), ""]
    worst = max(rows, key=lambda r: float(r["last"]["gen_ref_nll_per_token"]))
    best = max(rows, key=lambda r: float(r["last"].get("eval_reward_exact_answer", 0) or 0))
    for title, r in (("highest exact rate", best), ("highest reference NLL", worst)):
        if not r["completions"]:
            continue
        p = r["params"]
        lines += [f"{title} (beta {p.get('beta')}, lr {p.get('learning_rate'):g}), first three held-out questions:", "",
                  "| question | reference | policy |", "|---|---|---|"]
        for c in r["completions"][:3]:
            q = c["prompt"].split("<|im_start|>user", 1)[-1].split("<|im_end|>", 1)[0].strip()
            lines.append(f"| {q} | {c['reference'].strip()!r} | {c['policy'].strip()!r} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", type=Path, help="the sweep's experiment directory (Ray results)")
    ap.add_argument("--readme", type=Path, help="rewrite this file's generation_example block")
    args = ap.parse_args()
    text = markdown(args.experiment)
    print(text)
    if args.readme:
        replace_readme_block(args.readme, "generation_example", text)


if __name__ == "__main__":
    main()
