"""The `rgprune-fast` command: score, prune, models, and its error messages (run in-process)."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import models
import numpy as np
import pytest
import torch

from rgprune_fast.cli import main
from rgprune_fast.demo import nets

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def small_model(tmp_path):
    path = tmp_path / "small.pt"
    torch.save(models.make("conv_bn_relu"), path)
    return path


@pytest.fixture()
def digit_model(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "vgg.pt"
    torch.save(nets.build("vgg", 4, 10).eval(), path)
    return path


def test_score_writes_pt_and_json(capsys, tmp_path, small_model):
    out = tmp_path / "s.pt"
    code, text, _ = run(
        capsys,
        "score",
        small_model,
        "random:3x16x16",
        "--method",
        "taylorfo",
        "taylorfo_sq",
        "--batches",
        2,
        "--batch-size",
        4,
        "--out",
        out,
        "--no-progress",
    )
    assert code == 0
    assert "scored 20 units in 2 modules over 8 examples" in text and "least important (taylorfo)" in text
    saved = torch.load(out, weights_only=True)
    assert saved["format"] == "rgprune_fast.scores" and set(saved["scores"]) == {"taylorfo", "taylorfo_sq"}
    assert saved["meta"]["input_shape"] == [3, 16, 16] and saved["meta"]["examples"] == 8
    twin = json.loads(out.with_suffix(".json").read_text())
    for method in ("taylorfo", "taylorfo_sq"):
        for name, values in twin["scores"][method].items():
            assert np.allclose(values, saved["scores"][method][name].numpy())


def test_score_embedded_digits_with_labels(capsys, tmp_path, digit_model):
    out = tmp_path / "d.json"  # --out x.json writes x.pt and x.json
    code, text, _ = run(
        capsys,
        "score",
        digit_model,
        "digits",
        "--gradient",
        "label",
        "--method",
        "all",
        "--max-batches",
        2,
        "--out",
        out,
        "--no-progress",
    )
    assert code == 0, text
    assert "UCI digits" in text and "over 64 examples" in text and out.with_suffix(".pt").is_file()


def test_score_torchvision_name_on_mnist(capsys, tmp_path):
    code, text, _ = run(
        capsys,
        "score",
        "resnet18",
        "mnist",
        "--num-classes",
        10,
        "--max-batches",
        1,
        "--batch-size",
        2,
        "--out",
        tmp_path / "r.pt",
        "--no-progress",
    )
    assert code == 0
    assert "torchvision resnet18 (random weights, seed 0, 10 classes)" in text and "scored 4800 units in 20" in text
    meta = torch.load(tmp_path / "r.pt", weights_only=True)["meta"]
    assert meta["input_shape"] == [3, 28, 28]  # grey digits repeated to the model's 3 channels


def test_score_image_folder_and_cifar_folder(capsys, tmp_path, small_model):
    from PIL import Image

    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (folder / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / label / f"{i}.png")
    code, text, _ = run(
        capsys,
        "score",
        small_model,
        folder,
        "--image-size",
        16,
        "--batch-size",
        4,
        "--out",
        tmp_path / "i.pt",
        "--no-progress",
    )
    assert code == 0 and "ImageFolder" in text and "over 6 examples" in text

    cifar = tmp_path / "cifar"
    cifar.mkdir()
    batch = {b"data": rng.integers(0, 255, (10, 3072), dtype=np.uint8), b"labels": list(range(10))}
    (cifar / "data_batch_1").write_bytes(pickle.dumps(batch))
    code, text, _ = run(
        capsys, "score", small_model, cifar, "--gradient", "random", "--out", tmp_path / "c.pt", "--no-progress"
    )
    assert code == 0 and "CIFAR-format folder" in text and "over 10 examples" in text


def _scores(capsys, tmp_path, model_spec, data="random:3x32x32", *extra):
    out = tmp_path / "scores.pt"
    code, text, _ = run(
        capsys, "score", model_spec, data, "--batches", 1, "--batch-size", 2, "--out", out, "--no-progress", *extra
    )
    assert code == 0, text
    return out


def test_prune_masked_and_physical(capsys, tmp_path):
    scores = _scores(capsys, tmp_path, "resnet18", "random:3x32x32", "--num-classes", 10)
    code, text, _ = run(capsys, "prune", "resnet18", scores, "--ratio", 0.3, "--out", tmp_path / "m.pt")
    assert code == 0, text
    assert "zeroed 1440 of 4800 scored units" in text and "parameters" in text and "MACs" in text
    masked = torch.load(tmp_path / "m.pt", weights_only=False)
    zeroed = sum(int((m.weight == 0).sum()) for m in masked.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert zeroed == 1440
    assert masked.fc.out_features == 10  # --num-classes came from the scores file

    code, text, _ = run(
        capsys,
        "prune",
        "resnet18",
        scores.with_suffix(".json"),
        "--ratio",
        0.3,
        "--physical",
        "--out",
        tmp_path / "p.pt",
    )
    assert code == 0, text
    lines = {
        line.split()[0]: line.split() for line in text.splitlines() if line.strip().startswith(("parameters", "MACs"))
    }
    assert int(lines["parameters"][2].replace(",", "")) < int(lines["parameters"][1].replace(",", ""))
    assert int(lines["MACs"][2].replace(",", "")) < int(lines["MACs"][1].replace(",", ""))
    pruned = torch.load(tmp_path / "p.pt", weights_only=False)
    assert pruned(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_prune_model_file_from_the_demo_nets(capsys, tmp_path, digit_model):
    scores = _scores(capsys, tmp_path, digit_model, "digits", "--gradient", "label")
    code, text, _ = run(
        capsys,
        "prune",
        digit_model,
        scores,
        "--ratio",
        0.25,
        "--physical",
        "--normalize-layers",
        "l2",
        "--out",
        tmp_path / "p.pt",
    )
    assert code == 0, text
    assert torch.load(tmp_path / "p.pt", weights_only=False)(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["score", "resnet81", "mnist"], "unknown model 'resnet81'.*did you mean resnet18"),
        (["score", "missing/model.pt", "mnist"], "model file 'missing/model.pt' does not exist"),
        (["score", "resnet18", "/no/such/folder"], "unknown DATA '/no/such/folder'"),
        (["score", "resnet18", "random:3xfoo"], "random:SHAPE needs the per-example shape"),
        (["score", "resnet18", "mnist", "--method", "taylor"], "unknown method 'taylor'; valid methods"),
        (["score", "resnet18", "random:3x8x8", "--weights", "nope.pt"], "weights file 'nope.pt' does not exist"),
    ],
)
def test_errors_are_one_line_and_name_the_culprit(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith(f"rgprune-fast {argv[0]}: error: ")
    assert __import__("re").search(message, err), err
    assert "Traceback" not in err


def test_unreadable_data_and_mismatched_scores(capsys, tmp_path, small_model):
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "score", small_model, tmp_path / "empty")
    assert code == 2 and "neither an ImageFolder" in err
    bad = tmp_path / "broken"
    (bad / "cls").mkdir(parents=True)
    (bad / "cls" / "x.png").write_bytes(b"not a png")
    code, _, err = run(capsys, "score", small_model, bad, "--no-progress")
    assert code == 2 and "x.png" in err
    (tmp_path / "cifar").mkdir()
    (tmp_path / "cifar" / "data_batch_1").write_bytes(b"garbage")
    code, _, err = run(capsys, "score", small_model, tmp_path / "cifar")
    assert code == 2 and "cannot read CIFAR batch" in err

    scores = _scores(capsys, tmp_path, "resnet18", "random:3x32x32", "--method", "all")
    code, _, err = run(capsys, "prune", "resnet18", scores, "--ratio", 0.2, "--out", tmp_path / "x.pt")
    assert code == 2 and "holds several criteria" in err and "--method" in err
    code, _, err = run(
        capsys, "prune", "resnet34", scores, "--ratio", 0.2, "--method", "taylorfo", "--out", tmp_path / "x.pt"
    )
    assert code == 2 and "computed for another architecture (resnet18)" in err
    code, _, err = run(
        capsys, "prune", small_model, scores, "--ratio", 0.2, "--method", "taylorfo", "--out", tmp_path / "x.pt"
    )
    assert code == 2 and "another architecture" in err
    saved = torch.load(scores, weights_only=True)
    del saved["meta"]["architecture"]  # without the fingerprint, the module check still catches it
    torch.save(saved, tmp_path / "old.pt")
    code, _, err = run(
        capsys,
        "prune",
        small_model,
        tmp_path / "old.pt",
        "--ratio",
        0.2,
        "--method",
        "taylorfo",
        "--out",
        tmp_path / "x.pt",
    )
    assert code == 2 and "scores name module 'bn1', which is not in the model" in err
    (tmp_path / "junk.pt").write_bytes(b"junk")
    code, _, err = run(capsys, "prune", "resnet18", tmp_path / "junk.pt", "--ratio", 0.2, "--out", tmp_path / "x.pt")
    assert code == 2 and "cannot read scores file" in err
    torch.save({"a": 1}, tmp_path / "other.pt")
    code, _, err = run(capsys, "prune", "resnet18", tmp_path / "other.pt", "--ratio", 0.2, "--out", tmp_path / "x.pt")
    assert code == 2 and "not an rgprune-fast scores file" in err
    code, _, err = run(
        capsys, "prune", "resnet18", scores, "--ratio", 2, "--method", "taylorfo", "--out", tmp_path / "x.pt"
    )
    assert code == 2 and "ratio must be a number in [0, 1]" in err


def test_state_dict_given_as_model_and_weights_that_do_not_fit(capsys, tmp_path):
    weights = tmp_path / "w.pt"
    torch.save(models.make("conv_bn_relu").state_dict(), weights)
    code, _, err = run(capsys, "score", weights, "random:3x16x16")
    assert code == 2 and "holds a state dict, not a model" in err and "--weights" in err
    code, _, err = run(capsys, "score", "resnet18", "random:3x16x16", "--weights", weights)
    assert code == 2 and "do not fit torchvision resnet18" in err


def test_missing_torch_pruning_is_named(capsys, tmp_path, monkeypatch):
    scores = _scores(capsys, tmp_path, "resnet18")
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "rgprune_fast.pruning.tp_adaptor", raising=False)
    code, _, err = run(capsys, "prune", "resnet18", scores, "--ratio", 0.2, "--physical", "--out", tmp_path / "x.pt")
    assert code == 2 and "'torch-pruning', which is not installed: pip install torch-pruning" in err


def test_timm_models_through_a_stand_in(capsys, tmp_path, monkeypatch):
    """timm is optional and not installed in CI: a stand-in module checks the code path."""
    from types import SimpleNamespace

    fake = SimpleNamespace(
        list_models=lambda: ["tiny_net"],
        create_model=lambda name, pretrained, num_classes: models.conv_bn_relu(num_classes),
    )
    monkeypatch.setitem(sys.modules, "timm", fake)
    code, text, _ = run(
        capsys,
        "score",
        "timm:tiny_net",
        "random:3x16x16",
        "--num-classes",
        5,
        "--out",
        tmp_path / "t.pt",
        "--no-progress",
    )
    assert code == 0 and "timm tiny_net" in text
    code, _, err = run(capsys, "score", "timm:other", "random:3x16x16")
    assert code == 2 and "unknown timm model 'other'" in err


def test_models_listing_and_python_dash_m(capsys):
    code, text, _ = run(capsys, "models")
    assert code == 0 and "resnet18" in text.split() and "mobilenet_v2" in text.split()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "rgprune_fast", "--help"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and "demo" in done.stdout and "score" in done.stdout and "prune" in done.stdout
