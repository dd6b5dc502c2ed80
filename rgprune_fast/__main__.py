"""``python -m rgprune_fast`` is the ``rgprune-fast`` command."""

from .cli import main

raise SystemExit(main())
