"""Real English sentences that ship with Python: the docstrings of the standard library.

The ``.py`` files under ``sysconfig.get_paths()["stdlib"]`` are *parsed* with :mod:`ast` (never
imported: nothing of them runs), in sorted path order; every module, class and function docstring is
cut into paragraphs, paragraphs that look like code or tables are dropped, the rest are split into
sentences by a simple regex and filtered to plain prose of a reasonable length. The unique sentences
are shuffled with a fixed seed and split into a scoring set and a disjoint evaluation set.

The result depends only on the standard library's files, hence on the Python version (recorded in
:attr:`Sentences.description`): the same Python gives the same sentences, in the same order.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import random
import re
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

# Folders of the standard library that hold no prose worth having (tests, test data, the IDE's tests,
# third-party packages installed into it) or files that are not Python.
SKIPPED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "encodings"})
MIN_CHARS, MAX_CHARS = 40, 200
MIN_WORDS, MAX_WORDS = 7, 40
# Sentence ends: '.', '!' or '?' followed by white space and a capital letter (abbreviations such as
# "e.g. Foo" are cut too: the filters below drop the fragments that are too short).
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CODE_MARKS = (">>>", "...", "::", "==", "->", "=>", "{", "}", "[", "]", "<", ">", "|", "\\", "`", "*", "#", "$", "@")
_WORD = re.compile(r"[A-Za-z][a-z']*")


@dataclass(frozen=True)
class Sentences:
    """The two disjoint sets of sentences, and where they come from."""

    score: tuple[str, ...]  # for the importance scores
    evaluate: tuple[str, ...]  # for the fidelity and the ground truth
    pool: int  # unique sentences found
    files: int  # standard-library files parsed
    python: str  # "3.11.9"

    @property
    def description(self) -> str:
        return (
            f"{self.pool:,} unique sentences from the docstrings of {self.files:,} standard-library files of "
            f"Python {self.python}: {len(self.score)} for scoring, {len(self.evaluate)} (disjoint) for evaluation"
        )

    def fingerprint(self) -> str:
        """A short hash of both sets, to see at a glance whether two runs used the same sentences."""
        digest = hashlib.sha256("\n".join(self.score + ("",) + self.evaluate).encode()).hexdigest()
        return digest[:12]


def stdlib_files(root: Path | str | None = None) -> list[Path]:
    """The standard library's ``.py`` files (not its tests or site-packages), in sorted order."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    found = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if not SKIPPED_DIRS.intersection(parts[:-1]):
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def docstrings(source: bytes | str) -> list[str]:
    """Every module/class/function docstring of one file's source, in the order ``ast.walk`` meets
    them ([] when the file does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):  # files of other Python versions, null bytes, bad encodings
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            text = ast.get_docstring(node, clean=True)
            if text:
                found.append(text)
    return found


def _prose(paragraph: str) -> bool:
    lines = paragraph.split("\n")
    # code blocks, argument lists and tables are indented or full of punctuation; prose is neither
    return not any(line.startswith((" ", "\t", "-", "+", "*", ">", ":", "=")) for line in lines)


def is_sentence(text: str) -> bool:
    """Plain English prose: ASCII, starts with a capital letter and ends with a full stop, of
    reasonable length, mostly words, nothing that looks like code."""
    if not (MIN_CHARS <= len(text) <= MAX_CHARS) or not text.isascii() or not text.isprintable():
        return False
    if not (text[0].isupper() and text.endswith(".")) or text.endswith(("e.g.", "i.e.")):
        return False
    if any(mark in text for mark in _CODE_MARKS):
        return False
    words = text.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return False
    # identifiers (foo_bar, os.path, CamelCase()) are not words of the sentence
    plain = sum(1 for w in words if _WORD.fullmatch(w.strip(",;:.()\"'?!")))
    return plain >= 0.8 * len(words) and "_" not in text and "()" not in text


def sentences_of(docstring: str) -> list[str]:
    """The prose sentences of one (cleaned) docstring."""
    found = []
    for paragraph in re.split(r"\n\s*\n", docstring):
        if not _prose(paragraph):
            continue
        text = " ".join(paragraph.split())
        found += [s for s in _SPLIT.split(text) if is_sentence(s)]
    return found


def unique_sentences(root: Path | str | None = None) -> tuple[list[str], int]:
    """Every unique prose sentence of the standard library's docstrings, in first-seen order, and the
    number of files parsed. Duplicates are found case- and space-insensitively."""
    files = stdlib_files(root)
    seen: set[str] = set()
    found = []
    for path in files:
        for doc in docstrings(path.read_bytes()):
            for sentence in sentences_of(doc):
                key = " ".join(sentence.lower().split())
                if key not in seen:
                    seen.add(key)
                    found.append(sentence)
    return found, len(files)


@functools.lru_cache(maxsize=4)
def _cached(root: str | None) -> tuple[tuple[str, ...], int]:
    found, files = unique_sentences(root)
    return tuple(found), files


def load(n_score: int, n_evaluate: int, *, seed: int = 0, root: Path | str | None = None) -> Sentences:
    """``n_score`` sentences for scoring and ``n_evaluate`` other ones for evaluation, drawn at random
    (``random.Random(seed)``) from the standard library's unique docstring sentences (parsed once per
    process and ``root``)."""
    pool, files = _cached(None if root is None else str(root))
    if n_score + n_evaluate > len(pool):
        raise ValueError(
            f"asked for {n_score} + {n_evaluate} sentences, but the standard library's docstrings give only {len(pool)}"
        )
    order = sorted(pool)  # independent of the file order
    random.Random(seed).shuffle(order)
    python = ".".join(map(str, sys.version_info[:3]))
    chosen = order[: n_score + n_evaluate]
    return Sentences(tuple(chosen[:n_score]), tuple(chosen[n_score:]), len(pool), files, python)
