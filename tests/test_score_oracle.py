"""score() against the float64 brute-force oracle: every criterion x gradient mode x normalize, on
conv nets with in-place ops (torchvision ResNet / MobileNetV2 / DenseNet), a VGG without BatchNorm,
[N, C] and [N, T, C] MLPs, channels_last inputs, and several batches of different sizes."""

import copy

import models
import pytest
import torch
from oracle import oracle_scores
from reference import rel_err

import rgprune_fast as rg
from rgprune_fast.scorers import naive

METHODS = list(rg.METHODS)


def wavy_gradient(output, batch):
    """A deterministic custom output gradient (the callable mode)."""
    return torch.sin(3 * output) + 0.1


GRADIENTS = {"label": "label", "random": "random", "callable": wavy_gradient}


def assert_close(ours, ref, tol):
    assert list(ours) == list(ref)
    for method in ref:
        assert list(ours[method]) == list(ref[method])
        for name, value in ref[method].items():
            got = ours[method][name]
            assert got.shape == value.shape, (method, name)
            assert got.device.type == "cpu"
            err = rel_err(got, value)
            assert err <= tol, f"{method} {name}: relative error {err:.3g} > {tol}"


@pytest.fixture(scope="module", params=models.ZOO)
def model_and_data(request):
    return request.param, models.make(request.param), models.batches(request.param)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("gradient", GRADIENTS)
def test_float32_matches_oracle(model_and_data, gradient, normalize):
    name, model, data = model_and_data
    ours = rg.score(model, data, method=METHODS, gradient=GRADIENTS[gradient], normalize=normalize, seed=7)
    names = models.expected_units(name, model)
    for method in METHODS:
        assert all(v.dtype == torch.float32 for v in ours[method].values())
    ref = oracle_scores(model, data, names, METHODS, GRADIENTS[gradient], normalize, seed=7, dtype=None)
    assert_close(ours, ref, 1e-5)


@pytest.mark.parametrize("gradient", ["label", "random"])
def test_float64_is_exact(model_and_data, gradient):
    """A float64 model scores in float64: the taps' mathematics agree with the oracle to rounding."""
    name, model, data = model_and_data
    model64 = copy.deepcopy(model).double()
    data64 = [(x.double(), t) for x, t in data]
    ours = rg.score(model64, data64, method=METHODS, gradient=gradient, seed=1)
    ref = oracle_scores(model, data, models.expected_units(name, model), METHODS, gradient, True, seed=1)
    assert_close(ours, ref, 1e-10)


@pytest.mark.parametrize("name", ["conv_bn_relu", "resnet18", "vgg_no_bn"])
def test_channels_last(name):
    model = models.make(name).to(memory_format=torch.channels_last)
    data = models.batches(name, channels_last=True)
    ours = rg.score(model, data, method=METHODS, gradient="label")
    ref = oracle_scores(model, data, models.expected_units(name, model), METHODS, "label", True, dtype=None)
    assert_close(ours, ref, 1e-5)


@pytest.mark.parametrize("name", ["conv_bn_relu", "token_mlp", "resnet18"])
def test_naive_matches_oracle(name):
    model, data = models.make(name), models.batches(name)
    ours = naive.score(model, data, method=METHODS, gradient="random", seed=2)
    ref = oracle_scores(model, data, models.expected_units(name, model), METHODS, "random", True, seed=2, dtype=None)
    assert_close(ours, ref, 1e-5)


class SharedBlock(torch.nn.Module):
    """One Conv-BN pair and one Linear applied twice per forward: statistics add up over calls."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.relu = torch.nn.ReLU(inplace=True)
        self.fc = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        for _ in range(2):
            x = self.relu(self.bn(self.conv(x)))
        h = x.mean((2, 3))
        h = self.fc(torch.relu(self.fc(h)))
        return self.head(h)


def test_module_called_twice():
    model = models.randomize(SharedBlock()).eval()
    data = [(torch.randn(3, 4, 6, 6), torch.tensor([0, 1, 2])), (torch.randn(2, 4, 6, 6), torch.tensor([2, 2]))]
    ours = rg.score(model, data, method=METHODS, gradient="label")
    assert list(ours["taylorfo"]) == ["bn", "fc"]
    ref = oracle_scores(model, data, ["bn", "fc"], METHODS, "label", True, dtype=None)
    assert_close(ours, ref, 1e-5)


def test_bfloat16_model():
    """bf16 activations, float32 statistics: as close to the oracle (on the same bf16 activations) as
    bf16 itself allows (the BN output PyTorch hands on is rounded to bf16; our statistic is not)."""
    model = models.make("conv_bn_relu").to(torch.bfloat16)
    data = [(x.to(torch.bfloat16), t) for x, t in models.batches("conv_bn_relu")]
    ours = rg.score(model, data, method=METHODS[:4], gradient="label")
    assert all(v.dtype == torch.float32 for v in ours["taylorfo_sq"].values())
    ref = oracle_scores(model, data, ["1", "4"], METHODS[:4], "label", True, dtype=None)
    assert_close(ours, ref, 2e-2)


def test_single_method_returns_flat_dict():
    model, data = models.make("conv_bn_relu"), models.batches("conv_bn_relu")
    flat = rg.score(model, data, method="taylorfo_abs")
    both = rg.score(model, data, method=["taylorfo_abs", "taylorfo"])
    assert list(flat) == ["1", "4"]
    for name in flat:
        assert torch.equal(flat[name], both["taylorfo_abs"][name])


def test_determinism_bit_identical():
    model, data = models.make("resnet18"), models.batches("resnet18")
    a = rg.score(model, data, method=METHODS, seed=5)
    b = rg.score(model, data, method=METHODS, seed=5)
    c = rg.score(model, data, method=METHODS, seed=6)
    for m in METHODS:
        for name in a[m]:
            assert torch.equal(a[m][name], b[m][name])
    assert not torch.equal(a["taylorfo_sq"]["bn1"], c["taylorfo_sq"]["bn1"])
