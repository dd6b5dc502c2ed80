"""The ground truth for attention heads: the measured damage of removing each head alone,
``1 − mean cosine`` of the masked and unmasked embeddings on the evaluation set (one masked evaluation
per head), and how well each scorer's head scores rank the heads by it (Spearman)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .fidelity import Evaluator, spearman
from .units import HEADS, bert_layers, of_kind, unit_groups


class _Replay(nn.Module):
    """Stands in for an encoder layer: returns that layer's recorded outputs, one per call, in order."""

    def __init__(self, outputs: list) -> None:
        super().__init__()
        self.outputs, self.calls = outputs, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.outputs[self.calls - 1]


@torch.no_grad()
def layer_outputs(evaluator: Evaluator) -> list[list]:
    """Every encoder layer's output for every evaluation batch, in order (one unmasked pass)."""
    _, layers = bert_layers(evaluator.encoder)
    recorded: list[list] = [[] for _ in layers]
    handles = [
        layer.register_forward_hook(lambda module, args, out, i=i: recorded[i].append(out))
        for i, layer in enumerate(layers)
    ]
    try:
        evaluator.embeddings()
    finally:
        for h in handles:
            h.remove()
    return recorded


@contextmanager
def replaying(evaluator: Evaluator, recorded: list[list], upto: int) -> Iterator[None]:
    """Layers ``0 .. upto - 1`` replay their recorded outputs instead of computing them: exact (the
    same inputs give the same outputs) as long as nothing is masked below layer ``upto``."""
    _, layers = bert_layers(evaluator.encoder)
    originals = [layers[i] for i in range(upto)]
    stubs = [_Replay(recorded[i]) for i in range(upto)]
    for i, stub in enumerate(stubs):
        layers[i] = stub
    try:
        yield
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
    for stub in stubs:
        if stub.calls != len(stub.outputs):
            raise RuntimeError(f"a replayed layer was called {stub.calls} times for {len(stub.outputs)} batches")


def head_damage(
    evaluator: Evaluator, *, progress: Callable | None = None, replay: bool = True
) -> dict[str, torch.Tensor]:
    """``{head key: damage [heads]}``: ``1 − mean cosine`` with that one head masked (float64).

    ``replay``: the layers below a head's own replay their recorded outputs instead of recomputing them
    (the same numbers, bit for bit, in about half the time)."""
    groups = [g for g in unit_groups(evaluator.encoder) if g.kind == HEADS]
    recorded = layer_outputs(evaluator) if replay else None
    damage = {}
    for group in groups:
        values = torch.zeros(group.units, dtype=torch.float64)
        for head in range(group.units):
            keep = torch.ones(group.units, dtype=torch.bool)
            keep[head] = False
            if recorded is None:
                values[head] = 1.0 - evaluator({group.key: keep}).cosine
            else:
                with replaying(evaluator, recorded, group.layer):
                    values[head] = 1.0 - evaluator({group.key: keep}).cosine
            if progress is not None:
                progress()
        damage[group.key] = values
    return damage


def flat(scores: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    return torch.cat([scores[k].double().reshape(-1) for k in keys])


def rank_correlations(damage: dict[str, torch.Tensor], scorers: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict]:
    """Per scorer: the Spearman correlation of its head scores with the damage over all heads
    (``all``), and the mean of the per-layer correlations (``within_layer``: how well it orders the
    heads of one layer, which is what uniform allocation uses)."""
    keys = list(damage)
    truth = flat(damage, keys)
    out = {}
    for name, scores in scorers.items():
        heads = of_kind(scores, HEADS)
        within = [spearman(heads[k].double(), damage[k]) for k in keys]
        out[name] = {"all": spearman(flat(heads, keys), truth), "within_layer": sum(within) / len(within)}
    return out
