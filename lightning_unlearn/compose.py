"""How named edits compose on a tower's projection: inject one, remove one, and the rules of the chain.

Edits on one tensor form a chain (:mod:`~lightning_unlearn.stack`); each records the maps it was
computed on top of (``info["after"]``, map digests). :func:`place` says where a new edit goes,
:func:`check_after` refuses one whose predecessors are not there, :func:`suspended` shows the model
as an edit computed for a position sees it, :func:`dependents` names the edits that hold only on top
of another, :func:`inject_` adds a map (all its tensors or none) and :func:`remove_edit_` removes a
named edit; :func:`composition_refusal` refuses the requests measured to fail on top of the model's
edits. A tower is named ("image" / "text") or given as its found :class:`~lightning_unlearn.sites.Site`
(no lookup).
"""
from __future__ import annotations

import contextlib
import itertools

import torch
from torch import nn

from .errors import EditError
from .request import ForgetRequest
from .sites import Site, find_site, uninstall_
from .stack import (
    ProjectorEdit,
    edit_modules,
    edits,
    fresh_name,
    site_edits,
    site_stacks,
    stacks,
)
from .state import map_digest, text_anchored


def _site(model: nn.Module, tower: str | Site) -> Site:
    return tower if isinstance(tower, Site) else find_site(model, tower)


def chain(model: nn.Module, tower: str | Site) -> list[str]:
    """The :func:`~lightning_unlearn.state.map_digest` of every edit on ``tower``'s projection weight, in
    application order (``tower``: a name, or its found :class:`~lightning_unlearn.sites.Site`)."""
    return [e.info.get("map") or map_digest(e.P.weight) for e in site_edits(_site(model, tower))]


def place(model: nn.Module, tower: str | Site, info: dict) -> int:
    """Where in ``tower``'s chain an edit with provenance ``info`` goes: last if it is text-anchored
    (:func:`~lightning_unlearn.state.text_anchored`: it holds on any input), else below the first
    text-anchored edit, on the image features it needs (measured: a domain-specific edit computed on
    top of a global one forgets nothing, as the global edit flattens the domain directions; below it,
    both hold). ``tower``: a name, or its found :class:`~lightning_unlearn.sites.Site`."""
    chained = site_edits(_site(model, tower))
    if text_anchored(info):
        return len(chained)
    return next((i for i, e in enumerate(chained) if text_anchored(e.info)), len(chained))


def check_after(model: nn.Module, tower: str | Site, info: dict, position: int, what: str) -> None:
    """Refuse an edit whose ``info["after"]`` (the maps it was computed on top of) is not what lies
    below ``position`` of ``tower``'s chain. A text-anchored edit holds on any input and is never
    refused.

    Raises:
        EditError: the edit is feature-bound and the chain below ``position`` is not ``info["after"]``.
    """
    below, after = chain(model, tower)[:position], list(info.get("after") or [])
    if not text_anchored(info) and below != after:
        name = tower.tower if isinstance(tower, Site) else tower
        raise EditError(f"{what} was computed on top of {len(after)} other edit(s) ({after}), and this model's "
                        f"{name} projection carries {below or 'none'} where it would go: it only holds on top of "
                        "those. Apply them first (in order), or save the whole chain with save_edit(edited_model, path)")


@contextlib.contextmanager
def suspended(model: nn.Module, positions: dict[str, int], sites: dict[str, Site] | None = None):
    """Inside the block, every edit at or past ``positions[tower]`` of a tower's chain acts as the
    identity, on every tensor it changes (weight and bias): the model as a composed edit computed for
    that position sees it. ``sites``: the towers'
    :class:`~lightning_unlearn.sites.Site` objects already found (the others are looked up)."""
    sites = sites or {}
    above = {e.info.get("name") for tower, k in positions.items()
             for e in site_edits(_site(model, sites.get(tower, tower)))[k:]}
    saved = [(e, e.P.weight.detach().clone()) for _, e in edit_modules(model) if e.info.get("name") in above]
    try:
        with torch.no_grad():
            for e, w in saved:
                e.P.weight.copy_(torch.eye(w.shape[0], dtype=w.dtype))
        yield
    finally:
        with torch.no_grad():
            for e, w in saved:
                e.P.weight.copy_(w)


