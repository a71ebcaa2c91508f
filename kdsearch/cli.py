"""The ``kdsearch`` command: ``kdsearch ablate|train|tables|bench|describe …``.

Each subcommand is one of the package's command-line modules, run with the rest of the
arguments, the same as ``python -m kdsearch.ablate …`` or ``python analysis/tables.py …``.
Only the chosen module is imported, so ``kdsearch --help`` and ``kdsearch ablate --list``
answer without loading torch or Ray.
"""
from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Sequence

from kdsearch.errors import UserError, invoked_as, run_cli

#: subcommand → (module with ``main(argv)``, what it does)
COMMANDS: dict[str, tuple[str, str]] = {
    "ablate": ("kdsearch.ablate", "run a paper's ablation axis or a search on Ray (--list: what exists)"),
    "train": ("kdsearch.train", "train and evaluate one configuration in this process"),
    "tables": ("kdsearch.analysis.tables", "the papers' tables, claims and report from a results folder"),
    "bench": ("kdsearch.bench", "time each method's training step on this machine (--save: for the costs)"),
    "describe": ("kdsearch.describe", "a method's parameters and FLOPs beside the paper's numbers"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: kdsearch COMMAND [ARGS ...]", "",
             "Reproduce, ablate and tune knowledge-distillation anomaly detectors.", "", "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    lines += ["", "`kdsearch COMMAND --help` shows a command's options. Example: kdsearch ablate --paper adps --axis k"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] == "--version":
        from kdsearch import __version__

        print(f"kdsearch {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"unknown command {name!r}; {hint}choose one of: {', '.join(COMMANDS)} (see `kdsearch --help`)")
    module = importlib.import_module(COMMANDS[name][0])
    with invoked_as(f"kdsearch {name}"):
        return int(module.main(rest) or 0)


def console() -> None:
    """The ``kdsearch`` console script."""
    sys.exit(run_cli(main))


if __name__ == "__main__":
    console()
