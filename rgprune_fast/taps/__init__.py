"""Taps: where ``s`` comes from. ``tapset.py`` installs them on the scored modules for one call and
always removes them; ``functions.py`` holds the autograd Functions whose backward reduces ``s``."""

from .tapset import Tap, TapSet

__all__ = ["Tap", "TapSet"]
