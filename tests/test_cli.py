"""The `rgprune-fast` command: score, prune, models, and its error messages (run in-process)."""

import contextlib
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import models
import numpy as np
import pytest
import torch

from rgprune_fast.cli import dispatch, main, prune_cmd, score_cmd, scores_file
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
    assert re.search(message, err), err
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


# --- Hardening: one-line errors before any work, atomic outputs, Ctrl-C at any moment ---------------


def _one_line(err: str) -> bool:
    return err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["score", "--batches", "0"], r"argument --batches: must be a positive integer, got 0"),
        (["score", "--batch-size", "0"], r"argument --batch-size: must be a positive integer, got 0"),
        (["score", "--max-batches", "0"], r"argument --max-batches: must be a positive integer, got 0"),
        (["score", "--num-classes", "0"], r"argument --num-classes: must be a positive integer, got 0"),
        (["score", "--num-classes", "-3"], r"argument --num-classes: must be a positive integer, got -3"),
        (["score", "--image-size", "0"], r"argument --image-size: must be a positive integer"),
        (["score", "--batch-size", "abc"], r"argument --batch-size: expected a positive integer, got 'abc'"),
        (["score", "--device", "bogus"], r"--device 'bogus' is not a device torch knows"),
        (["score", "--device", "meta"], r"--device meta holds no data"),
        (["prune", "--ratio", "nan"], r"--ratio must be a number in \[0, 1\], got nan"),
        (["prune", "--ratio", "-0.1"], r"--ratio must be a number in \[0, 1\], got -0.1"),
        (["prune", "--ratio", "1.5"], r"--ratio must be a number in \[0, 1\], got 1.5"),
        (["prune", "--ratio", "1", "--physical"], r"--ratio 1 with --physical would remove every unit"),
        (["prune", "--num-classes", "0"], r"argument --num-classes: must be a positive integer, got 0"),
        (["demo", "--threads", "0"], r"argument --threads: must be a positive integer, got 0"),
    ],
)
def test_bad_arguments_fail_in_one_line_before_loading_anything(capsys, tmp_path, argv, message):
    """MODEL and SCORES do not exist: each mistake must be reported before they are even looked at."""
    command, options = argv[0], argv[1:]
    positional = {"score": ["missing/model.pt", "random:3x8x8"], "prune": ["missing/model.pt", tmp_path / "no.pt"]}
    required = ["--ratio", "0.5"] if command == "prune" and "--ratio" not in options else []
    out = ["--out", tmp_path / "out" / "x.pt"] if command != "demo" else ["--out", tmp_path / "demo"]
    code, text, err = run(capsys, command, *positional.get(command, []), *options, *required, *out)
    assert code == 2 and text == ""
    assert _one_line(err) and err.startswith(f"rgprune-fast {command}: error: "), err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists() and not (tmp_path / "demo").exists()


