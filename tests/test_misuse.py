"""Misuse and odd data: empty batches, None batches, inference-mode tensors, huge seeds, in-place
activations on views, two calls on one model at once. Each gives one clear line, or the right scores;
the model is left untouched either way."""

import threading

import models
import pytest
import torch
from torch import nn
from untouched import assert_same, snapshot

import rgprune_fast as rg

METHODS = ["taylorfo_sq", "molchanov_bn", "molchanov_group"]


@pytest.fixture()
def small():
    return models.make("conv_bn_relu"), models.batches("conv_bn_relu", sizes=(3, 2, 4))


def _one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text, text
    return text


def _empty_like(batch):
    x, t = batch
    return x[:0], t[:0]


def test_empty_first_batch_is_an_error(small):
    model, data = small
    before = snapshot(model)
    for modules in (None, ["0"]):
        with pytest.raises(rg.EmptyDataError, match="batch 0 holds 0 examples") as e:
            rg.score(model, [_empty_like(data[0]), *data], modules=modules)
        _one_line(e)
    assert_same(before, snapshot(model))


def test_empty_later_batches_are_skipped_not_counted(small):
    model, data = small
    expected = rg.score(model, data, method=METHODS)
    padded = [data[0], _empty_like(data[1]), data[1], _empty_like(data[0]), data[2], _empty_like(data[2])]
    got = rg.score(model, padded, method=METHODS)
    for method in METHODS:  # molchanov_* divide by the batch count: empty batches must not count
        for key in expected[method]:
            assert torch.equal(expected[method][key], got[method][key]), (method, key)
    with pytest.raises(rg.EmptyDataError):  # only empty batches: not one to probe
        rg.score(model, [_empty_like(b) for b in data])


def test_none_batches_name_their_position(small):
    model, data = small
    with pytest.raises(TypeError, match="batch 0 is None") as e:
        rg.score(model, [None, data[0]])
    _one_line(e)
    with pytest.raises(TypeError, match="batch 1 is None"):
        rg.score(model, [data[0], None])


def test_inference_mode_data_is_scored_like_any_other(small):
    model, data = small
    expected = rg.score(model, data)
    with torch.inference_mode():
        frozen = [(x.clone(), t.clone()) for x, t in data]
    assert frozen[0][0].is_inference()
    got = rg.score(model, frozen)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_inference_mode_model_is_refused_in_one_line(small):
    _, data = small
    with torch.inference_mode():
        model = models.make("conv_bn_relu")
    with pytest.raises(ValueError, match="created under torch.inference_mode") as e:
        rg.score(model, data)
    _one_line(e)


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, 10**30])
def test_seed_out_of_range(small, seed):
    model, data = small
    with pytest.raises(ValueError, match="seed must lie in") as e:
        rg.score(model, data, seed=seed)
    _one_line(e)


def test_seed_extremes_that_torch_accepts(small):
    model, data = small
    for seed in (-(2**63), -1, 2**64 - 1):
        assert rg.score(model, data, seed=seed)


class InPlaceReluOnView(nn.Module):
    """An in-place ReLU module applied to a slice of a Linear's output: the Linear's pristine output
    is gone by backward."""

    def __init__(self):
        super().__init__()
        self.lin, self.act, self.out = nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(3, 2)

    def forward(self, x):
        y = self.lin(x)
        return self.out(self.act(y[:, :3]))


def test_inplace_activation_on_a_view_is_refused_clearly():
    model = InPlaceReluOnView()
    before = snapshot(model)
    with pytest.raises(rg.UnsupportedModuleError, match="'lin' is modified in place"):
        rg.score(model, torch.randn(3, 4), modules=["lin"])
    assert_same(before, snapshot(model))


def test_a_second_call_on_the_same_model_is_refused(small):
    """A call from another thread while the first is running, and a call from inside a call (here from
    the gradient callable): refused before touching anything; the first call's result is unaffected."""
    model, data = small
    expected = rg.score(model, data, gradient=lambda out, batch: torch.ones_like(out))
    before = snapshot(model)
    inside, release = threading.Event(), threading.Event()
    errors, results = [], []

    def slow_gradient(output, batch):
        inside.set()
        assert release.wait(30)
        return torch.ones_like(output)

    first = threading.Thread(target=lambda: results.append(rg.score(model, data, gradient=slow_gradient)))
    first.start()
    try:
        assert inside.wait(30)
        for call in (lambda: rg.score(model, data), lambda: rg.mc_gradient(model, data, steps=1)):
            with pytest.raises(RuntimeError, match="already being scored in thread") as e:
                call()
            errors.append(_one_line(e))
    finally:
        release.set()
        first.join(60)
    assert len(errors) == 2 and len(results) == 1
    for key in expected:
        assert torch.equal(expected[key], results[0][key])
    assert_same(before, snapshot(model))

    def nested(output, batch):
        rg.score(model, data)
        return torch.ones_like(output)

    with pytest.raises(RuntimeError, match="already being scored in this thread"):
        rg.score(model, data, gradient=nested)
    assert_same(before, snapshot(model))
    assert rg.score(model, data, gradient=lambda out, batch: torch.ones_like(out)).keys() == expected.keys()
