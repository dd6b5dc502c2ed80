"""The criteria: ``table.py`` (their names, formulas, what each needs, how it finalises) and
``accumulator.py`` (the running sums every scorer folds its batches into)."""

from .accumulator import UnitStatistics, finish, molchanov_term
from .table import CRITERIA, DEFAULT_METHOD, METHODS, Criterion, parse_methods

__all__ = [
    "CRITERIA",
    "DEFAULT_METHOD",
    "METHODS",
    "Criterion",
    "UnitStatistics",
    "finish",
    "molchanov_term",
    "parse_methods",
]