def test_cuda_device_without_cuda_fails_before_loading(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        code, _, err = run(capsys, "score", "missing/model.pt", "random:3x8x8", "--device", device)
        assert code == 2 and _one_line(err), err
        assert f"--device {device}: CUDA is not available" in err and "use --device cpu" in err


@pytest.mark.parametrize(
    ("model", "data", "shape"),
    [("resnet18", "random:5x7", "5x7"), ("small", "random:1x16x16", "1x16x16"), ("small", "random:3x16", "3x16")],
)
def test_data_that_does_not_fit_the_model_is_one_line(capsys, tmp_path, small_model, model, data, shape):
    spec = small_model if model == "small" else model
    code, text, err = run(capsys, "score", spec, data, "--out", tmp_path / "s.pt", "--no-progress")
    assert code == 2 and _one_line(err), err
    described = f"model file {small_model}" if model == "small" else "torchvision resnet18"
    assert f"DATA {data} (examples of shape {shape}) does not fit {described}" in err
    assert "scored" not in text and list(tmp_path.glob("s.*")) == []


def test_unwritable_out_fails_before_any_work(capsys, tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("loaded something before checking --out")

    monkeypatch.setattr(score_cmd, "load_model", no_work)
    monkeypatch.setattr(prune_cmd, "load_model", no_work)
    monkeypatch.setattr(scores_file, "load", no_work)
    (tmp_path / "a_file").write_text("")
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_folder" / "x.json").mkdir()  # score's .json twin would be a folder
    cases = [
        (tmp_path / "a_file" / "sub" / "s.pt", "is a file, not a folder"),
        (tmp_path / "a_folder", "is a folder; give a file name"),
        (tmp_path / "a_folder" / "x.pt", "is a folder; give a file name"),
    ]
    if os.geteuid() != 0:  # root writes into read-only folders
        (tmp_path / "read_only").mkdir(mode=0o500)
        cases.append((tmp_path / "read_only" / "s.pt", "is not writable"))
    for out, message in cases:
        code, _, err = run(capsys, "score", "resnet18", "random:3x8x8", "--out", out)
        assert code == 2 and _one_line(err) and message in err, err
        if out.suffix != ".pt" or out.parent.name != "a_folder":  # prune writes no .json twin
            code, _, err = run(capsys, "prune", "resnet18", tmp_path / "s.pt", "--ratio", 0.5, "--out", out)
            assert code == 2 and _one_line(err) and message in err, err
    code, _, err = run(capsys, "demo", "--out", tmp_path / "a_file", "--no-cache")
    assert code == 2 and _one_line(err) and "is a file, not a folder" in err


@pytest.fixture(scope="module")
def scores_json(tmp_path_factory):
    """A valid scores file of the Conv-BN-ReLU test model (as JSON) and that model's file."""
    folder = tmp_path_factory.mktemp("scores")
    model = folder / "small.pt"
    torch.save(models.make("conv_bn_relu"), model)
    out = folder / "s.json"
    assert main(["score", str(model), "random:3x16x16", "--batches", "1", "--out", str(out), "--no-progress"]) == 0
    return model, json.loads(out.read_text())


def _set(payload: dict, path: str, value) -> dict:
    """``payload`` (deep-copied) with the field at the slash-separated ``path`` set to ``value``."""
    payload = json.loads(json.dumps(payload))
    *parents, last = path.split("/")
    target = payload
    for key in parents:
        target = target[key]
    target[last] = value
    return payload


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("scores", [1.0, 2.0], "'scores' must map each method to {module: scores}, got a list"),
        ("scores", {}, "'scores' must map each method to {module: scores}, got a dict"),
        ("scores/taylorfo_sq", "high", "'scores' of method 'taylorfo_sq' must map module names to scores, got str"),
        ("scores/taylorfo_sq/1", ["0.5"] * 8, "the scores of taylorfo_sq/1 must be a non-empty list of numbers, got a"),
        ("scores/taylorfo_sq/1", "0.5", "the scores of taylorfo_sq/1 must be a non-empty list of numbers, got str"),
        ("scores/taylorfo_sq/1", [[0.5]] * 8, "must be a non-empty list of numbers, got a list holding a list"),
        ("scores/taylorfo_sq/1", [], "must be a non-empty list of numbers, got a list"),
        ("scores/taylorfo_sq/1", [True] * 8, "must be a non-empty list of numbers, got a list holding bool"),
        ("scores/taylorfo_sq/1", [float("inf")] * 8, "the scores of taylorfo_sq/1 are not all finite numbers"),
        ("meta", ["not", "a", "dict"], "'meta' must be a dict, got a list"),
        ("meta/input_shape", [3, -16, 16], "meta 'input_shape' must be a list of positive integers, got a list"),
        ("meta/input_shape", "3x16x16", "meta 'input_shape' must be a list of positive integers, got str"),
        ("meta/input_shape", [3, 16.5, 16], "meta 'input_shape' must be a list of positive integers"),
        ("meta/num_classes", "10", "meta 'num_classes' must be a positive integer, got str '10'"),
        ("meta/seed", 1.5, "meta 'seed' must be an integer, got float 1.5"),
        ("meta/architecture", 42, "meta 'architecture' must be a string, got int 42"),
    ],
)
def test_scores_files_with_wrong_field_types_are_one_line(capsys, tmp_path, scores_json, field, value, message):
    model, valid = scores_json
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_set(valid, field, value)))
    code, _, err = run(capsys, "prune", model, path, "--ratio", 0.5, "--out", tmp_path / "p.pt")
    assert code == 2 and _one_line(err), err
    assert f"scores file {str(path)!r} is malformed: " in err and message in err, err
    assert not (tmp_path / "p.pt").exists()


