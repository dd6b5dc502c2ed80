"""rgprune_fast: fast Taylor / random-gradient importance scores for pruning PyTorch networks."""

from .api import score
from .criteria import METHODS
from .errors import BackendUnavailableError, EmptyDataError, NonFiniteStatisticsError, UnsupportedModuleError
from .units import Unit

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "BackendUnavailableError",
    "EmptyDataError",
    "NonFiniteStatisticsError",
    "Unit",
    "UnsupportedModuleError",
    "__version__",
    "score",
]
