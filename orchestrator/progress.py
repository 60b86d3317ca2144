"""Progress of a running sweep on the terminal: one line per report, one per finished trial."""

from __future__ import annotations

import sys
import time

from ray.tune import Callback


class ProgressPrinter(Callback):
    # Tune pickles its callbacks with the experiment state: hold no file handles, look stdout up per line.
    def __init__(self, metric: str, num_trials: int | None, enabled: bool = True):
        self.metric = metric
        self.num_trials = num_trials
        self.enabled = enabled
        self.start = time.monotonic()

    def setup(self, **info):
        self.start = time.monotonic()  # also after `resume`, which unpickles this callback

    def _line(self, text: str) -> None:
        if self.enabled:
            print(f"[{time.monotonic() - self.start:6.0f}s] {text}", file=sys.stdout, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._line(f"start  {trial}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        extra = f" REWARD-HACKING FLAG ({result.get('reward_hack_signal')})" if result.get("reward_hack_flag") else ""
        # Answer quality and pair accuracy tell different stories; show whichever is not the ranked metric.
        also = ""
        if "answer_exact_rate" in result and self.metric != "answer_exact_rate":
            also += f" answers {result['answer_exact_rate']:.2f}"
        if "eval_rewards_accuracies" in result and self.metric != "eval_rewards_accuracies":
            also += f" pair acc {result['eval_rewards_accuracies']:.2f}"
        shown = f"{value:.3f}" if isinstance(value, float) else value
        self._line(f"report {trial} #{result.get('training_iteration')} step {result.get('step')} "
                   f"{self.metric} {shown}{also}{extra}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        # Counted from Tune's own trial list: a resumed sweep starts with trials finished before.
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials) + (trial.status not in ("TERMINATED", "ERROR"))
        total = f"/{self.num_trials}" if self.num_trials else ""
        self._line(f"done   {trial} ({done}{total} finished)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(f"FAILED {trial}: see {trial.path}/error.txt")
