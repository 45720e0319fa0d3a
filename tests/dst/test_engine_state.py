"""The engine's state round trip with bad states: every malformed, inconsistent or tampered
entry raises a ValueError/TypeError naming it, and a failed load leaves the engine exactly as
it was (all or nothing); a good state still resumes bit-identically."""

from __future__ import annotations

import copy

import pytest
import torch

from sparsekernels.dst import DynamicSparsity
from tests.dst.common import mlp, train


def engine(method="evolutionary"):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    evo = DynamicSparsity(model, opt, method=method, update_every=2, fraction=0.5, seed=0)
    train(model, opt, evo, range(4))
    return model, opt, evo


def snapshot(evo) -> dict:
    return copy.deepcopy(evo.state_dict())


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def edit(path, value):
    """A function mutating a state dict at ``path`` (a tuple of keys; value None deletes)."""

    def apply(sd):
        node = sd
        for key in path[:-1]:
            node = node[key]
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value(node[path[-1]]) if callable(value) else value
        return sd

    return apply


_DELETE = object()
L0 = ("layers", "0")
BAD_STATES = [
    ("not-a-dict", lambda sd: [sd], TypeError, "must be a dict"),
    ("missing-layers", edit(("layers",), _DELETE), ValueError, r"missing \['layers'\]"),
    ("missing-step", edit(("step",), _DELETE), ValueError, r"missing \['step'\]"),
    ("update-every-0", edit(("update_every",), 0), ValueError, r"'update_every'\] must be an int >= 1"),
    ("update-every-float", edit(("update_every",), 2.5), ValueError, r"'update_every'\] must be an int"),
    ("step-negative", edit(("step",), -1), ValueError, r"'step'\] must be an int >= 0"),
    ("updates-beyond-step", edit(("updates",), 99), ValueError, "cannot exceed 'step'"),
    ("method", edit(("method",), "set"), ValueError, "saved with method 'set'"),
    ("schedule-fraction", edit(("schedule", "fraction"), 1.5), ValueError, r"'schedule'\] is invalid"),
    ("schedule-not-dict", edit(("schedule",), "cosine"), ValueError, r"'schedule'\] must be a dict"),
    ("stop-after-fraction", edit(("schedule", "stop_after"), 0.75), ValueError, "before the first update step"),
    ("adaptive-str", edit(("adaptive",), "yes"), ValueError, r"'adaptive'\] must be a bool"),
    ("seed-str", edit(("seed",), "0"), ValueError, r"'seed'\] must be an int"),
    ("generator", edit(("generator",), torch.zeros(3, dtype=torch.uint8)), ValueError, r"'generator'\]"),
    ("global-adapt-shape", edit(("global_adapt",), torch.ones(2)), ValueError, r"'global_adapt'\] must be"),
    ("global-adapt-range", edit(("global_adapt",), torch.tensor(7.0)), ValueError, "adaptive multiplier"),
    ("layers-renamed", edit(("layers",), lambda d: {"x" + k: v for k, v in d.items()}), ValueError, "holds sparse"),
    ("layer-not-dict", edit(L0, 3), ValueError, r"\['layers'\]\['0'\] must be a dict"),
    ("born-length", edit((*L0, "born"), lambda t: t[:-1]), ValueError, r"\['born'\] must be torch.int64 of shape"),
    ("born-dtype", edit((*L0, "born"), lambda t: t.float()), ValueError, r"\['born'\] must be torch.int64"),
    ("born-range", edit((*L0, "born"), lambda t: t + 100), ValueError, r"\['born'\] must hold update numbers"),
    ("ever-active-shape", edit((*L0, "ever_active"), lambda t: t[1:]), ValueError, r"\['ever_active'\]"),
    ("adapt-range", edit((*L0, "adapt"), torch.tensor(-1.0)), ValueError, r"\['adapt'\] must be an adaptive"),
    ("nnz", edit((*L0, "nnz"), 1), ValueError, "layer '0': state_dict has nnz=1"),
    ("pruned-grown", edit((*L0, "pruned_grown_total"), lambda t: t + 1000), ValueError, "pruned_grown_total"),
    ("slots-missing", edit((*L0, "slots"), {}), ValueError, r"\['slots'\] must hold the method's per-slot state"),
    ("slot-shape", edit((*L0, "slots", "fitness"), lambda t: t[:-1]), ValueError, r"\['slots'\]\['fitness'\]"),
    ("history", edit(("history",), "nope"), ValueError, r"'history'\] is not a history"),
    ("adapt-floor-range", edit(("adapt_floor",), 2.0), ValueError, r"'adapt_floor'\] must be a number in"),
    # The multipliers must respect the saved floor: 0.05 is below the default 0.1.
    ("adapt-below-floor", edit((*L0, "adapt"), torch.tensor(0.05)), ValueError, r"adaptive multiplier in \[0.1"),
]


@pytest.mark.parametrize("name, mutate, error, message", BAD_STATES, ids=[b[0] for b in BAD_STATES])
def test_bad_state_is_refused_and_engine_left_untouched(name, mutate, error, message):
    _, _, evo = engine()
    before = snapshot(evo)
    bad = mutate(snapshot(evo))
    with pytest.raises(error, match=message):
        evo.load_state_dict(bad)
    assert same(snapshot(evo), before), f"{name}: a failed load changed the engine"


def test_state_from_before_adapt_floor_loads_with_the_old_floor():
    """State dicts written before ``adapt_floor`` existed trained with the fixed floor 0.1."""
    _, _, evo = engine()
    old = snapshot(evo)
    del old["adapt_floor"]
    evo.adapt_floor = 0.0
    evo.load_state_dict(old)
    assert evo.adapt_floor == 0.1


def test_good_state_round_trips_and_resumes_identically():
    model, opt, evo = engine()
    saved = snapshot(evo)
    model_state = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(opt.state_dict())
    train(model, opt, evo, range(4, 8))
    expected = snapshot(evo)
    model2, opt2, evo2 = engine()
    # Scramble the second engine, then restore everything from the first one's state.
    train(model2, opt2, evo2, range(4, 6))
    model2.load_state_dict(model_state)
    opt2.load_state_dict(opt_state)
    evo2.load_state_dict(saved)
    assert same(snapshot(evo2), saved)
    train(model2, opt2, evo2, range(4, 8))
    assert same(snapshot(evo2), expected)
