"""Do scores fit a model: the channels behind each key, seen on the model itself."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from ..engine import module_rules
from ..engine.batching import as_batch
from ..engine.interrupts import interrupt_safe
from ..engine.model_state import preserved
from .ranking import Scores, check_scores
from .targets import check_unit_size, resolve, static_width


@interrupt_safe
@torch.no_grad()
def output_channels(model: nn.Module, names: list[str], example_inputs: Any) -> dict[str, int]:
    """Channels behind each key of ``names``: a module's output channels (``"name"``), its input
    channels (``"name:input"``) or its experts' neurons (``"name:experts"``); widths that the weights
    do not give are read in one eval-mode forward of ``example_inputs``. Keys whose module the forward
    does not call are left out."""
    targets = [resolve(model, key, "scores") for key in names]
    found = {t.key: static_width(t) for t in targets if static_width(t) is not None}
    pending = [t for t in targets if t.key not in found]
    if not pending:
        return {key: found[key] for key in names if key in found}

    def output_hook(module, args, out, key):
        if isinstance(out, torch.Tensor) and out.dim() >= 1:
            found[key] = out.shape[module_rules.rule_for(module).channel_dim]

    def input_hook(module, args, key):
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 1:
            found[key] = args[0].shape[-1]

    handles = []
    try:
        for t in pending:
            if t.side == "input":
                handles.append(t.module.register_forward_pre_hook(functools.partial(input_hook, key=t.key)))
            else:
                handles.append(t.module.register_forward_hook(functools.partial(output_hook, key=t.key)))
        with preserved(model):  # every module's training flag back as it was, not model.train(flag)
            model.eval()
            as_batch(example_inputs, 0).call(model)
    finally:
        for h in handles:
            h.remove()
    return {key: found[key] for key in names if key in found}


def check_scores_fit(model: nn.Module, scores: Scores, example_inputs: Any) -> None:
    """Raise ``ValueError`` naming the first key whose scores do not match the model's channels (for
    ``:input`` units: whose entries do not split the module's input into equal units)."""
    checked = check_scores(scores)
    channels = output_channels(model, list(checked), example_inputs)
    for key, s in checked.items():
        if key not in channels:
            raise ValueError(f"module {key!r} of the scores is not called by the model's forward pass")
        if key.endswith(":input"):
            try:
                check_unit_size(model, key, s.numel(), channels[key], f"the scores of {key!r}")
            except ValueError as e:
                raise ValueError(f"{e}: the scores were computed for a different model") from None
        elif channels[key] != s.numel():
            raise ValueError(
                f"the scores of module {key!r} have {s.numel()} channels but the model's module "
                f"{'has' if key.endswith(':experts') else 'outputs'} {channels[key]}: the scores were computed "
                "for a different model"
            )
