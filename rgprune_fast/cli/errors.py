"""The one exception the command line turns into a short message instead of a traceback."""


class CliError(ValueError):
    """Bad input to ``rgprune-fast``: the message names the culprit and what to do."""
