"""How the command line ends: the one line an interrupt (Ctrl-C) prints, saying which outputs were
complete, and the exit that skips the interpreter's teardown once the outputs are written.

Standard library only: the command line uses it before torch is imported.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
from typing import Callable, NoReturn


def interrupted_line(where: str, done: list[str], json_path: str | None = None) -> str:
    """The line an interrupt prints.

    Args:
        where: who was interrupted (``"lightning-unlearn unlearn"``).
        done: the outputs written and complete before the interrupt, by their names.
        json_path: the ``--json`` destination, if any; named as not written unless ``done`` lists it.

    Returns:
        One line, without its newline.
    """
    if not done:
        return f"{where}: interrupted before any output was complete; nothing half-written was left behind"
    missing = f"; --json {json_path} was not written" if json_path and f"--json {json_path}" not in done else ""
    return f"{where}: interrupted; complete: {', '.join(done)}{missing}"


def end(code: int, line: Callable[[], str]) -> NoReturn:
    """End the process once its outputs are written: exit handlers run, then the process exits
    without the interpreter's teardown (seconds of freeing torch, during which an interrupt would
    end it with no word); an interrupt from here on prints ``line()`` and exits 130."""
    signal.signal(signal.SIGINT, lambda *_: exit_now(130, line()))
    atexit._run_exitfuncs()
    exit_now(code)


def exit_now(code: int, line: str = "") -> NoReturn:
    """Flush stdout, write ``line`` (if any) to stderr and exit with ``code`` at once."""
    for stream, text in ((sys.stdout, ""), (sys.stderr, line and line + "\n")):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe
            stream.write(text)
            stream.flush()
    os._exit(code)


def note_interrupts(caught: list) -> None:
    """Interrupts raise ``KeyboardInterrupt`` as usual and are also noted in ``caught``: one raised where
    Python drops exceptions (a finaliser, a weakref callback) is then still reported, without a traceback."""
    def handler(signum, frame):
        caught.append(signum)
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, handler)
    hook = sys.unraisablehook
    sys.unraisablehook = lambda u: None if issubclass(u.exc_type, KeyboardInterrupt) else hook(u)
