"""Every exception class of the package is an UnlearnError and keeps its standard-library base."""
import importlib
import inspect
import pkgutil

import pytest

import lightning_unlearn
from lightning_unlearn import UnlearnError

#: the standard-library base each exception had before UnlearnError (callers catching it keep working)
STDLIB_BASES = {"CLIError": Exception, "UnsupportedStrategyError": ValueError, "UnsupportedModelError": TypeError,
                "ArtifactError": ValueError, "WeightsMismatchError": RuntimeError, "OutputError": FileExistsError,
                "EditError": RuntimeError, "RequestError": ValueError, "LoadError": ValueError,
                "AuditError": ValueError, "PeerFailedError": RuntimeError}


def package_exceptions() -> dict[str, type]:
    found = {}
    for info in pkgutil.walk_packages(lightning_unlearn.__path__, "lightning_unlearn."):
        module = importlib.import_module(info.name)
        found.update({f"{cls.__module__}.{name}": cls for name, cls in inspect.getmembers(module, inspect.isclass)
                      if issubclass(cls, BaseException) and cls.__module__ == info.name})
    return found


def test_every_exception_is_an_unlearn_error_and_keeps_its_stdlib_base():
    found = package_exceptions()
    assert set(STDLIB_BASES) <= {qual.rsplit(".", 1)[1] for qual in found}  # new classes are checked too
    for qual, cls in found.items():
        assert issubclass(cls, UnlearnError), qual
        assert issubclass(cls, STDLIB_BASES.get(cls.__name__, Exception)), qual


def test_one_except_clause_catches_any_library_error():
    with pytest.raises(UnlearnError):
        lightning_unlearn.ForgetRequest(["cat", "dog"], ["photo"], forget_classes=["cow"])
    assert lightning_unlearn.UnlearnError is UnlearnError and "UnlearnError" in lightning_unlearn.__all__
