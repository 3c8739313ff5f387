"""``python -m aitimestepper`` is the ``aits`` command."""

from aitimestepper.cli import main

main()
