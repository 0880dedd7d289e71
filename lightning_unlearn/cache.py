"""Reuse across requests: a key of a model's weights, a prompt-embedding cache and a prototype bank.

Everything computed from the model (prompt embeddings, synthesised prototypes) is stored under
:func:`weights_key`, a digest of every byte of every parameter and buffer (an injected edit is a
parameter too), so one cache serves any number of models in one process and never hands one model's
result to another. :func:`use` makes a cache the current one for a block (nested blocks stack; each
thread starts with the default); by default every call shares one process-wide :class:`Cache`
(:data:`DEFAULT`), and ``unlearn_(..., cache=...)`` picks one per call. A :class:`Cache` and its
banks may be shared by threads (a lock guards them) and are bounded (oldest entries dropped first).
A :class:`PrototypeBank` can also live on disk
(safetensors, written atomically, merged with what is on disk under a lock) with a checksum per
entry; a damaged bank, one of other weights or one whose contents changed is refused, naming the
file and the fix.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
import weakref
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from pathlib import Path

import torch
from torch import nn

_memo: "weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[tuple, bytes]]]" = weakref.WeakKeyDictionary()
_memo_lock = threading.Lock()


def _signature(t: torch.Tensor) -> tuple:
    """What identifies a tensor's values without reading them all: storage, shape, dtype, the
    version counter (bumped by every in-place change, e.g. ``load_state_dict`` or ``copy_``) and
    three values (writes through ``.data`` leave the counter alone)."""
    probe = tuple(t.detach().reshape(-1)[[0, t.numel() // 2, -1]].tolist()) if t.numel() else ()
    return t.data_ptr(), t._version, tuple(t.shape), t.dtype, str(t.device), probe


def _bytes(t: torch.Tensor):
    """Every byte of ``t``'s values, as a flat uint8 array on the CPU."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def _digest(t: torch.Tensor) -> bytes:
    """Content digest of one tensor: blake2b (16 bytes) of every byte of its values."""
    return hashlib.blake2b(_bytes(t), digest_size=16).digest()


