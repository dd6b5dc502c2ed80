"""Peak live tensor bytes of a callable, without a GPU: a ``TorchDispatchMode`` that counts every tensor
storage an op creates and frees.

Every aten op that runs while the mode is active (forward, autograd's backward, optimizer-free
``.grad`` accumulation, the scorers' own reductions) passes through :meth:`MemoryTracker.__torch_dispatch__`.
An output whose storage is not one of the op's inputs' storages and is not tracked yet is a new
allocation: its ``untyped_storage().nbytes()`` is added to the live total and a ``weakref.finalize`` on
the storage object subtracts it again when the storage dies (storages keep their Python object alive
while C++ holds them, so the finalizer runs when the memory is released, also when autograd's engine
drops a saved tensor). Views, in-place ops and ``out=`` ops share a storage and add nothing. Storages
that existed before the call (parameters, inputs, a precomputed output gradient) are never counted, so
``peak`` is the extra memory the callable needs on top of what it was given.

Works unchanged on fake tensors (``torch._subclasses.FakeTensorMode``): a fake tensor has a meta
storage with the real ``nbytes``, so a 70B-wide layer at sequence 2048 can be measured in seconds on a
laptop. What it does not see: scratch an op allocates and frees inside its own kernel (BLAS / cuDNN /
flash-attention workspaces), the CUDA caching allocator's rounding (to 512 bytes, 2 MB blocks) and
fragmentation; on CUDA ``torch.cuda.max_memory_allocated`` is the number that includes those.

    with MemoryTracker() as t:
        fn()
    t.peak, t.live, t.allocated
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _storage(t: torch.Tensor):
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse / nested tensors have no single storage
        return None


class MemoryTracker(TorchDispatchMode):
    """Live and peak bytes of the tensor storages created while active (see the module docstring).

    Attributes:
        live: bytes of the storages created under the tracker that are still alive.
        peak: the largest ``live`` seen (right after an op's outputs were allocated).
        allocated: total bytes of all storages created (alive or not).
        count: number of storages created.
        peak_op: the op whose outputs set the peak.
        phase_peaks: the peak within each phase named by :meth:`set_phase` (``"start"`` until the first).
    """

    def __init__(self, by_op: bool = False):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.allocated = 0
        self.count = 0
        self.peak_op = ""
        self.by_op = by_op
        self.live_by_op: dict[str, int] = {}  # with by_op: live bytes per creating op
        self.peak_by_op: dict[str, int] = {}  # with by_op: live_by_op at the moment of the peak
        self.phase = "start"
        self.phase_peaks: dict[str, int] = {}  # peak of live bytes while each phase ran (see set_phase)
        self._tracked: dict[int, tuple[int, str, weakref.finalize]] = {}

    def set_phase(self, name: str) -> None:
        """From now on, count peaks under ``name`` too (its peak starts at the bytes live now)."""
        self.phase = name
        self.phase_peaks[name] = max(self.phase_peaks.get(name, 0), self.live)

    def _free(self, key: int) -> None:
        entry = self._tracked.pop(key, None)
        if entry is not None:
            nbytes, op, _ = entry
            self.live -= nbytes
            if self.by_op:
                self.live_by_op[op] -= nbytes

    def _note(self, storage, op: str) -> None:
        key = storage._cdata
        nbytes = storage.nbytes()
        entry = self._tracked.get(key)
        if entry is not None:  # already counted; an out= op may have resized it
            if entry[0] != nbytes:
                self.live += nbytes - entry[0]
                if self.by_op:
                    self.live_by_op[entry[1]] += nbytes - entry[0]
                self._tracked[key] = (nbytes, entry[1], entry[2])
            return
        self._tracked[key] = (nbytes, op, weakref.finalize(storage, self._free, key))
        self.live += nbytes
        self.allocated += nbytes
        self.count += 1
        if self.by_op:
            self.live_by_op[op] = self.live_by_op.get(op, 0) + nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = set()
        for a in tree_flatten((args, kwargs))[0]:
            if isinstance(a, torch.Tensor):
                s = _storage(a)
                if s is not None:
                    inputs.add(s._cdata)
        op = str(func.overloadpacket.__name__)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                s = _storage(t)
                if s is not None and (s._cdata not in inputs or s._cdata in self._tracked):
                    self._note(s, op)
        if self.live > self.phase_peaks.get(self.phase, 0):
            self.phase_peaks[self.phase] = self.live
        if self.live > self.peak:
            self.peak = self.live
            self.peak_op = op
            if self.by_op:
                self.peak_by_op = {k: v for k, v in self.live_by_op.items() if v}
        return out

    def __exit__(self, *exc):
        result = super().__exit__(*exc)
        for _, _, fin in list(self._tracked.values()):  # storages still alive stay counted in ``live``
            fin.detach()
        self._tracked.clear()
        return result


def peak_bytes(fn: Callable[[], Any], keep_result: bool = False) -> dict:
    """Run ``fn`` once under a :class:`MemoryTracker`: ``{"peak", "live_after", "allocated", "count",
    "peak_op"}`` in bytes (``live_after``: what the call's results still hold when it returns), plus
    ``"cuda_peak"`` (``torch.cuda.max_memory_allocated`` above the bytes allocated at the start) when
    CUDA is available. The result of ``fn`` is dropped before ``live_after`` is read unless
    ``keep_result``."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with MemoryTracker() as tracker:
        result = fn()
        if not keep_result:
            del result
        live_after = tracker.live
    out = {"peak": tracker.peak, "live_after": live_after, "allocated": tracker.allocated,
           "count": tracker.count, "peak_op": tracker.peak_op}  # fmt: skip
    if cuda:
        torch.cuda.synchronize()
        out["cuda_peak"] = torch.cuda.max_memory_allocated() - base
    return out
