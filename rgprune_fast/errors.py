"""Exception types raised by rgprune_fast (all subclass a builtin, so ``except ValueError`` works)."""

from __future__ import annotations


class EmptyDataError(ValueError):
    """``data`` yielded no batch (or ``max_batches`` left none)."""


class UnsupportedModuleError(RuntimeError):
    """A scored module's statistics cannot be collected exactly; the message names the module, what was
    seen and what to do; :attr:`reason` says it in a few words (for the default selection's warning)."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


class SkippedUnitsWarning(UserWarning):
    """The default selection left out modules it cannot score exactly (one warning per call, naming them)."""


class BackendUnavailableError(RuntimeError):
    """An explicitly requested reduction backend cannot serve this device; the message says why."""


class KernelSelfCheckWarning(RuntimeWarning):
    """A fused kernel raised or disagreed with the torch backend on its first use for one case (device,
    dtype, layout, op variant); that case uses the torch backend for the rest of the process. The
    message names the backend, the op, the case and what went wrong (``backends/selfcheck.py``)."""


class NonFiniteStatisticsError(FloatingPointError):
    """NaN or Inf appeared in the statistics; the message names the module and the batch."""
