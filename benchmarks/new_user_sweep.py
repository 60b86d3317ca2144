"""A new user's sweep, checked against what its trials generate: preference data the project has never seen,
a minimal YAML with every default, no reward function - then every trial's answers scored by a checker the sweep
never saw.

    .venv/bin/python benchmarks/new_user_sweep.py                    # write the data and YAML, run, check
    .venv/bin/python benchmarks/new_user_sweep.py --check-only DIR   # check a finished sweep again

The data: chat pairs of two-number additions in words of their own ("Add 34 and 19 - what do you get?", chosen
"34 and 19 make 53.", rejected the same with a carry dropped or an off-by-one), not the bundled arithmetic task's
phrasing. The sweep: smollm2-135m, beta {0.1, 0.5} x learning_rate {1e-4, 1e-3, 3e-3}, everything else at its
default (ranked by held-out pair accuracy, synchronous halving, the health rule as flag and guard).

The check: each trial's last checkpoint and the base model answer 64 held-out questions greedily; exact = the
last number in the reply is the sum. The recommendation passes when its cell's answers are within 0.05 of the
sweep's best trial's and above the base model's.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
PHRASES = ("Add {a} and {b} - what do you get?", "I have {a} apples and buy {b} more. How many apples now?",
           "Quick sum please: {a} plus {b}.", "What's the total of {a} and {b}?")
YAML = """\
name: new-user
trial:
  model: {{name_or_path: smollm2-135m}}
  data: {{source: {data}}}
  dpo: {{max_length: 96}}
search:
  space:
    beta: {{grid: [0.1, 0.5]}}
    learning_rate: {{grid: [1.0e-4, 1.0e-3, 3.0e-3]}}
storage: {{path: {storage}}}
"""


def wrong(a: int, b: int, rng: random.Random) -> int:
    return rng.choice([a + b + 10, a + b - 10, a + b + 1, a + b - 1])


def pair(a: int, b: int, rng: random.Random) -> dict[str, Any]:
    ask = rng.choice(PHRASES).format(a=a, b=b)
    return {"prompt": [{"role": "user", "content": ask}],
            "chosen": [{"role": "assistant", "content": f"{a} and {b} make {a + b}."}],
            "rejected": [{"role": "assistant", "content": f"{a} and {b} make {wrong(a, b, rng)}."}]}


def questions(seed: int, n: int, exclude: set[tuple[int, int]]) -> list[tuple[int, int]]:
    rng, out = random.Random(seed), []
    while len(out) < n:
        a, b = rng.randint(11, 89), rng.randint(11, 89)
        if (a, b) not in exclude and (a, b) not in out:
            out.append((a, b))
    return out


def write_inputs(work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    train = questions(0, 256, set())
    rng = random.Random(1)
    (work / "prefs.jsonl").write_text("".join(json.dumps(pair(a, b, rng)) + "\n" for a, b in train))
    held = questions(2, 64, set(train))
    (work / "checker.json").write_text(json.dumps(held))
    yaml = work / "new_user.yaml"
    yaml.write_text(YAML.format(data=work / "prefs.jsonl", storage=work / "out"))
    return yaml


def answers_rate(model, tokenizer, held: list[tuple[int, int]]) -> float:
    from trainables.generation import generate, render_prompt

    rng = random.Random(3)
    texts = [render_prompt(tokenizer, [{"role": "user", "content": rng.choice(PHRASES).format(a=a, b=b)}])
             for a, b in held]
    out = generate(model, tokenizer, texts, max_new_tokens=24, batch_size=16)
    import re

    right = 0
    for (a, b), text in zip(held, out.texts, strict=True):
        numbers = re.findall(r"-?\d+", text)
        right += bool(numbers) and int(numbers[-1]) == a + b
    return right / len(held)


def check(experiment: Path, work: Path) -> dict[str, Any]:
    """Every trial's last checkpoint and the base model, scored on the held-out questions."""
    import torch
    from peft import PeftModel

    from orchestrator.analysis import analyze
    from orchestrator.config import load_sweep_config
    from orchestrator.records import load_results, records_from_results
    from trainables.model import load_base_model

    torch.set_num_threads(2)
    cfg = load_sweep_config(work / "new_user.yaml")
    held = [tuple(q) for q in json.loads((work / "checker.json").read_text())]
    records = records_from_results(load_results(str(experiment)), cfg.trial.model_dump(mode="json"),
                                   cfg.search.metric, cfg.search.mode)
    analysis = analyze(records, cfg.search.metric, cfg.search.mode, work / "analysis-check",
                       tie_se=cfg.analysis.tie_se)
    model, tokenizer = load_base_model(cfg.trial.model, log=lambda *_: None)
    base = answers_rate(model, tokenizer, held)
    rows = []
    for r in records:
        ckpts = sorted(Path(experiment, r.trial_id).glob("checkpoint_*"))
        adapter = next(iter(sorted(ckpts[-1].rglob("adapter_config.json"))), None) if ckpts else None
        if adapter is None:
            continue
        peft = PeftModel.from_pretrained(model, str(adapter.parent))
        rate = answers_rate(peft, tokenizer, held)
        model = peft.unload()
        rows.append({"beta": r.params.get("beta"), "learning_rate": r.params.get("learning_rate"),
                     "status": r.status, "reports": r.reports, "flag": r.flag_signal,
                     cfg.search.metric: r.last(cfg.search.metric), "answers": rate})
    spot = analysis.sweet_spot.values if analysis.sweet_spot else {}
    chosen = next((x for x in rows if x["beta"] == spot.get("beta") and x["learning_rate"] == spot.get("learning_rate")),
                  None)
    best = max(x["answers"] for x in rows)
    return {"base_answers": base, "trials": rows, "sweet_spot": spot, "recommendation": analysis.recommendation,
            "chosen_answers": None if chosen is None else chosen["answers"], "best_answers": best,
            "pass": chosen is not None and best - chosen["answers"] <= 0.05 and chosen["answers"] > base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--work", default="/tmp/dpo-new-user", help="where the data, YAML and results go")
    ap.add_argument("--check-only", default=None, metavar="EXPERIMENT_DIR", help="check a finished sweep")
    args = ap.parse_args()
    work = Path(args.work)
    if args.check_only:
        experiment = Path(args.check_only)
    else:
        yaml = write_inputs(work)
        subprocess.run([str(ROOT / ".venv/bin/dpo-sweep"), "run", str(yaml)], check=True)
        experiment = max((work / "out").glob("new-user*"), key=lambda p: p.stat().st_mtime)
    result = check(experiment, work)
    print(json.dumps(result, indent=1))
    (work / "new_user_check.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
