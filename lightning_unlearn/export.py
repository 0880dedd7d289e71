"""Saving edits: a folded open_clip folder, and a small edit artifact that re-applies to the original model.

* :func:`save_folded` writes an open_clip ``local-dir:`` folder (``open_clip_config.json`` +
  ``open_clip_model.safetensors``) of the model with every edit merged into its weights; it loads
  anywhere with ``open_clip.create_model_and_transforms("local-dir:DIR")``, no lightning_unlearn
  needed. The caller's model is left as it is (a deep copy is folded).
* :func:`save_edit` / :func:`load_edit` / :func:`apply_edit` / :func:`remove_edit`: the edit alone
  (its d x d maps, the request and config that produced them, the edits each was computed after,
  and a sha256 digest of every weight it was computed on), a few hundred KB instead of a whole
  model. Applying checks that digest (failing closed when it is missing or partial) and the chain
  of edits, so an edit never lands silently on weights it was not made for, twice, or without the
  edits it was computed on top of.

Every write goes to a temporary file or folder next to the destination, is flushed to disk and renamed
into place (swapped atomically with the previous output where the file system can), so an interrupted
run leaves either the old output or the complete new one, never half of it; what a killed run leaves
is cleaned by the next write of the same output. Output folders carry a marker file, and only marked
folders are ever replaced: a folder of the user's (a downloaded model, the input) never is.
Loads use safetensors only; nothing here unpickles.
"""
from __future__ import annotations

import copy
import ctypes
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import open_clip
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrize

from .edit import (EditError, ProjectorEdit, Unlearned, chain, check_after, check_model, edit_modules, edits, fold_,
                   fresh_name, inject_, place, remove_edit_, restore_)
from .encoders import hf_kind
from .errors import UnlearnError
from .sites import TOWERS, UnsupportedModelError, find_site, folded_config
from .state import check_digest, map_digest, missing_digest, provenance, weights_digest

FORMAT = "lightning_unlearn.edit"
#: 2: the weights digest covers every weight, per precision; edits record their predecessors. 3: a content
#: digest covers the maps and the metadata; edits are chained by their maps' digests.
VERSION = 3
CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
EDIT_NAME = "edit.safetensors"


class ArtifactError(UnlearnError, ValueError):
    """An edit artifact (or model folder) that cannot be read or does not fit."""


class WeightsMismatchError(EditError):
    """The edit was computed on different projection weights than the model's (their weights digests differ)."""


# ---------------------------------------------------------------------------------------------- writing
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
                              f"written by lightning_unlearn (no {MARKER_NAME} marker file); only folders this library wrote "
                              "are replaced. Choose another path, or delete it yourself if you mean to")
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
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    return False  # EINVAL / ENOSYS: the file system cannot exchange; fall back to two renames


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
    """Write ``obj`` as indented JSON, atomically."""
    with staged_file(path, overwrite) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")
    return Path(path)


def _jsonable(o):
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    raise TypeError(f"cannot write {type(o).__name__} as JSON")


def _plain(obj):
    """``obj`` with tuples as lists (JSON round trip)."""
    return json.loads(json.dumps(obj, default=_jsonable))


# ---------------------------------------------------------------------------------------------- folded model
@contextmanager
def quiet_open_clip():
    """Silence open_clip's root-logger warnings ("No pretrained weights loaded ...") while building a
    model whose weights are loaded separately."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def preprocess_config(model: nn.Module) -> dict:
    """The image preprocessing open_clip attached to ``model`` (size, mean, std, interpolation...)."""
    return _plain(open_clip.get_model_preprocess_cfg(model))


def _state_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    # Clone: safetensors refuses tensors that share storage (tied weights); open_clip loads them apart.
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def _check_against_config(state: dict[str, torch.Tensor], folder: Path) -> None:
    """Build the architecture ``folder``'s config describes and compare keys and shapes with ``state``."""
    try:
        with quiet_open_clip(), torch.device("meta"):  # shapes only: no memory, no init time
            ref = open_clip.create_model(f"local-dir:{folder}", load_weights=False, device="meta")
    except Exception as e:  # noqa: BLE001 - open_clip raises many types for a bad config
        raise ArtifactError(f"open_clip cannot build a model from this model_cfg: {type(e).__name__}: {e}") from e
    expected = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
    if missing or unexpected or shapes:
        raise ArtifactError("the model's weights do not match model_cfg: " + describe_key_mismatch(
            missing, unexpected, [f"{k} (model {got[k]}, config {expected[k]})" for k in shapes]))


