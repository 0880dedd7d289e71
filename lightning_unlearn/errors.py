"""The common base of every exception this library raises.

Each library exception also keeps its standard-library base (``RequestError`` is a ``ValueError``,
``UnsupportedModelError`` a ``TypeError``, ...), so ``except UnlearnError`` catches any error of this
library while older ``except ValueError`` handlers keep working. Imports nothing of the library: every
module can use it.
"""
import difflib


class UnlearnError(Exception):
    """Base of every exception raised by ``lightning_unlearn``."""


class EditError(UnlearnError, RuntimeError):
    """An edit that cannot be applied to this model in its current state."""


def check_fields(given, fields, what: str, error: type[Exception] = ValueError) -> None:
    """Refuse names of ``given`` not in ``fields``, naming the closest valid one.

    Raises:
        error: ``unknown <what> [...] ('x' -> did you mean 'y'?); valid fields are [...]``.
    """
    fields = list(fields)
    unknown = sorted(set(given) - set(fields))
    if unknown:
        hints = {u: difflib.get_close_matches(u, fields, n=1) for u in unknown}
        hint = "; ".join(f"{u!r} -> did you mean {h[0]!r}?" for u, h in hints.items() if h)
        raise error(f"unknown {what} {unknown}{' (' + hint + ')' if hint else ''}; valid fields are {fields}")
