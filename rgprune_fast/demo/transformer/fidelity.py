"""How much a pruned encoder still computes what the unpruned one computes, on the evaluation set:

* ``cosine``: the mean cosine similarity of each sentence's pruned and unpruned embedding (1 = identical
  directions);
* ``spearman``: the Spearman rank correlation between the pruned and the unpruned model's pairwise
  cosine-similarity matrices (upper triangle, diagonal excluded): does the pruned model still order
  sentence pairs by similarity as the original does (what retrieval and clustering use)?
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...pruning import apply_masks
from .encoder import embed


@dataclass(frozen=True)
class Fidelity:
    cosine: float
    spearman: float


def ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor, ties given their average rank (as ``scipy.stats.rankdata``)."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    return (ends - (counts.double() - 1) / 2)[inverse]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors of equal length (average ranks for ties; 0 when
    either is constant)."""
    if a.shape != b.shape or a.dim() != 1:
        raise ValueError(f"spearman() takes two 1-D tensors of one length, got {tuple(a.shape)} and {tuple(b.shape)}")
    ra, rb = ranks(a.double()), ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = (ra.norm() * rb.norm()).item()
    return (ra @ rb).item() / denominator if denominator > 0 else 0.0


def mean_cosine(reference: torch.Tensor, other: torch.Tensor) -> float:
    """The mean over rows of the cosine similarity of ``reference[i]`` and ``other[i]``."""
    return F.cosine_similarity(reference.double(), other.double(), dim=1, eps=1e-12).mean().item()


def similarity_pairs(embeddings: torch.Tensor) -> torch.Tensor:
    """The cosine similarity of every pair of rows ``i < j``, flattened (row-major upper triangle)."""
    unit = F.normalize(embeddings.double(), dim=1, eps=1e-12)
    i, j = torch.triu_indices(len(unit), len(unit), offset=1)
    return (unit @ unit.T)[i, j]


def fidelity(
    reference: torch.Tensor, embeddings: torch.Tensor, reference_pairs: torch.Tensor | None = None
) -> Fidelity:
    """Both measures for ``embeddings`` against the unpruned ``reference`` (``reference_pairs``:
    ``similarity_pairs(reference)``, when it is at hand)."""
    if reference.shape != embeddings.shape:
        raise ValueError(f"embeddings of shape {tuple(embeddings.shape)} vs reference {tuple(reference.shape)}")
    pairs = similarity_pairs(reference) if reference_pairs is None else reference_pairs
    return Fidelity(mean_cosine(reference, embeddings), spearman(pairs, similarity_pairs(embeddings)))


class Evaluator:
    """The unpruned embeddings of the evaluation batches, and the fidelity of masked variants of the
    same encoder."""

    def __init__(self, encoder: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> None:
        self.encoder = encoder
        self.batches = list(batches)
        self.reference = embed(encoder, self.batches)
        self.pairs = similarity_pairs(self.reference)

    def embeddings(self, keep: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The evaluation set's embeddings with the units ``keep`` marks False masked (zeroed)."""
        if not keep:
            return embed(self.encoder, self.batches)
        with apply_masks(self.encoder, keep):
            return embed(self.encoder, self.batches)

    def __call__(self, keep: dict[str, torch.Tensor] | None = None) -> Fidelity:
        return fidelity(self.reference, self.embeddings(keep), self.pairs)