def describe_key_mismatch(missing, unexpected, shapes=(), limit: int = 8) -> str:
    """'missing keys [...]; unexpected keys [...]; shape mismatches [...]' with at most ``limit`` each."""
    def some(keys):
        keys = list(keys)
        return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
    parts = [f"{what} ({len(keys)}): {some(keys)}" for what, keys in
             [("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)] if keys]
    return "; ".join(parts) or "no differences"


def write_folded_into(folder: str | Path, model: nn.Module, model_cfg: dict,
                      preprocess_cfg: dict | None = None) -> Path:
    """Write the folded ``model`` (``open_clip_config.json`` + ``open_clip_model.safetensors``) into the
    existing ``folder`` (no staging: :func:`save_folded` wraps this in a temporary folder)."""
    if not isinstance(model_cfg, dict) or "vision_cfg" not in model_cfg or "text_cfg" not in model_cfg:
        got = f"keys {sorted(model_cfg)}" if isinstance(model_cfg, dict) else type(model_cfg).__name__
        raise ArtifactError("`model_cfg` must be an open_clip model config dict with 'vision_cfg' and 'text_cfg' "
                            f"(from open_clip.get_model_config(name)); got {got}")
    folder = Path(folder)
    model_cfg = folded_config(model, model_cfg)  # a layer an edit installed becomes an open_clip projection
    provenance = [dict(e.info, tensor=name) for name, e in edit_modules(model) if e.layout != "bias"]
    folded = copy.deepcopy(model)
    fold_(folded)
    state = _state_for_saving(folded)
    del folded
    config = {"model_cfg": _plain(model_cfg), "preprocess_cfg": _plain(preprocess_cfg or preprocess_config(model)),
              "lightning_unlearn": {"folded_edits": provenance}}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    _check_against_config(state, folder)
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    return folder


def save_folded(model: nn.Module, model_cfg: dict, out_dir: str | Path, overwrite: bool = False,
                preprocess_cfg: dict | None = None) -> Path:
    """Write ``model`` with its edits folded in as an open_clip ``local-dir:`` folder.

    ``model_cfg`` is the architecture dict open_clip builds the model from
    (``open_clip.get_model_config(name)``, or ``model_cfg`` of a local-dir's config file);
    ``preprocess_cfg`` defaults to the one open_clip attached to ``model``. The folder holds
    ``open_clip_config.json`` ({"model_cfg", "preprocess_cfg", "lightning_unlearn": provenance}) and
    ``open_clip_model.safetensors``; the weights are checked against ``model_cfg`` before anything
    is written. A deep copy is folded: ``model`` itself is not changed. An existing ``out_dir``
    raises ``FileExistsError`` unless ``overwrite``. Returns the folder.

    >>> # save_folded(model, open_clip.get_model_config("ViT-B-32"), "vit-b32-no-dogs")
    >>> # open_clip.create_model_and_transforms("local-dir:vit-b32-no-dogs")

    A transformers model (``model_cfg=None``) is written by :func:`save_pretrained_folded`.
    """
    if hf_kind(model):
        if model_cfg is not None:
            raise ValueError("a transformers model carries its own config: pass model_cfg=None")
        return save_pretrained_folded(model, out_dir, overwrite)
    with staged_dir(out_dir, overwrite) as tmp:
        write_folded_into(tmp, model, model_cfg, preprocess_cfg)
    return Path(out_dir)


def save_pretrained_folded(model: nn.Module, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write a transformers ``CLIPModel`` / ``SiglipModel`` with its edits folded in, by
    ``save_pretrained``: the folder loads with ``<Class>.from_pretrained(out_dir)``, no
    lightning_unlearn needed. A tower whose edit sits in a layer the architecture does not have
    (the vision tower of ``SiglipModel``) raises: ``from_pretrained`` would drop that layer."""
    for tower in TOWERS:
        site = find_site(model, tower)
        if site.slot is not None and site.slot.installed is not None and site.slot.folded_cfg is None:
            raise ArtifactError(f"the {tower} edit of this {type(model).__name__} lives in a layer its architecture "
                                "does not have (no projection on that tower), so from_pretrained would drop it: save "
                                "the edit with save_edit and re-apply it with apply_edit after from_pretrained, or "
                                "edit the other tower (towers=('text',))")
    with staged_dir(out_dir, overwrite) as tmp:
        folded = copy.deepcopy(model)
        fold_(folded)
        folded.save_pretrained(str(tmp))
    return Path(out_dir)


def save_model_and_edit(model: nn.Module, model_cfg: dict, out_dir: str | Path, overwrite: bool = False,
                        inputs=()) -> list[str]:
    """:func:`save_folded` plus, when ``model`` carries edits, the edit alone (``edit.safetensors`` +
    ``edit.json``, see :func:`save_edit`) in the same folder, written in one step. ``inputs``: paths
    being read (the model's folder or weights) that ``out_dir`` may not replace. Returns the file names."""
    with staged_dir(out_dir, overwrite, inputs=inputs) as tmp:
        write_folded_into(tmp, model, model_cfg)
        if edits(model):
            save_edit(model, tmp / EDIT_NAME)
    return sorted(p.name for p in Path(out_dir).iterdir())


def read_local_dir_config(folder: str | Path) -> dict:
    """The parsed ``open_clip_config.json`` of a local-dir model folder (clear errors if absent or bad)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist" if not folder.exists()
                                else f"{folder} is a file; a local-dir model is a folder holding {CONFIG_NAME}")
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}; a local-dir model folder holds {CONFIG_NAME} and "
                                f"{WEIGHTS_NAME} (as written by save_folded or `lightning-unlearn unlearn`)")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"cannot read {path}: {e}") from e
    if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
        raise ArtifactError(f"{path} has no 'model_cfg' object; open_clip needs {{\"model_cfg\": ..., "
                            "\"preprocess_cfg\": ...}")
    return config


# ---------------------------------------------------------------------------------------------- edit artifact
@dataclass
class EditArtifact:
    """A saved edit: ``entries`` in application order, each ``{"tower", "site", "info"}`` with its map
    in ``maps`` (same order); ``weights_digest`` of the weights it was computed on (see
    :func:`~lightning_unlearn.state.weights_digest`); ``meta``: the whole JSON metadata."""
    maps: list[torch.Tensor]
    entries: list[dict]
    weights_digest: dict
    meta: dict = field(default_factory=dict)

    @property
    def requests(self) -> list[dict]:
        """The distinct requests (as dicts) the artifact's edits were computed for, in order."""
        out = []
        for e in self.entries:
            r = e["info"].get("request")
            if r is not None and r not in out:
                out.append(r)
        return out


def _entries_from_model(model: nn.Module) -> tuple[list[torch.Tensor], list[dict]]:
    maps, entries = [], []
    for tower in TOWERS:
        try:
            site = find_site(model, tower)
        except UnsupportedModelError:
            continue
        if not parametrize.is_parametrized(site.module, site.weight):
            continue
        for e in getattr(site.module.parametrizations, site.weight):
            if isinstance(e, ProjectorEdit):
                maps.append(e.P.weight.detach().float().cpu().clone())
                entries.append({"tower": tower, "site": e.side, "info": _plain(e.info)})
    return maps, entries


def _entries_from_unlearned(u: Unlearned) -> tuple[list[torch.Tensor], list[dict]]:
    # the info unlearn_ attached to the injected edit (with the edits it was computed on top of)
    info = provenance(u.request, u.config)
    maps = [u.maps[t].detach().float().cpu().clone() for t in u.maps]
    return maps, [{"tower": t, "site": u.config.site, "info": _plain(dict(u.infos.get(t, info), name=u.name))}
                  for t in u.maps]


def _metadata(entries: list[dict], digest: dict) -> dict:
    from . import __version__

    def unique(key):
        values = [e["info"].get(key) for e in entries]
        return values[0] if values and all(v == values[0] for v in values) else None
    sites = {e["site"] for e in entries}
    return {"format": FORMAT, "version": VERSION, "library_version": __version__,
            "request": unique("request"), "config": unique("config"),
            "site": sites.pop() if len(sites) == 1 else None,
            "edits": [{"tower": e["tower"], "site": e["site"], "info": e["info"]} for e in entries],
            "fingerprint": {"algorithm": "sha256 of names, shapes and values rounded to each precision",
                            "tensors": digest}}  # the weights digest


def content_digest(meta: dict, maps: list[torch.Tensor]) -> str:
    """sha256 of an edit file's metadata (canonical JSON, without this digest) and of its maps: a file
    whose maps or metadata changed after :func:`save_edit` wrote it is refused on load."""
    body = json.dumps({k: v for k, v in meta.items() if k != "content"}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode() + "".join(map_digest(m) for m in maps).encode()).hexdigest()


def save_edit(obj: Unlearned | nn.Module, path: str | Path, *, model: nn.Module | None = None,
              overwrite: bool = False) -> Path:
    """Save an edit alone: ``path`` (safetensors: one map per edit, the JSON metadata in the file's
    header) plus a human-readable copy of the metadata next to it (``path`` with suffix ``.json``).

    ``obj`` is an edited model (every injected edit is saved, in order) or the :class:`Unlearned`
    that :func:`unlearn_` returned, together with ``model=`` (the model it was computed on, edited
    or not: its projection weights are digested). Returns ``path``.
    """
    path = Path(path)
    if isinstance(obj, Unlearned):
        if model is None:
            raise TypeError("save_edit(unlearned, path) needs `model=`: the model the edit was computed on, "
                            "whose projection weights are digested so the edit is only re-applied to them")
        maps, entries = _entries_from_unlearned(obj)
    elif isinstance(obj, nn.Module):
        if model is not None and model is not obj:
            raise TypeError("pass either an edited model or an Unlearned with `model=`, not two models")
        model = obj
        maps, entries = _entries_from_model(model)
        if not maps:
            raise EditError("the model carries no edit to save; run unlearn_(model, ...) first")
    else:
        raise TypeError(f"save_edit expects an Unlearned or an edited model, got {type(obj).__name__}")
    sidecar = path.with_suffix(".json")
    if sidecar == path:
        raise ValueError(f"give the edit a .safetensors path, not {path} (its metadata goes to a .json next to it)")
    check_output(path, overwrite, folder=False)
    check_output(sidecar, overwrite, folder=False)
    meta = _metadata(entries, weights_digest(model))
    meta["content"] = content_digest(meta, maps)
    tensors = {f"maps.{i}": m.contiguous() for i, m in enumerate(maps)}
    with staged_file(path, overwrite) as tmp:
        save_file(tensors, str(tmp), metadata={FORMAT: json.dumps(meta)})
    write_json(meta, sidecar, overwrite)
    return path


def load_edit(path: str | Path) -> EditArtifact:
    """Read an edit saved by :func:`save_edit` (safetensors only; nothing is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"edit file {path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises SafetensorError, OSError, ...
        raise ArtifactError(f"cannot read edit {path}: {type(e).__name__}: {e}; expected a .safetensors file "
                            "written by save_edit") from e
    if FORMAT not in header:
        raise ArtifactError(f"{path} is a safetensors file but not a lightning_unlearn edit (no {FORMAT!r} metadata)")
    try:
        meta = json.loads(header[FORMAT])
        entries, digest = meta["edits"], meta["fingerprint"]["tensors"]
        version = meta["version"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ArtifactError(f"{path} has damaged edit metadata ({type(e).__name__}: {e})") from e
    if version > VERSION:
        raise ArtifactError(f"{path} is an edit of format version {version}; this lightning_unlearn reads up to "
                            f"{VERSION}: upgrade the package")
    maps = []
    for i, e in enumerate(entries):
        m = tensors.get(f"maps.{i}")
        if m is None or m.ndim != 2 or m.shape[0] != m.shape[1] or e.get("tower") not in TOWERS:
            raise ArtifactError(f"{path} is damaged: edit {i} ({e.get('tower')!r}) has "
                                + ("no map" if m is None else f"a map of shape {tuple(m.shape)}"))
        maps.append(m)
    if version >= 3 and meta.get("content") != content_digest(meta, maps):
        raise ArtifactError(f"{path} was altered after it was saved: its maps or metadata do not match the content "
                            f"digest it carries ({str(meta.get('content'))[:12]}..., computed "
                            f"{content_digest(meta, maps)[:12]}...). Use the file save_edit wrote, or save the edit "
                            "again from the edited model")
    for i, (m, e) in enumerate(zip(maps, entries)):
        if e["info"].get("map", map_digest(m)) != map_digest(m):
            raise ArtifactError(f"{path} is damaged: edit {i}'s map does not match the digest its metadata records")
    return EditArtifact(maps, entries, digest, meta)


def apply_edit(model: nn.Module, artifact: EditArtifact | str | Path, *, compose: bool = False,
               check: bool = True) -> nn.Module:
    """Inject a saved edit into ``model`` (in place), after checking that the model's weights (all of
    them, at the lower of the two precisions) are the ones the edit was computed on, that it is not
    applied already and that the edits it was computed after are there, in order. A model that
    already carries edits raises unless ``compose=True``. ``check=False`` skips the weights check
    only. Undo with :func:`remove_edit`. Returns ``model``."""
    if not isinstance(artifact, EditArtifact):
        artifact = load_edit(artifact)
    check_model(model)
    existing = edits(model)
    if existing and not compose:
        raise EditError(f"the model already carries {len(existing)} edit(s); call remove_edit(model) first or pass "
                        "compose=True to stack this one on top")
    if check:
        reqs = "; ".join(_describe(r) for r in artifact.requests) or "unknown request"
        missing = missing_digest(artifact.weights_digest, model, sorted({e["tower"] for e in artifact.entries}))
        if missing:
            raise ArtifactError(f"this edit (for {reqs}) has no weights digest for {', '.join(missing)}, so nothing "
                                "shows which weights it was computed on, and it is refused (an older or altered file). "
                                "Save it again with save_edit from the model it was computed on, or pass check=False "
                                "if you are sure it fits this model")
        problems, notes = check_digest(artifact.weights_digest, model)
        if problems:
            raise WeightsMismatchError(
                "this edit was computed on different weights than this model's: " + "; ".join(problems)
                + f". Apply it to the model it was made from (edit for: {reqs}), or recompute it with unlearn_ "
                "on this model")
        for note in notes:
            logging.getLogger(__name__).warning("apply_edit: %s", note)
    for i, (M, e) in enumerate(zip(artifact.maps, artifact.entries)):
        site = find_site(model, e["tower"])
        n = site.dims[1] if e["site"] == "joint" else site.dims[0]
        if tuple(M.shape) != (n, n):
            raise ArtifactError(f"edit {i} has shape {tuple(M.shape)} but the {e['tower']} projection needs ({n}, {n}) "
                                f"at site {e['site']!r}")
    names, before = {}, edits(model)  # an edit's maps share its name; a name the model carries gets a suffix
    try:
        for i, (M, e) in enumerate(zip(artifact.maps, artifact.entries)):
            _check_entry(model, i, M, e)
            base = e["info"].get("name") or "edit"
            names.setdefault(base, fresh_name(model, base))
            inject_(model, M, e["tower"], e["site"], e["info"], name=names[base],
                    position=place(model, e["tower"], e["info"]))
    except BaseException:  # all or nothing: the edits of this file that went in come out
        for name in reversed([n for n in edits(model) if n not in before]):
            if name in edits(model):
                remove_edit_(model, name, cascade=True)
        raise
    return model


def _check_entry(model: nn.Module, i: int, M: torch.Tensor, e: dict) -> None:
    """Refuse an entry whose map the model already carries (by its digest: the same map twice), or
    that was computed on top of edits the model does not carry where it would go
    (:func:`~lightning_unlearn.edit.check_after`)."""
    what = f"edit {i} ({e['tower']} tower, {_describe(e['info'].get('request') or {})})"
    if map_digest(M) in chain(model, e["tower"]):
        raise EditError(f"{what} is already applied to this model (its map, digest {map_digest(M)[:12]}..., is in "
                        "the chain): applying it again would apply the same map twice. Call remove_edit(model) first "
                        "to start over")
    check_after(model, e["tower"], e["info"], place(model, e["tower"], e["info"]), what)


def _describe(request: dict) -> str:
    """A saved request (a dict, possibly partial) in words, for messages."""
    return f"classes {request.get('forget_classes')} domains {request.get('forget_domains')}"


def remove_edit(model: nn.Module) -> nn.Module:
    """Remove every injected edit: the state_dict is bit-identical to the unedited model's again."""
    restore_(model)
    return model
