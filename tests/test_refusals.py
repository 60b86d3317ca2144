"""Every input dpo-sweep refuses, refused the same way: exit code 2, a message naming the field, row or
path and the fix, and no traceback. The table of refusals in docs/refusals.md is generated from these cases
(`python tests/test_refusals.py` prints it) and a test keeps the two in step. Every case sees the same
machine (MACHINE: 8 cores, no GPU), so the table does not depend on the one that runs the tests.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import sys
from pathlib import Path

import pytest

from orchestrator import cluster
from orchestrator.cluster import ClusterView

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- refusals:begin -->", "<!-- refusals:end -->"
BAD_ROWS = """\
{"prompt": "Q: cat\\nA:", "chosen": " CAT", "rejected": " cat"}
{"prompt": "Q: dog\\nA:", "chosen": " dog"}
{"prompt": "Q: emu\\nA:", "chosen": null, "rejected": " emu"}
{"prompt": "Q: fox\\nA:", "chosen": " fox", "rejected": " fox"}
not json
"""
SWEEP = "name: refusals\ntrial: {data: {source: synthetic, synthetic: {num_train: 128, num_eval: 32}}}\n"
TINY = ["--set", "data.synthetic.num_train=128", "--set", "data.synthetic.num_eval=32"]

# (what the user gave, command line, files to create). Paths are relative: each case runs in an empty dir.
CASES = [
    ("a value out of range", ["trial", "--set", "dpo.beta=-1"], {}),
    ("a misspelt key", ["trial", "--set", "dpo.lr=1e-5"], {}),
    ("a value of the wrong type", ["trial", "--set", "dpo.learning_rate=fast"], {}),
    ("an override without '='", ["trial", "--set", "dpo.beta"], {}),
    ("label smoothing a loss type ignores", ["trial", "--set", "dpo.loss_type=hinge", "--set",
                                             "dpo.label_smoothing=0.2"], {}),
    ("an unknown loss type", ["trial", "--set", "dpo.loss_type=dpo"], {}),
    ("an unknown quantization", ["trial", "--set", "model.quantization=nf3"], {}),
    ("a config file that does not exist", ["trial", "missing.yaml"], {}),
    ("a config file that is not YAML", ["trial", "broken.yaml"], {"broken.yaml": "dpo: {beta: [0.1\n"}),
    ("a config file that is not a mapping", ["trial", "list.yaml"], {"list.yaml": "- dpo\n- beta\n"}),
    ("an empty config file", ["validate", "empty.yaml"], {"empty.yaml": "# nothing yet\n"}),
    ("an empty config path", ["trial", ""], {}),
    ("a damaged sweep state file", ["report", "sweep"], {"sweep/dpo_sweep.json": '{"name": "s"}'}),
    ("a data file that does not exist", ["trial", "--set", "data.source=prefs.jsonl"], {}),
    ("bad rows in the data (all reported at once)", ["trial", "--set", "data.source=bad.jsonl"],
     {"bad.jsonl": BAD_ROWS}),
    ("a model directory that does not exist", ["trial", "--set", "model.name_or_path=./no-model"], {}),
    ("a GGUF model file cut short", ["trial", "--set", "model.name_or_path=model.gguf"],
     {"model.gguf": "GGUF\x03\x00\x00\x00 the rest of the download never arrived"}),
    ("a flag signal that reads probe answers, on your own data",
     ["trial", "--set", "data.source=prefs.jsonl", "--set", "reward_hacking.signals=[length_drift]"],
     {"prefs.jsonl": '{"prompt": "Q: cat\\nA:", "chosen": " cat", "rejected": " dog"}\n'}),
    ("more reports than optimizer steps", ["trial", *TINY, "--set", "dpo.reports_per_epoch=64"], {}),
    ("a --resume directory that is no checkpoint", ["trial", "--resume", "."], {}),
    ("an unknown key in the search space", ["validate", "sweep.yaml", "--set", "search.space={betta: {grid: [0.1]}}"],
     {"sweep.yaml": SWEEP}),
    ("an empty grid", ["validate", "sweep.yaml", "--set", "search.space={beta: {grid: []}}"], {"sweep.yaml": SWEEP}),
    ("an unknown distribution", ["validate", "sweep.yaml", "--set", "search.space={beta: {normal: [0.1, 0.2]}}"],
     {"sweep.yaml": SWEEP}),
    ("a search value out of range", ["validate", "sweep.yaml", "--set", "search.space={beta: {grid: [0.1, -1]}}"],
     {"sweep.yaml": SWEEP}),
    ("an unknown named space", ["validate", "sweep.yaml", "--set", "search.space=beta-ladderr"], {"sweep.yaml": SWEEP}),
    ("a metric trials never report", ["validate", "sweep.yaml", "--set", "search.metric=eval_acc"],
     {"sweep.yaml": SWEEP}),
    ("a search mode other than max/min", ["validate", "sweep.yaml", "--set", "search.mode=maximize"],
     {"sweep.yaml": SWEEP}),
    ("a GPU per trial on a machine without one", ["validate", "sweep.yaml", "--set", "resources.gpu_per_trial=1"],
     {"sweep.yaml": SWEEP}),
    ("more CPUs per trial than the machine has", ["validate", "sweep.yaml", "--set", "resources.cpu_per_trial=512"],
     {"sweep.yaml": SWEEP}),
    ("a tracking server that does not answer", ["validate", "sweep.yaml", "--tracking-uri", "http://127.0.0.1:9"],
     {"sweep.yaml": SWEEP}),
    ("a scheduler that does not exist", ["validate", "sweep.yaml", "--set", "scheduler.kind=hyperband"],
     {"sweep.yaml": SWEEP}),
    ("more generation prompts than held-out rows",
     ["validate", "sweep.yaml", "--set", "trial.evaluation.num_prompts=64"], {"sweep.yaml": SWEEP}),
    ("a reward function that cannot be imported",
     ["validate", "sweep.yaml", "--set", "trial.evaluation.reward_funcs=[no_such_rewards:score]"],
     {"sweep.yaml": SWEEP}),
    ("a reward function that is not callable",
     ["validate", "sweep.yaml", "--set", "trial.evaluation.reward_funcs=[rewards_const:score]"],
     {"sweep.yaml": SWEEP, "rewards_const.py": "score = 3\n"}),
    ("a reward function that raises",
     ["validate", "sweep.yaml", "--set", "trial.evaluation.reward_funcs=[rewards_boom:score]"],
     {"sweep.yaml": SWEEP, "rewards_boom.py": "def score(prompts, completions, **kw):\n    return 1 / 0\n"}),
    ("a reward function that returns the wrong number of scores",
     ["validate", "sweep.yaml", "--set", "trial.evaluation.reward_funcs=[rewards_short:score]"],
     {"sweep.yaml": SWEEP, "rewards_short.py": "def score(prompts, completions, **kw):\n    return [1.0]\n"}),
    ("a reward function that returns text",
     ["validate", "sweep.yaml", "--set", "trial.evaluation.reward_funcs=[rewards_text:score]"],
     {"sweep.yaml": SWEEP,
      "rewards_text.py": "def score(prompts, completions, **kw):\n    return ['good' for _ in completions]\n"}),
    ("a reward model that is not a sequence classifier",
     ["validate", "sweep.yaml", "--set", "trial.evaluation.reward_funcs=[./lm]"],
     {"sweep.yaml": SWEEP, "lm/config.json": '{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}'}),
    ("`resume` of a sweep that does not exist", ["resume", "no-such-sweep"], {}),
    ("`sync-mlflow` of a directory that is no sweep", ["sync-mlflow", "."], {}),
]


def run_case(argv: list[str], files: dict[str, str], cwd: Path, cache: str) -> tuple[int, str]:
    """In-process `dpo-sweep ARGV` in `cwd`: (exit code, stderr)."""
    from orchestrator.cli import main

    for name, text in files.items():
        (cwd / name).parent.mkdir(parents=True, exist_ok=True)
        (cwd / name).write_text(text)
    old_cwd, old_cache = Path.cwd(), os.environ.get("DPO_SWEEP_CACHE")
    err, out = io.StringIO(), io.StringIO()
    os.chdir(cwd)
    os.environ["DPO_SWEEP_CACHE"] = cache
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse's own refusals
                code = e.code
    finally:
        os.chdir(old_cwd)
        if old_cache is None:
            os.environ.pop("DPO_SWEEP_CACHE", None)
        else:
            os.environ["DPO_SWEEP_CACHE"] = old_cache
    # Paths as the user gave them, not this run's temp dir (which is the case's working directory).
    return code, err.getvalue().replace(f"{cwd}/", "").replace(str(cwd), ".")


def message(stderr: str) -> str:
    """The refusal as the table shows it: the 'dpo-sweep:' lines, without progress lines."""
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("[")]
    text = " ".join(ln.strip() for ln in lines)
    return text.removeprefix("dpo-sweep: ")


def table_row(what: str, argv: list[str], text: str) -> str:
    cell = re.sub(r"\s+", " ", text).replace("|", "\\|")
    return f"| {what} | `dpo-sweep {shlex.join(argv)}` | {cell} |"


# The machine every case is refused on, whatever runs the tests: the docs table reads the same everywhere.
MACHINE = ClusterView(cpus=8, gpus=0)


def run_all(cache: str, workdir: Path) -> list[tuple[int, str]]:
    results = []
    real = cluster.local_view
    cluster.local_view = lambda: MACHINE
    try:
        for i, (_, argv, files) in enumerate(CASES):
            cwd = workdir / str(i)
            cwd.mkdir()
            results.append(run_case(argv, files, cwd, cache))
    finally:
        cluster.local_view = real
    return results


def generate_table(results: list[tuple[int, str]]) -> str:
    rows = ["| input | command | message |", "|---|---|---|"]
    rows += [table_row(what, argv, message(stderr)) for (what, argv, _), (_, stderr) in zip(CASES, results)]
    return "\n".join(rows)


@pytest.fixture(scope="module")
def results(model_cache, tmp_path_factory):
    return run_all(model_cache, tmp_path_factory.mktemp("refusals"))


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c[0] for c in CASES])
def test_refused_with_a_message_and_no_traceback(index, results):
    code, stderr = results[index]
    assert code == 2, stderr
    assert "Traceback" not in stderr and message(stderr), stderr


def test_readme_lists_every_refusal_with_its_current_message(results):
    readme = (ROOT / "docs" / "refusals.md").read_text()
    assert BEGIN in readme and END in readme, "docs/refusals.md lacks the refusals table markers"
    shown = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert shown == generate_table(results), (
        "docs/refusals.md's refusals table is out of date: regenerate it with `python tests/test_refusals.py`")


if __name__ == "__main__":  # print the docs/refusals.md table
    import tempfile

    sys.path.insert(0, str(ROOT))
    from trainables.tiny_model import ensure_tiny_llama

    cache = os.environ.get("DPO_SWEEP_CACHE") or tempfile.mkdtemp()
    ensure_tiny_llama(cache, log=None)
    with tempfile.TemporaryDirectory() as tmp:
        print(generate_table(run_all(cache, Path(tmp))))
