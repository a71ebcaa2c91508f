"""The one error type for a user's mistake, and the CLI wrapper that reports it."""
from __future__ import annotations

import argparse
import contextlib
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn


class UserError(Exception):
    """A mistake the user can fix: bad path, unknown name, impossible value.

    The message says what is wrong and how to fix it; CLIs print it as
    ``error: <message>`` and exit with code 2, without a traceback.
    """


def require_writable_folder(folder: Path, what: str, advice: str) -> Path:
    """Create ``folder`` if missing and check that this process can write there.

    Raises:
        UserError: ``cannot write <what> <folder>: <reason>; <advice>``.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".kdsearch-write-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write {what} {folder}: {exc.strerror or exc}; {advice}") from exc
    return folder


# "pkg.mod.TypeName(Wrapped): message": an exception line of a traceback (names without spaces).
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*([A-Z]\w*)(?:\([\w.]+\))?: (\S.*)$")


def error_sentence(text: str, limit: int = 300) -> str:
    """The one line a failed trial's record keeps of its traceback text: the innermost
    exception's ``Type: message`` (a :class:`UserError` as its message alone), shortened at a
    word to about ``limit`` characters. Text with no exception line gives its last line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "the trial failed without a message; see Ray's logs"
    sentence = lines[-1]
    for line in reversed(lines):
        match = _EXCEPTION_LINE.match(line)
        if match:
            name, message = match.groups()
            sentence = message if name in ("UserError", "CheckpointUnreadable") else f"{name}: {message}"
            break
    if len(sentence) > limit:
        sentence = sentence[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " …"
    return sentence


_WARNED: set[str] = set()


def warn(message: str) -> None:
    """Print ``warning: <message>`` to stderr, once per message and process.

    For what the user should know but that need not stop the run (an empty mask some
    datasets ship, a count that differs from the published one).
    """
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


def _format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    line: str | None = None) -> str:
    return f"warning: {message}\n"


_INVOKED_AS: list[str] = []


@contextlib.contextmanager
def invoked_as(prog: str) -> Iterator[None]:
    """Name the parsers built inside this block ``prog`` (``kdsearch ablate`` when the
    ``kdsearch`` command runs ``python -m kdsearch.ablate``'s main), in usage and errors."""
    _INVOKED_AS.append(prog)
    try:
        yield
    finally:
        _INVOKED_AS.pop()


class CliParser(argparse.ArgumentParser):
    """The argument parser of every kdsearch command: a bad argument is one ``error:`` line
    (through :func:`run_cli`, exit code 2) that points to ``--help``, not argparse's usage block."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if _INVOKED_AS:
            kwargs["prog"] = _INVOKED_AS[-1]
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise UserError(f"{message} (see `{self.prog} --help`)")


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a CLI ``main`` and turn a :class:`UserError` or a full disk into ``error: ...`` and exit code 2.

    Python warnings print as ``warning: <message>``, like :func:`warn`, without a source line.
    """
    warnings.formatwarning = _format_warning
    try:
        return int(main(argv) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from kdsearch.diskspace import disk_full_message, is_disk_full

        if not is_disk_full(exc):
            raise
        print(f"error: {disk_full_message(exc)}", file=sys.stderr)
        return 2
