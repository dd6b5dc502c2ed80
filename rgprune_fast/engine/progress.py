"""A progress bar: tqdm when installed, else a plain line on stderr per batch."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any


def progress_bar(items: Iterable[Any], total: int | None, enabled: bool, desc: str = "scoring") -> Iterator[Any]:
    if not enabled:
        yield from items
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        with tqdm(items, total=total, desc=desc, unit="batch") as bar:
            yield from bar
        return
    for i, item in enumerate(items, 1):
        yield item
        print(f"\r{desc}: batch {i}" + (f"/{total}" if total else ""), end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
