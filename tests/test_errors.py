"""Every bad input gives a clear error that names the culprit."""

import models
import pytest
import torch
from torch import nn

import rgprune_fast as rg


@pytest.fixture()
def small():
    return models.make("conv_bn_relu"), models.batches("conv_bn_relu")


def test_empty_data(small):
    model, _ = small
    with pytest.raises(rg.EmptyDataError, match="no batch"):
        rg.score(model, [])
    with pytest.raises(rg.EmptyDataError, match="no batch"):
        rg.score(model, (b for b in []))
    with pytest.raises(rg.EmptyDataError, match="None"):
        rg.score(model, None)


def test_unknown_method_lists_valid_ones(small):
    model, data = small
    with pytest.raises(
        ValueError, match="unknown method 'taylor'.*taylorfo, taylorfo_abs, taylorfo_sq, molchanov_bn, molchanov_group"
    ):
        rg.score(model, data, method="taylor")
    with pytest.raises(ValueError, match="unknown method 'x'"):
        rg.score(model, data, method=["taylorfo", "x"])
    with pytest.raises(ValueError, match="empty"):
        rg.score(model, data, method=[])
    with pytest.raises(TypeError, match="method must be"):
        rg.score(model, data, method=3)


def test_unknown_gradient(small):
    model, data = small
    with pytest.raises(ValueError, match="unknown gradient 'labels'"):
        rg.score(model, data, gradient="labels")


def test_label_without_targets(small):
    model, data = small
    with pytest.raises(ValueError, match="gradient='label' needs targets"):
        rg.score(model, data[0][0], gradient="label")


def test_label_targets_wrong_shape_dtype_range(small):
    model, data = small
    x, _ = data[0]
    with pytest.raises(ValueError, match=r"targets of shape \(2,\) do not fit the model output of shape \(3, 5\)"):
        rg.score(model, [(x, torch.tensor([0, 1]))], gradient="label")
    with pytest.raises(TypeError, match="integer class indices"):
        rg.score(model, [(x, torch.zeros(3))], gradient="label")
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        rg.score(model, [(x, torch.tensor([0, 1, 5]))], gradient="label")


def test_ignored_targets_contribute_nothing(small):
    model, data = small
    x, t = data[0]
    t2 = t.clone()
    t2[1] = -100
    a = rg.score(model, [(x, t2)], gradient="label", normalize=False, method="taylorfo_abs")
    b = rg.score(model, [(x[[0, 2]], t[[0, 2]])], gradient="label", normalize=False, method="taylorfo_abs")
    for k in a:  # same sum over examples, one more example in the count
        torch.testing.assert_close(a[k] * 3, b[k] * 2, rtol=1e-5, atol=1e-8)


def test_gradient_callable_wrong_shape_or_type(small):
    model, data = small
    with pytest.raises(ValueError, match=r"returned shape \(3,\); the model output has shape \(3, 5\)"):
        rg.score(model, data, gradient=lambda out, batch: out.sum(1))
    with pytest.raises(TypeError, match="returned list"):
        rg.score(model, data, gradient=lambda out, batch: [1.0])


def test_no_scorable_module():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))  # only the output layer
    with pytest.raises(ValueError, match="no scorable module"):
        rg.score(model, torch.randn(2, 3, 2, 2))


def test_modules_naming_missing_module(small):
    model, data = small
    with pytest.raises(ValueError, match=r"'layer9'.*not a submodule"):
        rg.score(model, data, modules=["layer9"])
    with pytest.raises(ValueError, match=r"did you mean '1'"):
        rg.score(model, data, modules="1 ")
    with pytest.raises(ValueError, match="no such module"):
        rg.score(model, data, modules=nn.LSTM)
    with pytest.raises(TypeError, match="modules= entries"):
        rg.score(model, data, modules=[3])


def test_module_not_called():
    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(torch.relu(self.used(x)))

    model = Skips()
    assert list(rg.score(model, torch.randn(3, 4))) == ["used"]  # the default skips it silently
    with pytest.raises(ValueError, match="'unused' .*not called"):
        rg.score(model, torch.randn(3, 4), modules=["unused"])


def test_nonfinite_statistics_name_module_and_batch(small):
    model, data = small
    x, t = data[1]
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(rg.NonFiniteStatisticsError, match=r"module '1' in batch 1 \(0-based\)"):
        rg.score(model, [data[0], (bad, t), data[0]])
    big = x.clone() * 1e30  # finite statistics whose squares overflow float32
    with pytest.raises(FloatingPointError, match="taylorfo_sq scores of module '1' overflow"):
        rg.score(model, [(big, t)], method=["taylorfo", "taylorfo_sq"])


def test_inplace_write_that_cannot_be_handled():
    class AddsInPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

        def forward(self, x):
            out = self.conv(x)
            out += 1.0  # destroys the pristine conv output; no BatchNorm to recover it from
            return self.head(out.mean((2, 3)))

    with pytest.raises(rg.UnsupportedModuleError, match=r"output of module 'conv' is modified in place"):
        rg.score(AddsInPlace(), torch.randn(2, 3, 6, 6))


def test_bad_arguments(small):
    model, data = small
    with pytest.raises(TypeError, match="torch.nn.Module"):
        rg.score(lambda x: x, data)
    with pytest.raises(TypeError, match="iterable of batches"):
        rg.score(model, 3)
    with pytest.raises(TypeError, match="batch 0 is a str"):
        rg.score(model, ["abc"])
    with pytest.raises(ValueError, match="max_batches"):
        rg.score(model, data, max_batches=0)
    with pytest.raises(ValueError, match="unknown backend"):
        rg.score(model, data, backend="gpu")
    with pytest.raises(rg.BackendUnavailableError, match="backend 'cuda' cannot score on cpu"):
        rg.score(model, data, backend="cuda")
    with pytest.raises(TypeError, match="seed"):
        rg.score(model, data, seed="1")
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        rg.score(model, data)


def test_output_without_logits():
    class NoLogits(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return {"sizes": [self.fc(x).shape[0]]}

    with pytest.raises(TypeError, match="cannot find the logits"):
        rg.score(NoLogits(), torch.randn(2, 3))


def test_control_flow_that_differs_from_the_probe():
    class Switches(nn.Module):
        """Feeds its conv output through the ReLU only on the first batch."""

        def __init__(self):
            super().__init__()
            self.conv, self.relu, self.head = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Linear(4, 2)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            h = self.conv(x)
            h = self.relu(h) if self.calls <= 2 else h  # call 1: probe; call 2: batch 0
            return self.head(h.mean((2, 3)))

    with pytest.raises(RuntimeError, match=r"batch 1: the output of module\(s\) \['conv'\] did not go through"):
        rg.score(Switches(), [torch.randn(2, 3, 5, 5)] * 3)


def test_works_inside_no_grad(small):
    model, data = small
    ref = rg.score(model, data)
    with torch.no_grad():
        got = rg.score(model, data)
    for k in ref:
        assert torch.equal(ref[k], got[k])
