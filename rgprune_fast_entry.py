"""Entry point of the ``rgprune-fast`` console script and of ``python -m rgprune_fast``.

Ctrl-C at any moment ends the command with one line on stderr and exit status 130, no traceback.

* The console script imports this module before it calls :func:`main`, and importing the command
  line (torch) takes seconds, during which Ctrl-C must be handled too. So this module imports only
  the standard library and installs its SIGINT handler before it imports anything heavy; it lives
  outside the ``rgprune_fast`` package because importing anything inside the package first runs
  ``rgprune_fast/__init__.py``, which imports torch.
* Ctrl-C ends the process at once, from the signal handler: a command's process holds nothing that
  needs cleaning up but the temporary files of an output being written (removed here). Raising
  ``KeyboardInterrupt`` instead would send it through C code that calls back into Python, which can
  swallow it (torch's start-up, while it imports numpy) or abort the process (an interrupted extension
  module initialisation: status -6 instead of 130).
"""

from __future__ import annotations

import _thread  # not threading: every module imported before main() runs widens the unguarded window
import contextlib
import os
import signal
import sys

INTERRUPTED = "rgprune-fast: interrupted"
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command ended by Ctrl-C

# Where the command line registers the temporary files it is writing (see _remove_temporaries).
_ATOMIC_MODULE = "rgprune_fast.cli.atomic"


class _State:
    interrupts = 0  # Ctrl-C presses seen by _on_sigint
    finishing = False  # the command is over or the exit is under way: Ctrl-C changes nothing any more
    exiting = _thread.allocate_lock()  # held by the one thread that writes the line and ends the process
    main_thread = _thread.get_ident()


_state = _State()


def _on_sigint(signum, frame) -> None:
    """Ctrl-C: the line, status 130, the end (a Ctrl-C during the exit changes nothing)."""
    if _state.finishing:
        return
    _state.interrupts += 1
    _exit_interrupted()


def interrupted() -> bool:
    """Whether Ctrl-C was pressed (an error after it is the interrupt's doing, not the user's input)."""
    return _state.interrupts > 0


def _stop_listening() -> None:
    _state.finishing = True
    if _thread.get_ident() == _state.main_thread:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _remove_temporaries() -> None:
    """Remove the temporary files of an output being written, when the command line got that far (the
    process ends before their own clean-up would run)."""
    atomic = sys.modules.get(_ATOMIC_MODULE)
    for path in list(getattr(atomic, "PENDING", ())):
        with contextlib.suppress(OSError):  # already renamed or removed
            os.unlink(path)


def _exit_interrupted():
    """One line on stderr and status 130, then nothing: no interpreter shutdown, where modules left half
    imported by the interrupt could print more. The first thread here does it; another waits for the end."""
    _state.finishing = True  # first: a Ctrl-C arriving now returns at once instead of waiting for the lock
    _state.exiting.acquire()
    _stop_listening()
    _remove_temporaries()
    if _thread.get_ident() == _state.main_thread:
        # (Another thread does not: the main thread may hold a stream's lock, blocked on a full pipe.)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed or broken pipe: nothing left to save
                stream.flush()
    with contextlib.suppress(OSError):
        os.write(2, (INTERRUPTED + "\n").encode())
    os._exit(EXIT_INTERRUPTED)


def main() -> int:
    """Run ``rgprune-fast`` with ``sys.argv``; returns the exit status (after Ctrl-C: exits with 130)."""
    # Only in place of Python's own handler: a SIGINT the caller ignores (a background job) stays ignored.
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        with contextlib.suppress(ValueError):  # not the main thread: no signal reaches this thread anyway
            signal.signal(signal.SIGINT, _on_sigint)
    try:
        try:
            from rgprune_fast.cli import dispatch

            status = dispatch(interrupted=interrupted)
        finally:
            _stop_listening()  # the command is over: a late Ctrl-C cannot undo its work
    except BaseException:
        if interrupted():
            _exit_interrupted()
        raise
    if interrupted():  # the interrupt was swallowed, and the command went on to its end
        _exit_interrupted()
    return status
