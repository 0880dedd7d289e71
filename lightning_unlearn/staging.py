"""Atomic output files and folders: every write goes to a temporary file or folder next to the
destination, is flushed to disk and renamed into place.

The new output is swapped atomically with the previous one where the file system can (Linux
``renameat2(RENAME_EXCHANGE)``), so an interrupted run leaves either the old output or the complete
new one, never half of it; what a killed run leaves (hidden ``.NAME.PID.XXXX.partial`` / ``.old``
entries) is cleaned by the next write of the same output. Output folders carry a marker file, and
only marked folders are ever replaced: a folder of the user's (a downloaded model, the input) never
is. Used by :mod:`~lightning_unlearn.export`, :mod:`~lightning_unlearn.artifact` and the reports.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UnlearnError

#: Written into every folder this module creates: only folders holding it are ever replaced or deleted.
MARKER_NAME = ".lightning_unlearn"


class OutputError(UnlearnError, FileExistsError):
    """An output path that may not be written or replaced; the message says why and what to do."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_marked(folder: Path) -> bool:
    """Whether ``folder`` is one this module wrote (it holds :data:`MARKER_NAME`)."""
    return (folder / MARKER_NAME).is_file() and not (folder / MARKER_NAME).is_symlink()


def _same_or_nested(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def check_output(path: str | Path, overwrite: bool = False, folder: bool = True, inputs=()) -> Path:
    """Raise :class:`OutputError` unless ``path`` may be written: it must not exist, or ``overwrite`` is
    set and it is a file (``folder=False``) or a folder that is empty or holds the marker this module
    writes into its outputs (so a downloaded model folder, or any folder of the user's, is never
    replaced). A symbolic link is never replaced, and neither is (a folder holding, or inside) any of
    ``inputs`` (the model folder being read)."""
    path = Path(path)
    for src in inputs:
        if src is not None and Path(src).exists() and _same_or_nested(path, Path(src)):
            raise OutputError(f"refusing to write {path}: it is (or contains, or lies inside) the input {src} that "
                              "is being read; choose another output path")
    if path.is_symlink():
        raise OutputError(f"refusing to replace {path}: it is a symbolic link (to {os.readlink(path)}); replacing it "
                          "would break the link. Give the link's target as the output path, or remove the link")
    if not path.exists():
        if path.parent.exists() and not path.parent.is_dir():
            raise NotADirectoryError(f"cannot write {path}: {path.parent} is a file, not a folder")
        return path
    if not overwrite:
        raise OutputError(f"{path} already exists; choose another path or pass overwrite=True "
                          "(--overwrite on the command line) to replace it")
    if folder:
        if not path.is_dir():
            raise OutputError(f"{path} exists and is a file, not a model folder; refusing to replace it")
        contents = [p.name for p in path.iterdir()]
        if contents and not is_marked(path):
            raise OutputError(f"refusing to replace {path}: it holds {len(contents)} entries and is not a folder "
                              f"written by lightning_unlearn (no {MARKER_NAME} marker file); only folders this library "
                              "wrote are replaced. Choose another path, or delete it yourself if you mean to")
    elif path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file path")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


_STAGED = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-z_]{4,}\.(?P<kind>partial|old)$")


def clean_stale(out: str | Path) -> list[Path]:
    """Remove what killed earlier writes of ``out`` left next to it: hidden ``.NAME.PID.XXXX.partial``
    folders/files and ``.NAME.PID.XXXX.old`` folders whose process ``PID`` is gone. Only entries of
    this module's naming (and, for folders, holding its marker) are touched. An ``.old`` folder is the
    previous output of a write killed while replacing it: if ``out`` is missing it is put back.
    Returns the paths removed or restored."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    done = []
    for p in sorted(out.parent.iterdir()):
        m = _STAGED.match(p.name)
        if not m or m["name"] != out.name or _pid_alive(int(m["pid"])) or p.is_symlink():
            continue
        if p.is_dir() and not (is_marked(p) or not any(p.iterdir())):
            continue
        if m["kind"] == "old" and p.is_dir() and not os.path.lexists(out):
            os.rename(p, out)
            logging.getLogger(__name__).warning("restored %s from %s (left by an interrupted write)", out, p)
        elif p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        done.append(p)
    return done


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder
        pass
    finally:
        os.close(fd)


def _finish(tmp: Path) -> None:
    """Give every file and folder under ``tmp`` the modes the umask asks for (safetensors writes
    0600), and flush them to disk before the rename makes them visible."""
    mask = _umask()
    for p in sorted(tmp.rglob("*"), reverse=True) + [tmp]:
        if p.is_symlink():
            continue
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
        _fsync(p, directory=p.is_dir())


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap the two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    # EINVAL / ENOSYS (non-zero): the file system cannot exchange; the caller falls back to two renames
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _staged_name(out: Path, kind: str) -> Path:
    return out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.{kind}")


@contextmanager
def staged_dir(out_dir: str | Path, overwrite: bool = False, inputs=()) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``out_dir`` (holding the marker); on success its files
    are flushed to disk and it replaces ``out_dir``, atomically where the file system can exchange
    two paths; on any error (or interrupt) it is deleted and ``out_dir`` is left untouched.
    Leftovers of earlier killed runs are cleaned first (:func:`clean_stale`)."""
    out = check_output(out_dir, overwrite, folder=True, inputs=inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    tmp = _staged_name(out, "partial")
    tmp.mkdir()
    try:
        from . import __version__
        (tmp / MARKER_NAME).write_text(json.dumps({"written_by": "lightning_unlearn", "version": __version__}) + "\n")
        yield tmp
        check_output(out, overwrite, folder=True, inputs=inputs)  # it may have appeared meanwhile
        _finish(tmp)
        if out.exists():
            if _exchange(tmp, out):  # out is the new folder now, tmp the previous output
                _fsync(out.parent, directory=True)
                shutil.rmtree(tmp, ignore_errors=True)
                return
            old = _staged_name(out, "old")
            os.rename(out, old)
            try:
                os.rename(tmp, out)
            except BaseException as e:
                os.rename(old, out)  # put the previous output back
                raise OSError(f"could not move the new output into {out} ({e}); the previous output is back in "
                              f"place") from e
            _fsync(out.parent, directory=True)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
            _fsync(out.parent, directory=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def staged_file(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is flushed and renamed onto ``path``
    (one atomic rename: ``path`` is always either the old or the complete new file)."""
    out = check_output(path, overwrite, folder=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    tmp = _staged_name(out, "partial")
    try:
        tmp.touch(exist_ok=False)
        yield tmp
        check_output(out, overwrite, folder=False)
        _finish(tmp)
        os.replace(tmp, out)
        _fsync(out.parent, directory=True)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(obj, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``obj`` as indented JSON, atomically.

    Args:
        obj: JSON data; tuples, sets, paths and tensors are written as lists and strings.
        path: the file to write.
        overwrite: replace an existing file (never a folder or a symbolic link).

    Returns:
        ``path``.

    Raises:
        OutputError: ``path`` exists and ``overwrite`` is False, or it may not be replaced.
    """
    with staged_file(path, overwrite) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")
    return Path(path)


def _jsonable(o):
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported: no import here
    if torch is not None and isinstance(o, torch.Tensor):
        return o.tolist()
    raise TypeError(f"cannot write {type(o).__name__} as JSON")


def plain_json(obj):
    """``obj`` with tuples as lists (JSON round trip)."""
    return json.loads(json.dumps(obj, default=_jsonable))
