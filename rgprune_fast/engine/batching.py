"""What a batch is: how ``data`` is walked (:class:`BatchStream`), how a batch calls the model, where
its targets are, and which tensor of the model's output holds the logits."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch

from ..errors import EmptyDataError
from .interrupts import interruptible


@dataclass
class Batch:
    """One batch, split into the model call's arguments and the targets (``None`` if absent)."""

    raw: Any
    args: tuple
    kwargs: dict
    targets: Any
    index: int = 0  # its position in the data (for messages)

    def call(self, model: torch.nn.Module) -> Any:
        """The model's forward on this batch (Ctrl-C stops it at once: engine/interrupts.py)."""
        return interruptible(model, *self.args, **self.kwargs)

    @property
    def examples(self) -> int | None:
        """The batch size: dim 0 of the first tensor among the model's arguments."""
        return _leading_size((self.args, self.kwargs))

    def example(self, e: int) -> Batch:
        """The batch cut down to its example ``e`` (every tensor whose dim 0 is the batch size)."""
        n = self.examples
        pick = lambda t: t[e : e + 1]  # noqa: E731
        return Batch(self.raw, _map_examples(self.args, n, pick), _map_examples(self.kwargs, n, pick), None, self.index)


def to_device(obj: Any, device: torch.device) -> Any:
    """Move every tensor inside (nested tuples, lists, dicts) to ``device`` (a tensor created under
    ``torch.inference_mode()`` is copied into an ordinary one)."""
    if isinstance(obj, torch.Tensor):
        t = obj.to(device, non_blocking=True)
        return t.clone() if t.is_inference() else t  # made under inference_mode: autograd cannot record it
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def as_batch(raw: Any, index: int = 0) -> Batch:
    """A tensor; a tuple/list ``(inputs, targets, ...)``; or a dict of model kwargs (targets: ``"labels"``)."""
    if isinstance(raw, torch.Tensor):
        return Batch(raw, (raw,), {}, None, index)
    if isinstance(raw, Mapping):
        kwargs = {k: v for k, v in raw.items() if k != "labels"}
        if not kwargs:
            raise ValueError(f"batch {index} is a dict with no model inputs (keys: {list(raw)})")
        return Batch(raw, (), kwargs, raw.get("labels"), index)
    if isinstance(raw, (tuple, list)):
        if not raw:
            raise ValueError(f"batch {index} is an empty {type(raw).__name__}")
        inputs = raw[0]
        targets = raw[1] if len(raw) > 1 else None
        if isinstance(inputs, Mapping):
            return Batch(raw, (), dict(inputs), targets, index)
        return Batch(raw, (inputs,), {}, targets, index)
    what = "None" if raw is None else f"a {type(raw).__name__}"
    raise TypeError(
        f"batch {index} is {what}; a batch must be a tensor, a tuple/list (inputs, targets, ...) or a dict of "
        "model keyword arguments"
    )


def _map_examples(obj: Any, n: int, fn) -> Any:
    """``fn`` applied to every tensor inside (nested tuples, lists, dicts) whose dim 0 is the batch size
    ``n``; everything else as it is."""
    if isinstance(obj, torch.Tensor):
        return fn(obj) if obj.dim() and obj.shape[0] == n else obj
    if isinstance(obj, Mapping):
        return {key: _map_examples(v, n, fn) for key, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map_examples(v, n, fn) for v in obj)
    return obj


def _leading_size(obj: Any) -> int | None:
    if isinstance(obj, torch.Tensor):
        return obj.shape[0] if obj.dim() else None
    values = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (tuple, list)) else ()
    for v in values:
        size = _leading_size(v)
        if size is not None:
            return size
    return None


def head(batch: Batch, k: int) -> Batch:
    """The batch cut down to its first ``k`` examples (the structure probe needs only a few)."""
    n = _leading_size((batch.args, batch.kwargs))
    if n is None or n <= k:
        return batch
    first = lambda t: t[:k]  # noqa: E731
    return Batch(
        batch.raw, _map_examples(batch.args, n, first), _map_examples(batch.kwargs, n, first), None, batch.index
    )


def replicate(batch: Batch, k: int, n: int) -> Batch:
    """The batch repeated ``k`` times along dim 0 (every tensor whose dim 0 is the batch size ``n``)."""
    tile = lambda t: t.repeat(k, *([1] * (t.dim() - 1)))  # noqa: E731
    return Batch(batch.raw, _map_examples(batch.args, n, tile), _map_examples(batch.kwargs, n, tile), None, batch.index)


def _raw_batches(data: Any, max_batches: int | None) -> Iterator[Any]:
    """The raw batches of ``data`` (one tensor or dict is one batch), at most ``max_batches`` of them."""
    if max_batches is not None and (
        not isinstance(max_batches, int) or isinstance(max_batches, bool) or max_batches < 1
    ):
        raise ValueError(f"max_batches must be a positive int or None, got {max_batches!r}")
    if data is None:
        raise EmptyDataError("data is None; pass a batch tensor or an iterable of batches")
    if isinstance(data, (torch.Tensor, Mapping)):
        data = [data]
    elif not isinstance(data, Iterable) or isinstance(data, (str, bytes)):
        raise TypeError(f"data must be a batch tensor or an iterable of batches, got {type(data).__name__}")
    return iter(data) if max_batches is None else islice(iter(data), max_batches)


