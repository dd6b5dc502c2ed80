"""The set-up every scorer shares, written once: check the model and the arguments, walk the data,
leave the model as found, run the structure probe and plan the units.

A scorer calls :func:`prepare` (cheap checks, nothing touched), then enters :func:`session`, which
reads the first batch, switches the model to eval mode (and on the training flag of layers that
checkpoint), probes and plans, and restores the model's flags and parameters on exit, also when the
scorer raises.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import UnsupportedModuleError
from ..units import Unit
from .activations import out_of_place
from .batching import BatchStream, head
from .distributed import Lockstep, rank_seed, sharded_parameter
from .experts import routing
from .gradients import check_seed
from .handlers import calling_projections
from .model_state import (
    activate_checkpointing,
    check_autograd_tensors,
    check_materialized,
    exclusive,
    model_device,
    preserved,
    unwrap,
)
from .planning import TapPlan, plan_taps, resolve_units
from .probe import PROBE_EXAMPLES, run_probe
from .transformer_units import is_causal_lm


@dataclass(frozen=True)
class Target:
    """A checked model to score and what the set-up derives from it."""

    model: nn.Module  # wrappers (DDP, torch.compile) removed
    device: torch.device
    seed: int  # this rank's seed
    units: list[Unit] | None  # modules= resolved; None: the default selection
    causal_lm: bool  # labels are shifted by one position


def prepare(model: nn.Module, *, seed: int, modules: Any) -> Target:
    """Check ``model``, ``seed`` and ``modules=``; nothing is modified."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    model = unwrap(model)
    check_materialized(model)
    if torch.is_inference_mode_enabled():
        raise RuntimeError("scoring needs autograd, but it was called inside torch.inference_mode()")
    check_seed(seed)
    check_seed(rank_seed(seed))
    check_autograd_tensors(model)
    units = resolve_units(model, modules)
    return Target(model, model_device(model), rank_seed(seed), units, is_causal_lm(model))


@dataclass
class Session:
    plans: list[TapPlan]  # one per scored unit spec, in named_modules() order
    batches: BatchStream | Lockstep  # the data, batch by batch, on the model's device


@contextmanager
def session(
    target: Target, data: Any, *, max_batches: int | None, molchanov: bool, cycle: bool = False
) -> Iterator[Session]:
    """Read the first batch, then, with the model in eval mode and restored on exit, probe the model
    on its first examples and plan the taps (``molchanov``: with each unit's weights ``W_c``). In-place
    activations that can run out of place at no memory cost do so until exit (engine/activations.py), and
    modules that apply a Linear through its weights call it as a module (engine/handlers.py), and
    Mixture-of-Experts experts run a forward that exposes each expert's neurons (engine/experts.py)."""
    model = target.model
    sharded = sharded_parameter(model)  # FSDP2: the ranks' forwards gather weights together
    if sharded is not None and molchanov:
        raise UnsupportedModuleError(
            f"method 'molchanov_group' needs the whole weights W_c and their gradients on each rank, but {sharded!r} "
            "is a DTensor shard (FSDP2 / tensor parallelism); use the other methods, or score an unsharded copy",
            "molchanov_group on a sharded model",
        )
    open_stream = functools.partial(BatchStream, data, max_batches, target.device, cycle=cycle)
    batches = open_stream() if sharded is None else Lockstep(open_stream, target.device)  # docs/distributed.md
    with (
        exclusive(model),
        preserved(model),
        out_of_place(model) as flipped,
        calling_projections(model) as projections,
        routing(model) as routed,
    ):
        model.eval()
        activate_checkpointing(model)
        probe = run_probe(model, head(batches.first, PROBE_EXAMPLES))
        if flipped.keep_in_place(probe.reads_after(flipped.modules)):  # run out of place, another read it
            probe = run_probe(model, head(batches.first, PROBE_EXAMPLES))
        plans = plan_taps(model, probe, target.units, molchanov)
        del probe  # its graph holds the probe's activations
        # only what the scored units need keeps running differently from the model's own forwards
        routed.keep_only(p.module for p in plans if p.kind == "experts")
        projections.keep_only(model.get_submodule(p.name.rpartition(".")[0]) for p in plans if p.unit.side == "input")
        yield Session(plans, batches)