def dependents(model: nn.Module, name: str) -> list[str]:
    """The edits that hold only on top of edit ``name``: feature-bound edits computed on top of it (their
    ``info["after"]`` holds one of its maps, directly or through another such edit), in chain order.
    Text-anchored edits (:func:`~lightning_unlearn.state.text_anchored`) hold on any input."""
    mods = [e for _, e in edit_modules(model) if not text_anchored(e.info)]
    maps, out = {e.info.get("map") for e in mods if e.info.get("name") == name}, []
    grew = True
    while grew:
        grew = False
        for e in mods:
            other = e.info.get("name", "")
            if other != name and other not in out and maps & set(e.info.get("after") or ()):
                out.append(other)
                maps |= {x.info.get("map") for x in mods if x.info.get("name") == other}
                grew = True
    return [n for n in edits(model) if n in out]


def remove_edit_(model: nn.Module, name: str, *, cascade: bool = False) -> list[str]:
    """Remove the edit called ``name`` and keep the others: removing the last edit gives back exactly
    the model before it. An edit that later edits were computed on top of (:func:`dependents`) is
    only removed with ``cascade=True``, which removes those too: without it they would no longer
    hold. Returns the names removed, in chain order.

    Raises:
        KeyError: the model carries no edit called ``name``.
        EditError: later edits were computed on top of it and ``cascade`` is False.
    """
    if name not in edits(model):
        raise KeyError(f"the model carries no edit named {name!r}; its edits are {edits(model)}")
    later = dependents(model, name)
    if later and not cascade:
        raise EditError(f"edit {name!r} cannot be removed alone: {later} were computed on top of it and would no "
                        "longer hold without it (their maps were solved on the image features it produces). Pass "
                        "cascade=True to remove them too, or restore_(model) to remove every edit")
    gone = [n for n in edits(model) if n == name or n in later]
    for st in stacks(model):
        st.remove(set(gone))
    if not edits(model):  # the last edit: the layers edits installed go too
        uninstall_(model)
    return gone


@contextlib.contextmanager
def _all_or_nothing(model: nn.Module, name: str):
    """Injections under ``name`` inside the block: if it raises (an interrupt included) and ``name`` was
    a new edit, every map injected under it is removed (the model is as before) and the error goes on."""
    new = name not in edits(model)
    try:
        yield
    except BaseException:
        if new and name in edits(model):
            remove_edit_(model, name)
        elif not edits(model):  # a layer installed for it
            uninstall_(model)
        raise


def inject_(model: nn.Module, M: torch.Tensor, tower: str = "image", site: str = "joint",
            info: dict | None = None, *, name: str | None = None, position: int | None = None,
            resolved: Site | None = None) -> str:
    """Add the frozen map ``M`` to ``tower``'s projection (composes with earlier edits): last in the
    chain, or at index ``position`` of it (0 = applied first). The edit's ``info`` records the map's
    :func:`~lightning_unlearn.state.map_digest` (a given ``info["map"]`` must match ``M``).
    ``resolved``: ``tower``'s :class:`~lightning_unlearn.sites.Site` when the caller already found it
    (the map is then installed on that very object); None looks it up.

    Returns the edit's name: ``name`` if given (maps injected under one name form one edit, removed
    together by :func:`remove_edit_`), else a fresh one.

    Raises:
        ValueError: ``M`` does not have the shape the projection needs, ``name`` is empty, or
            ``resolved`` is another tower's site.
        EditError: ``info["map"]`` records a digest that does not match ``M``.
        UnsupportedModelError: ``tower`` has no projection this library can edit.
    """
    digest = map_digest(M)
    if info and info.get("map", digest) != digest:
        raise EditError(f"the map does not match the digest its info records ({info['map']} != {digest}): the map "
                        "or its info was altered; recompute the edit or load it again from its file")
    info = dict(info or {}, map=digest)
    s = find_site(model, tower) if resolved is None else resolved
    if s.tower != tower:
        raise ValueError(f"`resolved` is the {s.tower} tower's site, not the {tower} tower's; pass "
                         f"find_site(model, {tower!r}) or leave `resolved` out")
    n = s.map_size(site)
    if tuple(M.shape) != (n, n):
        raise ValueError(f"the edit has shape {tuple(M.shape)}, but the {tower} projection needs ({n}, {n}) at "
                         f"site {site!r}")
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"`name`={name!r} must be a non-empty string")
    name = name or fresh_name(model, "edit")
    # the edits below `position` of the weight's chain; the bias's chain lacks the "pooled" ones
    below = None if position is None else {e.info.get("name", "") for e in site_edits(s)[:position]}
    with _all_or_nothing(model, name):  # the weight and the bias
        if s.slot is not None and s.slot.installed is None:  # a tower with no projection: add the layer
            s.slot.install(s.module)
        for st in site_stacks(s, site):
            layout = "bias" if st.tensor == s.bias else s.layout
            edit = ProjectorEdit(n, site, layout, dict(info, name=name))
            with torch.no_grad():
                edit.P.weight.copy_(M.float())
            st.insert(edit, None if below is None else sum(e in below for e in st.names))
    return name