def _length(data: Any, max_batches: int | None) -> int | None:
    """Number of batches, when known (for the progress bar)."""
    if isinstance(data, (torch.Tensor, Mapping)):
        return 1
    try:
        n = len(data)
    except TypeError:
        return max_batches
    return n if max_batches is None else min(n, max_batches)


NO_BATCH = "data yielded no batch; scoring needs at least one batch"
_END = object()  # end of the data (None is a batch, and an error)


class BatchStream:
    """The one way every scorer walks ``data``: each raw batch moved to ``device`` and split into a
    :class:`Batch`, numbered from 0 by its position in the data.

    The first batch is read at construction (:attr:`first`, for the structure probe; no batch, or a first
    batch of 0 examples: :class:`EmptyDataError`). Later batches of 0 examples are skipped: they add
    nothing to any sum and do not count as batches (``max_batches`` counts the data's batches). With
    ``cycle=True`` the data are walked again and again: re-iterated each pass when ``data`` can be (a
    list, a DataLoader), cached (as given, on their own device) on the first pass when ``data`` is a
    one-pass iterator. Reading the user's iterator is an :func:`interruptible` window (a slow DataLoader).
    """

    def __init__(self, data: Any, max_batches: int | None, device: torch.device, *, cycle: bool = False):
        self._data, self._max_batches, self._device, self._cycle = data, max_batches, device, cycle
        self._rest = _raw_batches(data, max_batches)
        self._cache = [] if cycle and isinstance(data, Iterator) else None
        raw = interruptible(next, self._rest, _END)
        if raw is _END:
            raise EmptyDataError(NO_BATCH)
        self._remember(raw)
        self.first = self._batch(raw, 0)
        if self.first.examples == 0:
            raise EmptyDataError(
                "batch 0 holds 0 examples (dim 0 of its first input tensor); the first batch must hold at least "
                "one example (the structure probe runs on it)"
            )
        self.total = None if cycle else _length(data, max_batches)  # batches, when known

    def _remember(self, raw: Any) -> None:
        if self._cache is not None:
            self._cache.append(raw)

    def _batch(self, raw: Any, index: int) -> Batch:
        return as_batch(to_device(raw, self._device), index)

    def _walk(self, source: Iterator[Any], first_index: int, remember: bool) -> Iterator[Batch]:
        """The non-empty batches of ``source``."""
        index = first_index
        while True:
            raw = interruptible(next, source, _END)
            if raw is _END:
                return
            if remember:
                self._remember(raw)
            batch = self._batch(raw, index)
            index += 1
            if batch.examples != 0:
                yield batch

    def __iter__(self) -> Iterator[Batch]:
        yield self.first
        yield from self._walk(self._rest, 1, remember=True)
        while self._cycle:
            source = iter(self._cache) if self._cache is not None else _raw_batches(self._data, self._max_batches)
            walked = 0
            for batch in self._walk(source, 0, remember=False):
                walked += 1
                yield batch
            if not walked:  # a re-iterated pass with no example would cycle for ever
                raise EmptyDataError(NO_BATCH)


def scored_output(output: Any) -> tuple[torch.Tensor, bool]:
    """The tensor whose gradient is set, and whether it is the logits: a tensor, ``.logits`` /
    ``["logits"]``, else the first output (an encoder's ``last_hidden_state``, the first tensor of a tuple)."""
    found, is_logits = None, True
    if isinstance(output, torch.Tensor):
        found = output
    elif getattr(output, "logits", None) is not None and isinstance(output.logits, torch.Tensor):
        found = output.logits
    elif isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        found = output["logits"]
    elif isinstance(output, Mapping) and output and isinstance(next(iter(output.values())), torch.Tensor):
        found, is_logits = next(iter(output.values())), False  # transformers' ModelOutput: last_hidden_state
    elif isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        found = output[0]
    if found is None:
        raise TypeError(
            f"cannot find the logits in a model output of type {type(output).__name__}: expected a tensor, "
            "an object/dict with 'logits' or whose first entry is a tensor, or a tuple whose first element is a "
            "tensor"
        )
    if not found.is_floating_point():
        raise TypeError(f"the model output (logits) must be floating point, got dtype {found.dtype}")
    if found.dim() < 2:
        raise ValueError(
            f"the model output must be [N, ..., classes] with an example dim, got shape {tuple(found.shape)}"
        )
    return found, is_logits


def logits_of(output: Any) -> torch.Tensor:
    """The tensor whose gradient is set (:func:`scored_output`)."""
    return scored_output(output)[0]


def padding_mask(batch: Batch, output: torch.Tensor) -> torch.Tensor | None:
    """The batch's ``attention_mask`` when it marks the positions of a ``[N, T, ...]`` output, else ``None``."""
    mask = batch.kwargs.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or output.dim() < 3 or tuple(mask.shape) != tuple(output.shape[:2]):
        return None
    return mask
