"""``python -m kdsearch COMMAND …``: the ``kdsearch`` command."""
from kdsearch.cli import console

console()
