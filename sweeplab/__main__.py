"""``python -m sweeplab`` is the ``sweep`` command."""

from sweeplab.cli import main

main()
