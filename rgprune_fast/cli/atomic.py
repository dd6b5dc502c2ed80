"""Output files written whole or not at all: temporary files next to their targets, then ``os.replace``.

An error or Ctrl-C while writing leaves the targets as they were and no temporary file behind. The
renames of several targets run with Ctrl-C held back, so an interrupt never stops between them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

# Temporary files being written. The console script's entry (rgprune_fast_entry) removes what is left
# here when a second Ctrl-C ends the process before the clean-up below ran.
PENDING: set[Path] = set()

Writer = Callable[[BinaryIO], None]


def write_atomically(files: Sequence[tuple[Path, Writer]]) -> None:
    """For each ``(path, writer)``, ``writer(f)`` fills a temporary file in the folder of ``path`` (made
    if missing); once every temporary is complete, each replaces its target, in the order given."""
    temporaries: list[Path] = []
    try:
        for path, writer in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
            # Registered before it exists: an interrupt right after the file is created still removes it.
            temporaries.append(temporary)
            PENDING.add(temporary)
            with _create(temporary) as f:
                writer(f)
                f.flush()
                os.fsync(f.fileno())  # the content is on disk before the name points at it
        with interrupts_held_back():
            for (path, _), temporary in zip(files, temporaries):
                os.replace(temporary, path)
    finally:
        with interrupts_held_back():
            for temporary in temporaries:
                with contextlib.suppress(FileNotFoundError):  # renamed: nothing to remove
                    temporary.unlink()
                PENDING.discard(temporary)


def _create(path: Path) -> BinaryIO:
    # 0o666 less the umask: the permissions any new file gets (mkstemp would make it 0o600).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    return os.fdopen(fd, "wb")


@contextlib.contextmanager
def interrupts_held_back() -> Iterator[None]:
    """Ctrl-C during the block takes effect when the block ends (on the main thread, the only one
    Python delivers SIGINT to; with SIGINT ignored or at its OS default there is nothing to hold)."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return
    frames: list = []
    signal.signal(signal.SIGINT, lambda signum, frame: frames.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if frames:
            previous(signal.SIGINT, frames[0])  # Python's own handler raises KeyboardInterrupt
