"""The base model stays loaded in a worker between trials (trainables.resident): same answers, no growth."""

from __future__ import annotations

import gc
import math
import os
import shutil
import warnings

import pytest
import torch
from conftest import Interrupted, interrupt_after
from safetensors.torch import load_file

from trainables import resident
from trainables.trial import TrialOutOfMemory, run_trial


def quiet(*_):
    pass


@pytest.fixture(autouse=True)
def fresh_worker():
    resident.drop()  # each test starts as a new worker would
    resident.loads = 0
    yield
    resident.drop()


SMALL = {"synthetic": {"num_train": 128, "num_eval": 32, "num_probe": 8}}  # 8 steps, a report every 2


def _run(spec, resident_model: bool, resume_from=None):
    out = []
    run_trial(spec, lambda m, c: out.append((m, c)), log=quiet, resident=resident_model, resume_from=resume_from)
    return out


def _timed(key: str) -> bool:
    return key.startswith("time_") or key.endswith(("_runtime", "_per_second", "_seconds"))


def _same_reports(a, b):
    """Every reported figure but the clock's, to the last digit."""
    assert [m["step"] for m, _ in a] == [m["step"] for m, _ in b]
    for (ma, _), (mb, _) in zip(a, b):
        keys = {k for k in ma if not _timed(k)}
        assert keys == {k for k in mb if not _timed(k)}
        for k in keys:
            x, y = ma[k], mb[k]
            assert x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)), (k, x, y)


def _same_adapter(ckpt_a, ckpt_b):
    a = load_file(f"{ckpt_a}/adapter_model.safetensors")
    b = load_file(f"{ckpt_b}/adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_fresh_adapter_on_the_resident_model_matches_a_fresh_load_bit_for_bit(make_spec):
    fresh = _run(make_spec("fresh", data=SMALL), resident_model=False)

    _run(make_spec("other", data=SMALL, dpo={"beta": 0.5, "learning_rate": 5e-3}), resident_model=True)  # its 1st
    assert resident.loads == 1
    model = resident._resident.model
    reused = _run(make_spec("reused", data=SMALL), resident_model=True)
    assert resident.loads == 1 and resident._resident.model is model  # the same model settings: not loaded again
    _same_reports(fresh, reused)
    _same_adapter(fresh[-1][1], reused[-1][1])


def test_a_resumed_trial_in_the_same_worker_reports_what_a_reloaded_one_does(make_spec, tmp_path):
    first, pause_after_two = interrupt_after(2)  # as halving pauses a trial at a rung
    spec = make_spec("paused", data=SMALL)
    with pytest.raises(Interrupted):
        run_trial(spec, pause_after_two, log=quiet, resident=True)
    ckpt = shutil.copytree(first[-1][1], tmp_path / "kept")  # Ray keeps it in the sweep's storage
    assert not resident.leftovers(resident._resident.model)  # handed back clean even though the trial raised

    _run(make_spec("between", data=SMALL, dpo={"beta": 0.01}), resident_model=True)  # another trial uses the worker meanwhile
    in_worker = _run(spec, resident_model=True, resume_from=str(ckpt))
    assert resident.loads == 1
    resident.drop()
    reloaded = _run(spec.model_copy(update={"output_dir": str(tmp_path / "reloaded")}), resident_model=False,
                    resume_from=str(ckpt))
    _same_reports(reloaded, in_worker)
    _same_adapter(reloaded[-1][1], in_worker[-1][1])


def _live_tensors() -> tuple[int, int]:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on torch.distributed's deprecated module attributes warns
        warnings.simplefilter("ignore")
        tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    return len(tensors), sum(t.untyped_storage().nbytes() for t in tensors if t.device.type != "meta")


def test_memory_does_not_grow_over_ten_trials_in_one_worker(make_spec, monkeypatch):
    from trainables.trainer import SweepDPOTrainer

    real = SweepDPOTrainer.training_step

    def out_of_memory_on_trial_5(self, *args, **kwargs):
        if self.args.beta == 0.55 and self.state.global_step == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SweepDPOTrainer, "training_step", out_of_memory_on_trial_5)
    small = {"synthetic": {"num_train": 64, "num_eval": 32, "num_probe": 8}}
    seen = []
    for i in range(10):
        spec = make_spec(f"t{i}", data=small, dpo={"beta": 0.1 + 0.05 * i, "reports_per_epoch": 1})
        if i == 9:
            spec = make_spec(f"t{i}", data=small, dpo={"beta": 0.1 + 0.05 * i, "reports_per_epoch": 1,
                                                        "gradient_checkpointing": True})
        if abs(spec.dpo.beta - 0.55) < 1e-9:
            with pytest.raises(TrialOutOfMemory):  # the worker goes on with the next trial
                _run(spec, resident_model=True)
        else:
            assert _run(spec, resident_model=True)[-1][0]["step"] == 4
        assert not resident.leftovers(resident._resident.model), i
        seen.append(_live_tensors())
    assert resident.loads == 1
    count, nbytes = seen[1]
    # What the first trial left (lazily built caches) may exceed a fresh process; after that nothing accumulates.
    for i, (c, b) in enumerate(seen[2:], start=2):
        assert c <= count and b <= nbytes, (i, seen)


def test_other_model_settings_load_again(make_spec):
    _run(make_spec("a", data=SMALL, model={"compute_dtype": "float32"}), resident_model=True)
    model = resident._resident.model
    _run(make_spec("b", data=SMALL, model={"compute_dtype": "float32"}), resident_model=True)
    assert resident.loads == 1 and resident._resident.model is model
    _run(make_spec("c", data=SMALL, model={"compute_dtype": "bfloat16"}), resident_model=True)
    assert resident.loads == 2 and resident._resident.model is not model
    assert resident._resident.model.dtype == torch.bfloat16


def test_a_model_that_does_not_come_back_clean_is_dropped(make_spec):
    _run(make_spec("a", data=SMALL), resident_model=True)
    model = resident._resident.model
    model.model.embed_tokens.weight.requires_grad_(True)  # as if a trial had trained a base weight
    assert resident.leftovers(model)
    messages = []
    resident.strip_trial(model, log=messages.append)
    assert resident._resident is None and "could not be returned" in messages[0]


def test_a_reused_worker_waits_out_the_previous_trials_cleanup_and_a_longer_user_wait_stands(monkeypatch):
    """Ray reads TUNE_FUNCTION_THREAD_TIMEOUT_S in the worker at each hand-over; a trial's end (MLflow flush up to
    tracking.flush_s, the resident model stripped) must fit in it, and a user's longer wait is kept."""
    from trainables.tune_entry import CLEANUP_MARGIN_S, THREAD_TIMEOUT_ENV, hold_worker_for_cleanup

    monkeypatch.setenv(THREAD_TIMEOUT_ENV, "2")  # Ray's default
    assert hold_worker_for_cleanup(60.0) == int(60 + CLEANUP_MARGIN_S)
    assert os.environ[THREAD_TIMEOUT_ENV] == str(int(60 + CLEANUP_MARGIN_S))
    monkeypatch.setenv(THREAD_TIMEOUT_ENV, "3600")
    assert hold_worker_for_cleanup(60.0) == 3600
    assert os.environ[THREAD_TIMEOUT_ENV] == "3600"
