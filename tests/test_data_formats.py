"""The batch formats and model output formats score() accepts, all giving the same scores."""

import models
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rgprune_fast as rg

METHODS = ["taylorfo", "taylorfo_sq"]


@pytest.fixture(scope="module")
def setup():
    model = models.make("conv_bn_relu")
    data = models.batches("conv_bn_relu", sizes=(3, 3, 2))
    return model, data, rg.score(model, data, method=METHODS, gradient="label")


def assert_equal(a, b):
    for m in a:
        assert list(a[m]) == list(b[m])
        for k in a[m]:
            torch.testing.assert_close(a[m][k], b[m][k], rtol=1e-6, atol=0)


def test_generator_and_dataloader(setup):
    model, data, ref = setup
    assert_equal(ref, rg.score(model, (b for b in data), method=METHODS, gradient="label"))
    x, t = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    loader = DataLoader(TensorDataset(x, t), batch_size=3)
    assert_equal(ref, rg.score(model, loader, method=METHODS, gradient="label"))


def test_max_batches(setup):
    model, data, _ = setup
    first_two = rg.score(model, data[:2], method=METHODS, gradient="label")
    assert_equal(first_two, rg.score(model, data, method=METHODS, gradient="label", max_batches=2))


def test_single_tensor_batch(setup):
    model, data, _ = setup
    x = data[0][0]
    assert_equal(rg.score(model, [x], method=METHODS), rg.score(model, x, method=METHODS))


class KwargsModel(nn.Module):
    """Takes keyword inputs and returns an HF-style output object with .logits."""

    class Output(dict):
        def __init__(self, logits):
            super().__init__(logits=logits, extra=None)
            self.logits = logits

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, pixel_values, scale=1.0):
        return self.Output(self.inner(pixel_values * scale))


def test_dict_batches_and_output_objects(setup):
    model, data, ref = setup
    wrapped = KwargsModel(model)
    dict_batches = [{"pixel_values": x, "labels": t, "scale": 1.0} for x, t in data]
    got = rg.score(wrapped, dict_batches, method=METHODS, gradient="label")
    assert_equal({m: {"inner." + k: v for k, v in ref[m].items()} for m in ref}, got)


def test_tuple_outputs_and_extra_batch_items(setup):
    model, data, ref = setup

    class TupleOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return self.net(x), x.mean()

    got = rg.score(TupleOut(), [(x, t, "id") for x, t in data], method=METHODS, gradient="label")
    assert_equal({m: {"net." + k: v for k, v in ref[m].items()} for m in ref}, got)


def test_progress_bar(setup, capsys):
    model, data, ref = setup
    got = rg.score(model, data, method=METHODS, gradient="label", progress=True)
    assert_equal(ref, got)
    err = capsys.readouterr().err
    assert "scoring" in err and "3/3" in err
