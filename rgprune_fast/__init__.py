"""rgprune_fast: fast Taylor / random-gradient importance scores for pruning PyTorch networks.

``score`` (the Taylor criteria, one forward + backward) and ``mc_gradient`` (Monte-Carlo keep
probabilities) are the two scorers; ``rgprune_fast.pruning`` turns scores into masks and smaller
networks; ``rgprune-fast`` (``rgprune_fast.cli``) is the command line. docs/design.md draws the rooms.
"""

from .criteria import CRITERIA, METHODS
from .errors import (
    BackendUnavailableError,
    EmptyDataError,
    NonFiniteStatisticsError,
    SkippedUnitsWarning,
    UnsupportedModuleError,
)
from .scorers.mc_gradient import score as mc_gradient
from .scorers.taylor import score
from .units import Unit

__version__ = "0.1.0"

__all__ = [
    "CRITERIA",
    "METHODS",
    "BackendUnavailableError",
    "EmptyDataError",
    "NonFiniteStatisticsError",
    "SkippedUnitsWarning",
    "Unit",
    "UnsupportedModuleError",
    "__version__",
    "mc_gradient",
    "score",
]
