"""``python -m rgprune_fast`` is the ``rgprune-fast`` command.

Python imports this package (and so torch) before it runs this file: Ctrl-C during that import is
Python's own (a traceback); from here on it is one line and exit status 130 (see rgprune_fast_entry).
"""

from rgprune_fast_entry import main

raise SystemExit(main())
