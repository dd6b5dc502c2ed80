"""The physical pruning check: slice the masked heads and neurons out of a copy of the encoder
(``prune_transformer``), save it (``save_pruned``), reload it in a fresh Python process
(``load_pruned``) and measure its fidelity there, against the masked encoder's.

Run as ``python -m rgprune_fast.demo.transformer.physical FOLDER INPUTS RESULT``: loads the pruned
checkpoint in FOLDER, embeds the sentences of INPUTS (a ``torch.save``d dict: ``sentences``,
``batch_size``, ``max_length``, ``reference``, ``threads``) and writes the fidelity, the parameter count
and the embeddings to RESULT (``torch.save``).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .fidelity import Evaluator, fidelity


@dataclass(frozen=True)
class PhysicalCheck:
    scorer: str
    allocation: str
    folder: Path
    params_before: int
    params_after: int  # the sliced model in this process
    params_reloaded: int  # the model the fresh process loaded
    masked_cosine: float
    masked_spearman: float
    sliced_cosine: float  # the sliced model, in this process
    sliced_spearman: float
    reloaded_cosine: float  # the saved model reloaded in a fresh process
    reloaded_spearman: float
    max_difference: float  # largest |masked - reloaded| over every embedding entry
    seconds: float  # the fresh process, start-up included

    @property
    def equal(self) -> bool:
        """The reloaded model computes what the masked one computes (up to float32 rounding)."""
        return self.max_difference < 1e-4 and abs(self.reloaded_cosine - self.masked_cosine) < 1e-6


def check(
    encoder: nn.Module,
    tokenizer,
    evaluator: Evaluator,
    keep: dict[str, torch.Tensor],
    folder: Path,
    *,
    sentences: list[str],
    batch_size: int,
    max_length: int,
    scorer: str,
    allocation: str,
) -> PhysicalCheck:
    """Prune a copy of ``encoder`` by ``keep``, save it into ``folder``, reload it in a fresh process and
    compare. ``sentences`` (in order), ``batch_size`` and ``max_length`` must be those of
    ``evaluator``'s batches."""
    import time

    from ...pruning.hf_checkpoint import save_pruned
    from ...pruning.hf_slicing import prune_transformer

    masked = evaluator.embeddings(keep)
    masked_fidelity = fidelity(evaluator.reference, masked, evaluator.pairs)
    sliced = copy.deepcopy(encoder)
    report = prune_transformer(sliced, keep)
    sliced_fidelity = fidelity(evaluator.reference, Evaluator(sliced, evaluator.batches).reference, evaluator.pairs)
    folder.mkdir(parents=True, exist_ok=True)
    save_pruned(sliced.bert, folder, tokenizer=tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        inputs, result = Path(tmp) / "inputs.pt", Path(tmp) / "result.pt"
        torch.save(
            {
                "sentences": list(sentences),
                "batch_size": batch_size,
                "max_length": max_length,
                "reference": evaluator.reference,
                "threads": torch.get_num_threads(),
            },
            inputs,
        )
        started = time.perf_counter()
        # the fresh process imports this very copy of rgprune_fast (a checkout not installed too)
        paths = [
            str(Path(__file__).resolve().parents[3]),
            *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)),
        ]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        done = subprocess.run(
            [sys.executable, "-m", __name__, str(folder), str(inputs), str(result)],
            capture_output=True,
            text=True,
            env=env,
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"reloading the pruned model in a fresh process failed:\n{done.stderr[-3000:]}")
        reloaded = torch.load(result)
    return PhysicalCheck(
        scorer,
        allocation,
        folder,
        report["params_before"],
        report["params_after"],
        reloaded["params"],
        masked_fidelity.cosine,
        masked_fidelity.spearman,
        sliced_fidelity.cosine,
        sliced_fidelity.spearman,
        reloaded["cosine"],
        reloaded["spearman"],
        (reloaded["embeddings"] - masked).abs().max().item(),
        seconds,
    )


def _fresh_process(folder: str, inputs: str, result: str) -> None:
    """The fresh process: load the pruned checkpoint as nothing but a folder, embed, measure."""
    from ...pruning.hf_checkpoint import load_pruned
    from .encoder import SentenceEncoder, embed, import_transformers, tokenize

    given = torch.load(inputs)
    torch.set_num_threads(given["threads"])
    tf = import_transformers()
    tf.logging.set_verbosity_error()
    tf.logging.disable_progress_bar()
    encoder = SentenceEncoder(load_pruned(folder).float().eval())
    tokenizer = tf.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    batches = tokenize(tokenizer, given["sentences"], batch_size=given["batch_size"], max_length=given["max_length"])
    embeddings = embed(encoder, batches)
    measured = fidelity(given["reference"], embeddings)
    params = sum(p.numel() for p in encoder.parameters())
    torch.save(
        {"cosine": measured.cosine, "spearman": measured.spearman, "params": params, "embeddings": embeddings}, result
    )


if __name__ == "__main__":
    _fresh_process(*sys.argv[1:4])
