"""Where a trial's seconds go: wall time per phase, carried in every report as `time_<phase>_s`.

Phases are exclusive: time spent in a phase opened inside another counts for the inner one only, so the
phases add up to no more than the trial's wall time (`time_trial_s`). What none of them holds (Ray's own
work between the trial's function calls, TRL's bookkeeping between steps) is the rest of the trial's
seconds; `orchestrator.costs` names it. The clock's totals ride in each checkpoint, so a trial
paused and resumed by halving keeps counting from where it was.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

# In the order a trial meets them. worker_start (a fresh worker loading the trial's entry module: torch, MLflow)
# and imports (transformers, TRL, peft, bitsandbytes) are paid by the first trial a worker runs; Ray reuses
# workers. The interpreter's and Ray's own start before them is not counted (Ray starts workers ahead, idle).
PHASES = ("worker_start", "imports", "model_load", "data", "trainer_init", "reference", "checkpoint_restore", "steps",
          "evaluation", "probes", "generation", "checkpoint_save", "report")
PREFIX = "time_"


class PhaseClock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {p: 0.0 for p in PHASES}
        self.wall_before = 0.0  # earlier runs' wall time (a resumed trial: `carry`)
        self.started = time.perf_counter()
        self._stack: list[tuple[str, float]] = []  # (phase, when it (re)started counting)

    def begin(self, name: str) -> None:
        now = time.perf_counter()
        if self._stack:  # the enclosing phase stops counting while this one runs
            outer, since = self._stack[-1]
            self.seconds[outer] += now - since
        self._stack.append((name, now))

    def end(self, name: str) -> None:
        """Close `name` (and anything left open inside it); a name not open is ignored."""
        if name not in (n for n, _ in self._stack):
            return
        now = time.perf_counter()
        while self._stack:
            inner, since = self._stack.pop()
            self.seconds[inner] += now - since
            if inner == name:
                break
        if self._stack:
            self._stack[-1] = (self._stack[-1][0], now)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.begin(name)
        try:
            yield
        finally:
            self.end(name)

    def totals(self) -> dict[str, float]:
        """Seconds per phase so far (open phases counted up to now) and the trial's wall time."""
        now = time.perf_counter()
        out = dict(self.seconds)
        if self._stack:  # only the innermost open phase is counting
            name, since = self._stack[-1]
            out[name] += now - since
        out["trial"] = self.wall_before + now - self.started
        return out

    def add_before(self, name: str, seconds: float) -> None:
        """Count `seconds` spent in `name` before the clock started (the worker's start-up)."""
        self.seconds[name] += seconds
        self.wall_before += seconds

    def carry(self, earlier: dict[str, float]) -> None:
        """Add an earlier run's totals (`totals()` saved in the checkpoint a resumed trial starts from)."""
        for k, v in earlier.items():
            if k == "trial":
                self.wall_before += float(v)
            else:
                self.seconds[k] = self.seconds.get(k, 0.0) + float(v)

    def metrics(self) -> dict[str, float]:
        return {f"{PREFIX}{k}_s": round(v, 3) for k, v in self.totals().items()}