@torch.no_grad()
def weights_key(model: nn.Module) -> str:
    """A 16-byte hex digest of every parameter and buffer of ``model``: names, shapes, dtypes and
    every byte of the values (blake2b), so two models share a key only if their tensors are
    identical (or the 128-bit digests collide: with n different models, a chance below n**2 / 2**129).

    Each tensor is read in full once (measured: about 1 s for ViT-B-32's 151 M parameters on one
    core, 0.08 s for the embedded model) and its digest reused while the tensor is not replaced
    and not changed in place (torch's version counter). A write through ``.data`` leaves the counter
    alone: it is seen only if it changes the first, middle or last value (the three probed on every
    call), so write weights with ``copy_`` / ``load_state_dict`` under ``torch.no_grad()``."""
    with _memo_lock:
        seen = _memo.setdefault(model, {})
    h = hashlib.blake2b(digest_size=16)
    for n, t in list(model.named_parameters()) + list(model.named_buffers()):
        sig = _signature(t)
        if n not in seen or seen[n][0] != sig:
            seen[n] = (sig, _digest(t))
        h.update(f"{n}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(seen[n][1])
    return h.hexdigest()


def settings_key(**settings) -> str:
    """A short stable digest of synthesis settings (anything JSON can write)."""
    return hashlib.blake2b(json.dumps(settings, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


FORMAT = "prototype-bank-2"
#: Default bound of one :class:`PrototypeBank` (bytes of values): 512 MiB, e.g. 2,000 cells of 64
#: prototypes of a 1,024-wide site. :data:`MAX_BANKS` banks (one per model weights) are kept.
MAX_BANK_BYTES = 512 * 2 ** 20
MAX_BANKS = 4


def _checksum(key: str, t: torch.Tensor) -> str:
    """Digest of one entry: its key, shape, dtype and every byte of its values."""
    h = hashlib.blake2b(f"{key}|{tuple(t.shape)}|{t.dtype}|".encode(), digest_size=16)
    h.update(_bytes(t))
    return h.hexdigest()


def _refused(path, why: str) -> ValueError:
    where = "the in-memory prototype bank" if path is None else f"the prototype bank {str(path)!r}"
    fix = ("clear it (cache.current().clear())" if path is None else
           "delete or move the file (a bank is a cache: it is rebuilt on the next run) or use another cache directory")
    return ValueError(f"{where} {why}; {fix}")


@contextmanager
def _locked(folder: Path):
    """An exclusive lock on ``folder`` (``flock``; where there is none, e.g. Windows, no lock)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class PrototypeBank:
    """Synthesised prototypes of one model's weights: ``{key: tensor}`` where the key names the
    cell's prompts, the label space, the seed and the synthesis settings (see
    :func:`prototypes.synthesize`). ``path`` (a ``.safetensors`` file) makes it persistent:
    :meth:`save` merges it with the file's entries and writes it atomically, under a lock on the
    folder, with a checksum per entry; :meth:`load` reads it and raises, naming the file and the
    fix, if it is damaged, was made for other weights or its contents changed since it was saved.
    :meth:`get` checks an entry's shape and values.

    ``max_bytes`` (default :data:`MAX_BANK_BYTES`) bounds the values held, in memory and in the
    file: past it the oldest entries (first put, or first in the file) are dropped, and the
    prototypes they held are synthesised again when next needed. Threads may share a bank."""

    def __init__(self, weights: str, path: str | os.PathLike | None = None, max_bytes: int | None = None):
        self.weights, self.path = weights, None if path is None else Path(path)
        self.max_bytes = MAX_BANK_BYTES if max_bytes is None else max_bytes
        if not isinstance(self.max_bytes, int) or self.max_bytes < 0:
            raise ValueError(f"`max_bytes`={max_bytes!r} must be a non-negative number of bytes (default "
                             f"MAX_BANK_BYTES = {MAX_BANK_BYTES})")
        self.entries: dict[str, torch.Tensor] = {}
        self.dirty = False
        self._lock = threading.RLock()

    def _bound(self) -> None:
        """Drop the oldest entries until the values fit in ``max_bytes``."""
        total = sum(t.nbytes for t in self.entries.values())
        for key in list(self.entries):
            if total <= self.max_bytes:
                break
            total -= self.entries.pop(key).nbytes

    def get(self, key: str, shape: tuple | None = None) -> torch.Tensor | None:
        """The entry ``key`` (None if absent); raises if it does not have ``shape`` or finite values."""
        with self._lock:
            t = self.entries.get(key)
        if t is not None and shape is not None and tuple(t.shape) != tuple(shape):
            raise _refused(self.path, f"has an entry of shape {tuple(t.shape)} where {tuple(shape)} was expected: it "
                                      "does not hold prototypes of these settings")
        if t is not None and not torch.isfinite(t).all():
            raise _refused(self.path, f"has an entry with {int((~torch.isfinite(t)).sum())} NaN or inf values")
        return t

    def put(self, key: str, value: torch.Tensor) -> None:
        """Store ``value`` under ``key`` (a new key is the newest entry), dropping the oldest past ``max_bytes``."""
        value = value.detach().cpu().contiguous()
        with self._lock:
            self.entries[key] = value
            self._bound()
            self.dirty = True

    def __len__(self) -> int:
        return len(self.entries)

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the bank (safetensors), merged with the entries already in the file (another
        process may have added some), under a lock on the folder, through a temporary file and an
        atomic rename."""
        from safetensors.torch import save_file
        path = Path(path or self.path or "")
        if not path.name:
            raise ValueError("the bank has no `path`; pass one to save(path) or to PrototypeBank(weights, path)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock, _locked(path.parent):
                self.entries = PrototypeBank.load(path, self.weights).entries | self.entries
                self._bound()
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
                os.close(fd)
                try:
                    sums = json.dumps({k: _checksum(k, t) for k, t in self.entries.items()}, sort_keys=True)
                    save_file(dict(self.entries), tmp, metadata={"weights": self.weights, "format": FORMAT,
                                                                 "checksums": sums})
                    os.replace(tmp, path)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
        except OSError as e:
            raise OSError(f"cannot write the prototype bank {str(path)!r} ({e}); make {str(path.parent)!r} a "
                          "writable folder or use another cache directory") from e
        self.dirty = False
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, weights: str, max_bytes: int | None = None) -> "PrototypeBank":
        """The bank at ``path`` for the model whose :func:`weights_key` is ``weights``; an empty bank
        if the file does not exist yet."""
        from safetensors import safe_open
        bank, path = cls(weights, path, max_bytes), Path(path)
        if not path.exists():
            return bank
        if not path.is_file():
            raise _refused(path, "is not a file")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                entries = {k: f.get_tensor(k) for k in f.keys()}
            sums = dict(json.loads(meta.get("checksums", "{}")))
        except Exception as e:  # noqa: BLE001 - safetensors, OSError, JSON: every way a file can be damaged
            raise _refused(path, f"cannot be read ({type(e).__name__}: {e}): it is damaged, truncated or not a "
                                 "bank") from e
        if meta.get("format") != FORMAT:
            raise _refused(path, f"has format {meta.get('format')!r}, not {FORMAT!r} (it is not a bank, or one "
                                 "written without checksums)")
        if meta.get("weights") != weights:
            raise _refused(path, f"was made for weights {meta.get('weights')!r}, not for this model ({weights!r})")
        changed = sorted(set(sums) ^ set(entries) | {k for k, t in entries.items() if sums.get(k) != _checksum(k, t)})
        if changed:
            raise _refused(path, f"has {len(changed)} of {len(entries)} entries that do not match the checksums "
                                 f"written with them (e.g. {changed[0][:16]!r}): its contents changed after it "
                                 "was saved")
        bank.entries = entries
        bank._bound()
        return bank


class Cache:
    """Prompt embeddings ``{(weights key, tokenizer, text): embedding}`` and prototype banks
    ``{weights key: PrototypeBank}``, in memory; ``directory`` keeps the banks on disk as
    ``<directory>/<weights key>.safetensors`` (a ``directory`` that is, or lies under, a file is
    refused at once). Bounded, oldest dropped first: ``max_texts`` embeddings, ``max_banks`` banks
    (one per model weights; a persistent one is saved as it goes) of ``max_bank_bytes`` each
    (:data:`MAX_BANK_BYTES`, :data:`MAX_BANKS`). Threads may share it: a lock guards its dicts."""

    def __init__(self, directory: str | os.PathLike | None = None, max_texts: int = 100_000,
                 max_bank_bytes: int | None = None, max_banks: int = MAX_BANKS):
        self.directory = None if directory is None else Path(directory)
        if self.directory is not None:  # checked now: a bank that cannot be saved is only found at the end
            ancestor = next(p for p in (self.directory, *self.directory.parents) if p.exists())
            if not ancestor.is_dir():
                raise NotADirectoryError(f"the cache directory {str(self.directory)!r} cannot be created: "
                                         f"{str(ancestor)!r} is a file; give a folder (it is created if missing)")
        if not isinstance(max_banks, int) or max_banks < 1:
            raise ValueError(f"`max_banks`={max_banks!r} must be a positive number of banks (default {MAX_BANKS})")
        self.max_texts, self.max_bank_bytes, self.max_banks = max_texts, max_bank_bytes, max_banks
        self.texts: dict[tuple, torch.Tensor] = {}
        self.banks: dict[str, PrototypeBank] = {}
        self._lock = threading.RLock()

    def text(self, key: tuple) -> torch.Tensor | None:
        with self._lock:
            return self.texts.get(key)

    def put_texts(self, items) -> None:
        with self._lock:
            self.texts.update(items)
            while len(self.texts) > self.max_texts:
                self.texts.pop(next(iter(self.texts)))

    def bank(self, weights: str) -> PrototypeBank:
        with self._lock:
            if weights not in self.banks:
                while len(self.banks) >= self.max_banks:  # the oldest bank goes, saved first if persistent
                    _flush_or_warn(self, [self.banks.pop(next(iter(self.banks)))])
                self.banks[weights] = PrototypeBank(weights, max_bytes=self.max_bank_bytes) \
                    if self.directory is None else PrototypeBank.load(
                        self.directory / f"{weights}.safetensors", weights, self.max_bank_bytes)
            return self.banks[weights]

    def flush(self, banks=None) -> None:
        """Write every persistent bank (or those of ``banks``) that changed; no-op in memory."""
        with self._lock:
            for bank in list(self.banks.values()) if banks is None else banks:
                if self.directory is not None and bank.dirty:
                    bank.save()

    def clear(self) -> None:
        with self._lock:
            self.texts.clear()
            self.banks.clear()


def _flush_or_warn(cache: Cache, banks=None) -> None:
    """``cache.flush(banks)``; a bank that cannot be saved gives a warning naming the file."""
    try:
        cache.flush(banks)
    except (OSError, ValueError) as e:
        warnings.warn(f"{e}. What the block computed is kept; only its prototypes were not saved for reuse",
                      UserWarning, stacklevel=4)


#: The process-wide cache every thread starts with (in memory, default bounds).
DEFAULT = Cache()
_current: ContextVar[Cache | None] = ContextVar("lightning_unlearn_cache", default=DEFAULT)
#: ``unlearn_(..., cache=CURRENT)`` (its default): the cache in use (:func:`current`), :data:`DEFAULT` unless
#: a :func:`use` block chose another.
CURRENT = "current"


def current() -> Cache | None:
    """The cache in use here (None: caching is off)."""
    return _current.get()


@contextmanager
def use(cache: Cache | None):
    """Use ``cache`` (None: no caching) inside the block; blocks nest, and the previous cache is
    back after each one, also on error. The banks are saved on exit; a bank that cannot be saved
    gives a warning naming the file, never an exception: what the block did (e.g. an edit) stands."""
    if cache is not None and not isinstance(cache, Cache):
        raise TypeError(f"`cache` must be a lightning_unlearn.cache.Cache or None (no caching), got "
                        f"{type(cache).__name__}; unlearn_ also takes cache={CURRENT!r} (the cache in use)")
    token = _current.set(cache)
    try:
        yield cache
    finally:
        _current.reset(token)
        if cache is not None:
            _flush_or_warn(cache)


def chosen(cache: Cache | None | str = CURRENT):
    """The block under ``cache``: :data:`CURRENT` leaves the cache in use, a :class:`Cache` (or None:
    no caching) is used there as by :func:`use`."""
    return nullcontext(current()) if isinstance(cache, str) and cache == CURRENT else use(cache)