def test_a_valid_scores_file_still_prunes(capsys, tmp_path, scores_json):
    """The baseline the malformed files above are made from is accepted (so the checks are what fail them)."""
    model, valid = scores_json
    path = tmp_path / "good.json"
    path.write_text(json.dumps(_set(valid, "meta/seed", None)))  # a seed not recorded: 0
    code, text, err = run(capsys, "prune", model, path, "--ratio", 0.5, "--out", tmp_path / "p.pt")
    assert code == 0 and err == "" and "zeroed" in text and (tmp_path / "p.pt").is_file()


def _score_small(capsys, small_model, out):
    return run(capsys, "score", small_model, "random:3x16x16", "--batches", 1, "--out", out, "--no-progress")


def test_score_renames_the_json_before_the_pt(capsys, tmp_path, small_model, monkeypatch):
    renamed = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append(Path(dst).name), replace(src, dst)))
    code, _, _ = _score_small(capsys, small_model, tmp_path / "s.pt")
    assert code == 0 and renamed == ["s.json", "s.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "s.pt", "small.pt"]


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_failed_score_writes_leave_the_old_outputs_and_no_temporaries(capsys, tmp_path, small_model, error):
    out = tmp_path / "s.pt"
    assert _score_small(capsys, small_model, out)[0] == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    save = torch.save

    def broken_save(obj, f):  # half a file, then the failure
        save(obj, f)
        f.truncate(10)
        raise error("disk full")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scores_file.torch, "save", broken_save)
        code, _, err = _score_small(capsys, small_model, out)
    assert code == (130 if error is KeyboardInterrupt else 2) and _one_line(err), err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_ctrl_c_between_the_renames_waits_until_both_are_done(capsys, tmp_path, small_model, monkeypatch):
    """A SIGINT that arrives after the .json is renamed is held back until the .pt is renamed too."""
    replace = os.replace

    def replace_then_interrupt(src, dst):
        replace(src, dst)
        if Path(dst).suffix == ".json":
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the signal is delivered: without holding it back, the .pt is never renamed

    monkeypatch.setattr(os, "replace", replace_then_interrupt)
    code, _, err = _score_small(capsys, small_model, tmp_path / "s.pt")
    assert code == 130 and err == "rgprune-fast: interrupted\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "s.pt", "small.pt"]
    assert torch.load(tmp_path / "s.pt", weights_only=True)["meta"]["examples"] == 32


def test_failed_prune_write_leaves_no_file(capsys, tmp_path, scores_json, monkeypatch):
    model, valid = scores_json
    (tmp_path / "s.json").write_text(json.dumps(valid))

    def broken_save(obj, f):
        f.write(b"half a model")
        raise OSError("No space left on device")

    monkeypatch.setattr(prune_cmd.torch, "save", broken_save)
    code, _, err = run(capsys, "prune", model, tmp_path / "s.json", "--ratio", 0.5, "--out", tmp_path / "p" / "p.pt")
    assert code == 2 and _one_line(err) and "No space left on device" in err
    assert list((tmp_path / "p").iterdir()) == []


def test_an_error_after_ctrl_c_is_the_interrupt(capsys, monkeypatch):
    """A module that Ctrl-C left half imported fails later with another error: that error is the interrupt's,
    not a user error to report."""

    def half_imported(args):
        raise OSError("cannot load module more than once per process")

    monkeypatch.setattr(score_cmd, "run", half_imported)
    with pytest.raises(KeyboardInterrupt):
        dispatch(["score", "m.pt", "random:3x8x8"], interrupted=lambda: True)
    assert dispatch(["score", "m.pt", "random:3x8x8"]) == 2


# Ctrl-C in a real process: the console script as pip installs it (next to this Python), else the same
# wrapper around pyproject's entry point.
WRAPPER = "import sys; from rgprune_fast_entry import main; sys.exit(main())"
SLOW_SCORE = ["score", "resnet18", "random:3x32x32", "--num-classes", "10", "--batch-size", "4", "--batches", "200"]


