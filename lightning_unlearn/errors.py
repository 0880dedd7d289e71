"""The common base of every exception this library raises.

Each library exception also keeps its standard-library base (``RequestError`` is a ``ValueError``,
``UnsupportedModelError`` a ``TypeError``, ...), so ``except UnlearnError`` catches any error of this
library while older ``except ValueError`` handlers keep working. Imports nothing: every module can use it.
"""


class UnlearnError(Exception):
    """Base of every exception raised by ``lightning_unlearn``."""


class EditError(UnlearnError, RuntimeError):
    """An edit that cannot be applied to this model in its current state."""
