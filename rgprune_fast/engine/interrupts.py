"""Ctrl-C during a call that changes the model for its duration: never a half set-up model.

A scoring call installs hooks, instance forwards and flags on the user's model and takes them off on
exit. A ``KeyboardInterrupt`` can arrive between any two bytecodes, also while those are being put on
or taken off, or while the clean-up after a first interrupt runs; an ordinary ``try/finally`` then
leaves part of the machinery on the model for good (a forward that raises under ``no_grad``, hooks
that keep every activation).

So, while such a call runs on the main thread (the only thread Python delivers SIGINT to), SIGINT
goes to :func:`_on_sigint`, which looks at the interrupted stack (after Trio's KI protection): the
innermost marked frame decides.

* Inside :func:`interruptible` (the model's forward and backward, the user's data iterator, a user
  callback: the long parts) the interrupt is raised at once, as without rgprune_fast.
* Anywhere else inside an :func:`interrupt_safe` call (set-up, clean-up, bookkeeping: short) it is
  deferred, and raised at the next :func:`interruptible` window or when the outermost call returns,
  by then with the model restored. A second Ctrl-C during the clean-up that follows a first one is
  absorbed: the call already ends with ``KeyboardInterrupt``.

Another SIGINT handler the user installed is called instead of raising (when deferred: later); with
SIGINT ignored or at its OS default, nothing is installed. Off the main thread nothing is installed
either (no signal can interrupt that thread).
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_PROTECTED: set = set()  # code objects of frames in which an interrupt is deferred
_INTERRUPTIBLE: set = set()  # code objects of frames in which it is raised at once


class _State:
    depth = 0  # nested interrupt_safe calls on the main thread
    previous: Any = None  # the SIGINT handler to restore (and to call when not deferred)
    pending = False  # an interrupt arrived in protected code and waits


_state = _State()


def _deferred_at(frame) -> bool:
    """Whether an interrupt arriving in ``frame`` waits: the innermost marked frame on its stack is
    protected (not an :func:`interruptible` window)."""
    while frame is not None:
        code = frame.f_code
        if code in _INTERRUPTIBLE:
            return False
        if code in _PROTECTED:
            return True
        frame = frame.f_back
    return False


def _on_sigint(signum: int, frame) -> None:
    if _deferred_at(frame):
        _state.pending = True
        return
    _state.previous(signum, frame)  # signal.default_int_handler raises KeyboardInterrupt


def _deliver_pending() -> None:
    if _state.depth and _state.pending:  # (outside a call the flag means nothing: _enter resets it)
        _state.pending = False
        _state.previous(signal.SIGINT, sys._getframe(1))


def _can_install() -> bool:
    if threading.current_thread() is not threading.main_thread():
        return False
    if _state.depth:
        return True
    return callable(signal.getsignal(signal.SIGINT))  # not SIG_IGN / SIG_DFL / installed from C


def _enter() -> bool:
    """Install the deferring handler (outermost call only); whether this call counts in ``depth``."""
    if not _can_install():
        return False
    if _state.depth == 0:
        _state.previous, _state.pending = signal.getsignal(signal.SIGINT), False
        signal.signal(signal.SIGINT, _on_sigint)
    _state.depth += 1
    return True


def _leave(interrupted: bool) -> None:
    """Leave one call; the outermost restores the handler and raises a waiting interrupt (not when the
    call already ends with ``KeyboardInterrupt``: a second Ctrl-C during the first one's clean-up)."""
    _state.depth -= 1
    if _state.depth:
        return
    signal.signal(signal.SIGINT, _state.previous)  # from here on a SIGINT goes straight to it
    pending, _state.pending = _state.pending and not interrupted, False
    if pending:
        _state.previous(signal.SIGINT, sys._getframe())


def interrupt_safe(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a public entry point whose set-up and clean-up must not be cut by Ctrl-C (module
    docstring); the long parts inside run through :func:`interruptible`."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        counted = _enter()
        interrupted = False
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            if counted:
                _leave(interrupted)

    return call


def interruptible(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` with Ctrl-C raised at once (a waiting one first)."""
    _deliver_pending()
    return fn(*args, **kwargs)


def protect(fn: Callable) -> Callable:
    """Mark ``fn``'s frames protected (for clean-up code reachable outside an :func:`interrupt_safe`
    call's own frames, e.g. a handle's ``remove``)."""
    _PROTECTED.add(fn.__code__)
    return fn


_PROTECTED.update({interrupt_safe.__code__, _enter.__code__, _leave.__code__, _deliver_pending.__code__})
_PROTECTED.add(interrupt_safe(lambda: None).__code__)  # the code of every `call` wrapper
_INTERRUPTIBLE.add(interruptible.__code__)
