"""The edit file: one or more edits alone, apart from the weights, re-applied only to the weights they
were computed on.

:func:`save_edit` writes an edit's d x d maps, the request and config that produced them, the edits
each was computed after, and a sha256 digest of every weight it was computed on (a few hundred KB
instead of a whole model) to a safetensors file, with a readable ``.json`` copy of its metadata next
to it. :func:`load_edit` reads it back as an :class:`EditArtifact`; :func:`apply_edit_file_` injects
it into a model after checking that digest (failing closed when it is missing or partial) and the
chain of edits, so an edit never lands silently on weights it was not made for, twice, or without
the edits it was computed on top of. It returns the names of the edits it added: remove one with
:func:`~lightning_unlearn.edit.remove_edit_`, or every edit with :func:`~lightning_unlearn.edit.restore_`.

Format version 3: a content digest covers the maps and the metadata, and edits are chained by their
maps' digests. Files are written atomically (:mod:`~lightning_unlearn.staging`); loads use
safetensors only, nothing here unpickles.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .compose import chain, check_after, inject_, place, remove_edit_
from .edit import Unlearned, check_model
from .errors import EditError
from .localdir import ArtifactError
from .sites import TOWERS, find_site, tower_sites
from .stack import edits, fresh_name, site_edits
from .staging import check_output, plain_json, staged_file, write_json
from .state import check_digest, map_digest, missing_digest, provenance, weights_digest

__all__ = ["FORMAT", "VERSION", "ArtifactError", "EditArtifact", "WeightsMismatchError", "apply_edit_file_",
           "content_digest", "load_edit", "save_edit"]

FORMAT = "lightning_unlearn.edit"
#: 2: the weights digest covers every weight, per precision; edits record their predecessors. 3: a content
#: digest covers the maps and the metadata; edits are chained by their maps' digests.
VERSION = 3


class WeightsMismatchError(EditError):
    """The edit was computed on different projection weights than the model's (their weights digests differ)."""


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
    for tower, site in tower_sites(model).items():
        for e in site_edits(site):
            maps.append(e.P.weight.detach().float().cpu().clone())
            entries.append({"tower": tower, "site": e.side, "info": plain_json(e.info)})
    return maps, entries


def _entries_from_unlearned(u: Unlearned) -> tuple[list[torch.Tensor], list[dict]]:
    # the info unlearn_ attached to the injected edit (with the edits it was computed on top of)
    info = provenance(u.request, u.config)
    maps = [u.maps[t].detach().float().cpu().clone() for t in u.maps]
    return maps, [{"tower": t, "site": u.config.site, "info": plain_json(dict(u.infos.get(t, info), name=u.name))}
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

    Args:
        obj: an edited model (every injected edit is saved, in order) or the
            :class:`~lightning_unlearn.edit.Unlearned` that :func:`~lightning_unlearn.edit.unlearn_`
            returned, together with ``model=``.
        path: the ``.safetensors`` file to write.
        model: with an ``Unlearned``, the model it was computed on (edited or not: its weights are
            digested, so the edit is only re-applied to them).
        overwrite: replace existing files.

    Returns:
        ``path``.

    Raises:
        EditError: the model carries no edit.
        TypeError: an ``Unlearned`` without ``model=``, or ``obj`` is neither.
        OutputError: ``path`` or its ``.json`` exists and ``overwrite`` is False.
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
    """Read an edit saved by :func:`save_edit` (safetensors only; nothing is unpickled).

    Args:
        path: the ``.safetensors`` file.

    Returns:
        The :class:`EditArtifact`.

    Raises:
        FileNotFoundError: ``path`` is missing or not a file.
        ArtifactError: it is not an edit file, is of a newer format, or is damaged or altered (its
            content digest or a map's digest does not match).
    """
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



def apply_edit_file_(model: nn.Module, artifact: EditArtifact | str | Path, *, compose: bool = False,
                     check: bool = True) -> list[str]:
    """Inject the edits of a saved edit file into ``model``, in place, all or nothing.

    Before anything is injected it checks that the model's weights (all of them, at the lower of the
    two precisions) are the ones the edit was computed on, that it is not applied already, and that
    the edits it was computed after are there, in order. An edit whose name the model already
    carries gets a suffix (``name-2``).

    Args:
        model: the model to edit (an open_clip or transformers CLIP).
        artifact: an :class:`EditArtifact` or the path of a file :func:`save_edit` wrote.
        compose: stack the file's edits on the edits ``model`` already carries.
        check: check the weights digest; ``False`` skips that check only.

    Returns:
        The names of the edits it added, in the file's order: remove one with
        :func:`~lightning_unlearn.edit.remove_edit_`, or every edit with
        :func:`~lightning_unlearn.edit.restore_`.

    Raises:
        EditError: the model already carries edits and ``compose`` is False, or an edit of the file is
            applied already or lacks the edits it was computed on top of.
        ArtifactError: the file cannot be read, has no weights digest, or its maps do not fit the model.
        WeightsMismatchError: the model's weights are not the ones the edit was computed on.
    """
    if not isinstance(artifact, EditArtifact):
        artifact = load_edit(artifact)
    check_model(model)
    existing = edits(model)
    if existing and not compose:
        raise EditError(f"the model already carries {len(existing)} edit(s); call restore_(model) first or pass "
                        "compose=True to stack this one on top")
    if check:
        _check_weights(model, artifact)
    _check_shapes(model, artifact)
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
    return list(names.values())


def _check_weights(model: nn.Module, artifact: EditArtifact) -> None:
    """Refuse a file without a weights digest for the model's edited tensors, or whose digest differs
    from the model's weights (:func:`~lightning_unlearn.state.check_digest`); log its notes."""
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
        logging.getLogger(__name__).warning("apply_edit_file_: %s", note)


def _check_shapes(model: nn.Module, artifact: EditArtifact) -> None:
    """Refuse a map whose shape is not the one its tower's projection needs at its site."""
    for i, (M, e) in enumerate(zip(artifact.maps, artifact.entries)):
        site = find_site(model, e["tower"])
        n = site.map_size(e["site"])
        if tuple(M.shape) != (n, n):
            raise ArtifactError(f"edit {i} has shape {tuple(M.shape)} but the {e['tower']} projection needs ({n}, {n}) "
                                f"at site {e['site']!r}")


def _check_entry(model: nn.Module, i: int, M: torch.Tensor, e: dict) -> None:
    """Refuse an entry whose map the model already carries (by its digest: the same map twice), or
    that was computed on top of edits the model does not carry where it would go
    (:func:`~lightning_unlearn.edit.check_after`)."""
    what = f"edit {i} ({e['tower']} tower, {_describe(e['info'].get('request') or {})})"
    if map_digest(M) in chain(model, e["tower"]):
        raise EditError(f"{what} is already applied to this model (its map, digest {map_digest(M)[:12]}..., is in "
                        "the chain): applying it again would apply the same map twice. Remove it first "
                        "(remove_edit_(model, name), or restore_(model) to start over)")
    check_after(model, e["tower"], e["info"], place(model, e["tower"], e["info"]), what)


def _describe(request: dict) -> str:
    """A saved request (a dict, possibly partial) in words, for messages."""
    return f"classes {request.get('forget_classes')} domains {request.get('forget_domains')}"
