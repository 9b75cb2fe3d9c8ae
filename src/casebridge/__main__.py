"""``python -m casebridge``: the command line, as the ``casebridge`` script runs it."""

from casebridge.cli import main

main()