def test_the_console_script_imports_nothing_heavy_before_main():
    scripts = re.search(
        r"\[project\.scripts\]\n(?:#.*\n)*rgprune-fast = \"(.+)\"", (ROOT / "pyproject.toml").read_text()
    )
    assert scripts and scripts.group(1) == "rgprune_fast_entry:main"
    heavy = "('torch', 'numpy', 'rgprune_fast')"
    check = f"import sys, rgprune_fast_entry; print(sorted(m for m in {heavy} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=_env(), timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def _console_script() -> list[str]:
    script = Path(sys.executable).with_name("rgprune-fast")
    if script.is_file() and "rgprune_fast_entry" in script.read_text(errors="replace"):
        return [str(script)]
    return [sys.executable, "-c", WRAPPER]


def _until_torch_is_mapped(process: subprocess.Popen) -> None:
    """Wait until the process has loaded torch's shared library: the entry point installed its handler
    before anything imported torch. (Ctrl-C during Python's own start-up, before the console script runs,
    is Python's: nothing of ours can catch it.)"""
    maps = Path(f"/proc/{process.pid}/maps")
    if not Path("/proc/self/maps").exists():
        time.sleep(0.5)
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError):
            if "libtorch" in maps.read_text():
                return
        time.sleep(0.002)
    raise AssertionError("the process never loaded torch")


def _until_scoring(process: subprocess.Popen) -> None:
    """Wait for the line ``score`` prints just before the scoring loop."""
    for line in process.stdout:
        if line.startswith("data: "):
            return
    raise AssertionError("the process ended before scoring")


def _interrupt(tmp_path, command, wait, delay: float, presses: int = 1) -> None:
    out = tmp_path / f"out-{wait.__name__}-{delay}-{presses}"
    process = subprocess.Popen(
        [*command, *SLOW_SCORE, "--out", out / "s.pt", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        wait(process)
        time.sleep(delay)
        for _ in range(presses):
            process.send_signal(signal.SIGINT)
            time.sleep(0.005)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    where = f"Ctrl-C {delay} s after {wait.__name__}"
    assert process.returncode == 130, f"{where}: status {process.returncode}, stderr {err[-2000:]}"
    assert err == "rgprune-fast: interrupted\n", f"{where}: {err[-2000:]}"
    assert not out.exists(), f"{where}: {list(out.iterdir())}"  # no output, not even a temporary file


def test_ctrl_c_during_start_up_imports(tmp_path):
    """Importing torch (and torchvision, on the way to the model) takes seconds: Ctrl-C at any point of it."""
    for delay in (0.0, 0.05, 0.15, 0.3, 0.5, 0.8, 1.2, 1.8, 2.6):
        _interrupt(tmp_path, _console_script(), _until_torch_is_mapped, delay)


def test_ctrl_c_while_scoring(tmp_path):
    _interrupt(tmp_path, _console_script(), _until_scoring, 0.0)
    _interrupt(tmp_path, _console_script(), _until_scoring, 0.5, presses=2)
    _interrupt(tmp_path, [sys.executable, "-m", "rgprune_fast"], _until_scoring, 0.2)


@pytest.mark.parametrize(
    ("after", "status"),
    [
        ("time.sleep(30)", "the command goes on: the watchdog ends it"),
        ("return 0", "the command goes on to its end"),
        ("raise ImportError('half imported')", "a module left half imported fails later"),
    ],
)
def test_a_swallowed_ctrl_c_still_ends_the_command(after, status):
    """C code that calls back into Python can catch the KeyboardInterrupt (torch's start-up does, while it
    imports numpy): the command still ends with status 130 and one line, at the latest after the grace time."""
    dispatch_stand_in = (
        "import os, signal, sys, time, types\n"
        "def dispatch(interrupted):\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        time.sleep(30)\n"
        "    except KeyboardInterrupt:\n"
        "        pass  # swallowed\n"
        f"    {after}\n"
        "sys.modules['rgprune_fast.cli'] = types.SimpleNamespace(dispatch=dispatch)\n"
        f"{WRAPPER}\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", dispatch_stand_in], capture_output=True, text=True, env=_env(), timeout=60
    )
    assert done.returncode == 130 and done.stderr == "rgprune-fast: interrupted\n", (status, done.stderr)
    assert time.monotonic() - started < 20
