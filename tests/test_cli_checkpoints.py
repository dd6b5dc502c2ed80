"""`rgprune-fast score` / `prune` on a Hugging Face checkpoint folder: text data tokenized with the
checkpoint's tokenizer, per-kind ratios, physical pruning into a checkpoint that loads back with
``load_pruned`` and computes what the masked model computes."""

import re

import models
import pytest
import torch

from rgprune_fast.cli import main, scores_file
from rgprune_fast.pruning import apply_masks, kinds_of, masks

pytestmark = pytest.mark.skipif(models.import_transformers() is None, reason="transformers is not installed")

WORDS = [
    "the",
    "a",
    "model",
    "prunes",
    "heads",
    "and",
    "neurons",
    "of",
    "every",
    "layer",
    "to",
    "keep",
    "what",
    "matters",
    "most",
]
LINES = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(3 + i % 5)) for i in range(24)]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random BERT with a WordPiece tokenizer, saved as a Hugging Face checkpoint folder."""
    tf = models.import_transformers()
    folder = tmp_path_factory.mktemp("bert")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS))]) + "\n")
    tokenizer = tf.BertTokenizerFast(vocab_file=str(vocab))
    torch.manual_seed(0)
    config = tf.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                           vocab_size=len(tokenizer), max_position_embeddings=64)  # fmt: skip
    tf.BertModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    text = folder.parent / "lines.txt"
    text.write_text("\n".join(LINES) + "\n")
    return folder, text


def _outputs(model, tokenizer):
    batch = tokenizer(LINES[:6], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).last_hidden_state


@pytest.mark.parametrize("physical", [True, False])
def test_score_and_prune_a_checkpoint(capsys, tmp_path, checkpoint, physical):
    tf = models.import_transformers()
    folder, text = checkpoint
    scores_path = tmp_path / "s.pt"
    code, out, err = run(
        capsys, "score", folder, f"text:{text}", "--batch-size", 8, "--no-progress", "--out", scores_path
    )
    assert code == 0, err
    assert "over 24 examples" in out
    scores = scores_file.load(scores_path)[0]["taylorfo_sq"]
    assert {kind for kind in kinds_of(scores).values()} == {"heads", "neurons"}

    out_folder = tmp_path / "pruned"
    argv = ["prune", folder, scores_path, "--ratio", "heads=0.25,neurons=0.5", "--allocation", "uniform"]
    code, out, err = run(capsys, *argv, *(["--physical"] if physical else []), "--out", out_folder)
    assert code == 0, err
    assert ("removed" if physical else "zeroed") + " 2 heads, 48 neurons (uniform allocation" in out

    from rgprune_fast.pruning.hf_checkpoint import load_pruned

    reloaded = load_pruned(out_folder)
    original = tf.BertModel.from_pretrained(folder).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(out_folder)
    keep = masks(scores, ratio={"heads": 0.25, "neurons": 0.5}, allocation="uniform")
    with apply_masks(original, keep):
        expected = _outputs(original, tokenizer)
    torch.testing.assert_close(_outputs(reloaded, tokenizer), expected, rtol=1e-5, atol=1e-5)
    attention = reloaded.encoder.layer[0].attention.output.dense
    assert attention.in_features == (24 if physical else 32)
    assert reloaded.encoder.layer[1].output.dense.in_features == (24 if physical else 48)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["score", "{folder}", "mnist"], "DATA for a Hugging Face checkpoint is docstrings or text:FILE"),
        (["score", "{folder}", "text:/no/such/file"], "cannot read text DATA"),
        (["score", "{folder}", "docstrings", "--weights", "w.pt"], "--weights is for model names"),
        (["prune", "{folder}", "{scores}", "--ratio", "head=0.2"], "names unit kind 'head', which the scores do not"),
        (["prune", "{folder}", "{scores}", "--ratio", "heads=x"], "--ratio .heads=x.: .x. is not a number"),
        (
            ["prune", "{folder}", "{scores}", "--ratio", "heads=2"],
            r"--ratio .heads=2.: the fraction must be in \[0, 1\]",
        ),
        (["prune", "resnet18", "{scores}", "--ratio", "heads=0.2", "--physical"], "takes one --ratio"),
    ],
)
def test_checkpoint_errors_are_one_line(capsys, tmp_path, checkpoint, argv, message):
    folder, text = checkpoint
    scores = tmp_path / "s.pt"
    assert run(capsys, "score", folder, f"text:{text}", "--no-progress", "--out", scores)[0] == 0
    argv = [a.format(folder=folder, scores=scores) for a in argv]
    code, _, err = run(capsys, *argv, "--out", tmp_path / "out")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
