"""The scorers, one file each, all on the engine's set-up: ``taylor.py`` (``rgprune_fast.score``: the
Taylor criteria from the taps, one forward + backward), ``naive.py`` (the same criteria the way users
write them with hooks: the baseline and a second oracle) and ``mc_gradient.py``
(``rgprune_fast.mc_gradient``: Monte-Carlo keep probabilities, forward passes only)."""
