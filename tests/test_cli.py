"""The `dpo-sweep` command: help, a real trial from the terminal, and clean refusals (no tracebacks)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def dpo_sweep(*args, cache=None, cwd=None):
    env = {**os.environ, **({"DPO_SWEEP_CACHE": cache} if cache else {})}
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600, check=False)


def test_help_lists_the_commands():
    out = dpo_sweep("--help")
    assert out.returncode == 0 and "run" in out.stdout and "trial" in out.stdout
    out = dpo_sweep("trial", "--help")
    assert "--set KEY=VALUE" in out.stdout and "--resume" in out.stdout


def test_trial_prints_metrics_as_it_goes_and_resumes(model_cache, tmp_path):
    sets = ["--set", "data.synthetic.num_train=256", "--set", "data.synthetic.num_eval=64",
            "--set", "data.synthetic.num_probe=16", "--set", "dpo.learning_rate=5e-4",
            "--set", f"output_dir={tmp_path / 'out'}", "--set", "dpo.reports_per_epoch=2"]
    out = dpo_sweep("trial", *sets, cache=model_cache)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("step")]
    assert len(lines) == 2 and "eval acc" in lines[0] and "answers exact" in lines[0]
    assert "final held-out reward accuracy" in out.stderr

    out = dpo_sweep("trial", *sets, "--resume", str(tmp_path / "out" / "checkpoint-8"), cache=model_cache)
    assert out.returncode == 0, out.stderr
    assert [ln.split("|")[0].strip() for ln in out.stdout.splitlines() if ln.startswith("step")] == ["step    16"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "dpo.beta=-1"], "dpo.beta: Input should be greater than 0, got -1"),
        (["--set", "dpo.lr=1e-5"], "dpo.lr: unknown key; did you mean 'learning_rate'?"),
        (["--set", "data.source=/no/such/file.jsonl"], "data.source: '/no/such/file.jsonl' does not exist"),
        (["--set", "model.name_or_path=./no/model"], "directory './no/model' does not exist"),
        (["/no/config.yaml"], "config file '/no/config.yaml' does not exist"),
        (["--resume", "/tmp"], "not a trial checkpoint"),
    ],
)
def test_bad_input_is_refused_without_a_traceback(model_cache, args, needle):
    out = dpo_sweep("trial", *args, cache=model_cache)
    assert out.returncode == 2
    assert needle in out.stderr and "Traceback" not in out.stderr


def test_only_input_errors_are_refusals_an_internal_missing_file_is_a_bug(monkeypatch, tmp_path):
    """Exit 2 without a traceback is for input the user can fix; a FileNotFoundError from inside dpo-sweep is a
    bug, and its traceback is what gets it fixed."""
    from orchestrator import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["report", "no-such-sweep"]) == 2  # the user's input: refused

    def internal(args):
        raise FileNotFoundError(2, "No such file or directory", "/internal/cache/meta.json")

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), internal))
    with pytest.raises(FileNotFoundError, match="/internal/cache/meta.json"):
        cli.main(["spaces"])


def _with_func(parser, func):
    parser.set_defaults(func=func)
    for action in parser._subparsers._group_actions:
        for sub in action.choices.values():
            sub.set_defaults(func=func)
    return parser