# ---------------------------------------------------------------------------------------------- refused compositions
def composition_refusal(model: nn.Module, request: ForgetRequest, new: dict) -> str | None:
    """Why ``request`` (whose edit will carry the provenance ``new``) cannot be composed with the
    model's edits, or None. Refused are the compositions measured to fail (benchmarks/composition.py):
    a global request forgetting the class an earlier whole-domain edit sends its images to (the domain
    is recognised again); a whole-domain edit with another feature-bound edit (a retained cell loses
    24-84 points); forgotten cells forming a checkerboard (see :func:`checkerboard`)."""
    infos = {e.info.get("name"): e.info for _, e in edit_modules(model)}
    for other, info in infos.items():
        if request.paradigm == "global" and info.get("sink") in request.forget_classes:
            return (f"this request forgets {info['sink']!r}, the class that the whole-domain edit {other!r} sends its "
                    f"domain's images to: on top of it that domain would be recognised again. Compose them in the "
                    f"other order: restore_(model), forget {list(request.forget_classes)} first, then the domain (a "
                    "whole-domain edit sends its images to a class no other edit forgets)")
    bound = [ForgetRequest.from_dict(i["request"]) for i in infos.values() if i.get("request") and not text_anchored(i)]
    bound += [] if text_anchored(new) else [request]
    if len(bound) > 1 and any(r.paradigm == "domain" for r in bound):
        whole = all(r.paradigm == "domain" for r in bound)
        domains = sorted({d for r in bound for d in r.forget_domains})
        return (f"this request ({request.describe()}) cannot be composed with the model's edits: a whole-domain edit "
                "stacked with another edit that moves image features (domain-specific, whole domains, deep) loses "
                "retained cells in either order (measured on the embedded model: one retained cell down 24-84 "
                "points). " + (f"Forget the domains in one request (forget_domains={domains})" if whole else
                               "restore_(model) and keep one of the two")
                + "; global requests compose with a whole-domain edit")
    cells = set(request.forget_cells) | {c for info in infos.values() if info.get("request")
                                         for c in ForgetRequest.from_dict(info["request"]).forget_cells}
    crossed = checkerboard(cells, request.classnames, request.domains)
    if crossed:
        (c1, d1), (c2, d2) = crossed
        return (f"with the model's edits this request would forget ({c1!r}, {d1!r}) and ({c2!r}, {d2!r}) but keep "
                f"({c1!r}, {d2!r}) and ({c2!r}, {d1!r}): where class and domain add up in the embedding the four are "
                "tied (the first two sum to the last two), and a linear edit cannot move the first pair and keep the "
                "second (measured on the embedded model: the kept pair fell to 0.00 and 0.40). Forget the whole "
                f"rectangle in one request (forget_classes=[{c1!r}, {c2!r}], forget_domains=[{d1!r}, {d2!r}]), or "
                "keep only one of the two requests")
    return None


def globally_forgotten(model: nn.Module) -> tuple[str, ...]:
    """The classes the model's global edits forget (a whole-domain edit must not send its images there)."""
    infos = [e.info for _, e in edit_modules(model)]
    return tuple(dict.fromkeys(c for i in infos if text_anchored(i) for c in i["request"]["forget_classes"]))


def checkerboard(cells, classes, domains) -> tuple | None:
    """Two forgotten cells ``(c1, d1)``, ``(c2, d2)`` of ``cells`` whose crossed cells ``(c1, d2)``,
    ``(c2, d1)`` are both kept, or None: a set of forgotten cells no single request forms, and that
    a linear edit cannot realise where class and domain add up."""
    for d1, d2 in itertools.combinations(domains, 2):
        only1 = [c for c in classes if (c, d1) in cells and (c, d2) not in cells]
        only2 = [c for c in classes if (c, d2) in cells and (c, d1) not in cells]
        if only1 and only2:
            return (only1[0], d1), (only2[0], d2)
    return None
