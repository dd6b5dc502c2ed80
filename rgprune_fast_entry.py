"""Entry point of the ``rgprune-fast`` console script and of ``python -m rgprune_fast``.

Ctrl-C at any moment ends the command with one line on stderr and exit status 130, no traceback.

* The console script imports this module before it calls :func:`main`, and importing the command
  line (torch) takes seconds, during which Ctrl-C must be handled too. So this module imports only
  the standard library and installs its SIGINT handler before it imports anything heavy; it lives
  outside the ``rgprune_fast`` package because importing anything inside the package first runs
  ``rgprune_fast/__init__.py``, which imports torch.
* A ``KeyboardInterrupt`` does not always reach the top: C code that calls back into Python can catch
  it (torch's start-up swallows one raised while it imports numpy, and a module left half imported
  fails later with another error). So every exception that follows a Ctrl-C counts as the interrupt,
  and a watchdog ends the process when a Ctrl-C has not ended the command :data:`GRACE_SECONDS` later.
"""

from __future__ import annotations

import _thread  # not threading: every module imported before main() runs widens the unguarded window
import contextlib
import os
import signal
import sys
import time

INTERRUPTED = "rgprune-fast: interrupted"
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command ended by Ctrl-C
GRACE_SECONDS = 2.0  # for the clean-up after a Ctrl-C (ordinarily milliseconds)

# Where the command line registers the temporary files it is writing (see _remove_temporaries).
_ATOMIC_MODULE = "rgprune_fast.cli.atomic"


class _State:
    interrupts = 0  # Ctrl-C presses seen by _on_sigint
    finishing = False  # the command is over or the exit is under way: Ctrl-C changes nothing any more
    exiting = _thread.allocate_lock()  # held by the one thread that writes the line and ends the process
    main_thread = _thread.get_ident()


_state = _State()


def _on_sigint(signum, frame) -> None:
    """The first Ctrl-C raises ``KeyboardInterrupt`` (so that clean-up code runs) and starts the watchdog;
    a second one means the first was swallowed or the clean-up hangs: exit at once."""
    if _state.finishing:
        return
    _state.interrupts += 1
    if _state.interrupts > 1:
        _exit_interrupted()
    _thread.start_new_thread(_watchdog, ())
    raise KeyboardInterrupt


def _watchdog() -> None:
    time.sleep(GRACE_SECONDS)
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
    watchdog or a second Ctrl-C can end the process before their own clean-up ran)."""
    atomic = sys.modules.get(_ATOMIC_MODULE)
    for path in list(getattr(atomic, "PENDING", ())):
        with contextlib.suppress(OSError):  # already renamed or removed
            os.unlink(path)


def _exit_interrupted():
    """One line on stderr and status 130, then nothing: no interpreter shutdown, where modules left half
    imported by the interrupt could print more. The first thread here does it; another waits for the end."""
    _state.exiting.acquire()
    _stop_listening()
    _remove_temporaries()
    if _thread.get_ident() == _state.main_thread:
        # (The watchdog does not: the main thread may hold a stream's lock, blocked on a full pipe.)
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
