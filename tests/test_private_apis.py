"""Each private name in trainables/private_apis.py exists at the installed versions, with the parameters
dpo-sweep calls it with."""

from __future__ import annotations

import importlib
import inspect

import pytest

from trainables.private_apis import PRIVATE_APIS


def _instance(owner: str, module):
    """A plain instance of `owner` (a class of `module`) to read instance attributes from."""
    cls = getattr(module, owner)
    if owner == "_Bracket" and module.__name__.endswith(".hyperband"):
        return cls(time_attr="training_iteration", max_trials=9, init_t_attr=1, max_t_attr=4, eta=3, s=1)
    if owner == "_Bracket":  # ASHA's
        return cls(min_t=1, max_t=4, reduction_factor=3, s=0)
    if owner in ("HyperBandScheduler", "ASHAScheduler"):
        return cls(time_attr="training_iteration", max_t=4, reduction_factor=3)
    if owner == "Linear4bit":
        return cls(4, 4)
    raise AssertionError(f"no instance recipe for {owner}")


@pytest.mark.parametrize(("module_name", "name", "params", "used_in"), PRIVATE_APIS,
                         ids=[f"{m}.{n}" for m, n, _, _ in PRIVATE_APIS])
def test_private_api_still_exists(module_name, name, params, used_in):
    module = importlib.import_module(module_name)
    where = f"{module_name}.{name} (used by {used_in})"
    if "()" in name:  # an attribute an instance carries
        owner, attr = name.split("()")
        instance = _instance(owner, module)
        assert hasattr(instance, attr.lstrip(".")), f"{where} is gone at this version"
        return
    obj = module
    for part in name.split("."):
        assert hasattr(obj, part), f"{where} is gone at this version"
        obj = getattr(obj, part)
    if params is not None:
        got = tuple(inspect.signature(obj).parameters)[:len(params)]
        assert got == params, f"{where} now takes {got}, dpo-sweep calls it with {params}"


def test_the_input_gradient_hook_keeps_its_private_name():
    # trainables/resident.py reads `_require_grads_hook` to tell whether a trial left the hook on.
    import transformers

    assert "_require_grads_hook" in inspect.getsource(transformers.PreTrainedModel.enable_input_require_grads)
