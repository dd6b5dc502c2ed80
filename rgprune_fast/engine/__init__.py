"""The engine: the one-pass set-up every scorer shares.

``session.py`` (the set-up, in order) uses ``batching.py`` (what a batch is, the one way to walk the
data), ``probe.py`` (how the modules connect), ``planning.py`` (which units, which tap),
``module_rules.py`` (module type -> unit layout and weights), ``transformer_units.py`` (transformer
defaults), ``model_state.py`` (leave the model as found), ``distributed.py`` (ranks) and
``gradients.py`` (the output gradient); ``progress.py`` draws the progress bar.
"""
