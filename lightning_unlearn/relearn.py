"""Relearning attack: how many optimiser steps bring a forgotten class back?

An edit of this library is one frozen linear map on a tower's projection. Whoever holds the
weights can fine-tune that projection; the attack measures how little that takes. It is bounded
and deterministic:

* the model is deep-copied and every edit folded into the copy (:func:`~lightning_unlearn.edit.fold_`),
  so the attack trains the folded projection weight; the caller's model is never changed;
* only the image projection (:func:`~lightning_unlearn.sites.find_site`, e.g. ``visual.proj`` of an
  open_clip ViT) is trained: Adam at the :class:`Attack`'s ``lr``, full batch, on
  ``images_per_cell`` labelled images of every (class, domain) cell (``cells="all"``) or of the
  forgotten cells only (``cells="forget"``), with the cross-entropy of the zero-shot classifier
  (``logit_scale * cos(image, class text)``, text tower frozen) as the loss;
* after every step, zero-shot accuracy on held-out images of the forgotten cells (and of the
  retained cells) is recorded, up to ``max_steps``; ``steps_to_target`` is the first step at which
  the forgotten cells reach ``target`` (0.5 by default), 0 when they start there, None when the
  bound is reached first.

The projection's input (the pooled features) does not change while only the projection trains,
so it is computed once and every step is a matrix product (seconds on CPU for the embedded model);
where the projection is not the last operation of ``encode_image`` the attack runs the whole tower.

For the unedited model the attack starts at its own (high) accuracy, so its number is 0 steps;
the comparison the field makes (a model that never saw the class, fine-tuned the same way) needs
such a model, which a class-unlearning edit of a pretrained model does not have.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from .audit import project, split_cells
from .encoders import encode_image, eval_mode
from .errors import UnlearnError
from .prompts import CLASS_TEMPLATES
from .request import ForgetRequest
from .sites import find_site
from .zeroshot import classifier


class RelearnError(UnlearnError, ValueError):
    """Input the relearning attack cannot use; the message says what and how to fix it."""


@dataclass(frozen=True)
class Attack:
    """One named attack setting (see the module docstring)."""
    name: str
    lr: float = 1e-3
    images_per_cell: int = 5
    max_steps: int = 50
    cells: str = "all"  # "all": every cell's images; "forget": the forgotten cells' only

    def __post_init__(self):
        if self.cells not in ("all", "forget"):
            raise RelearnError(f"Attack.cells={self.cells!r}: use 'all' or 'forget'")
        if self.lr <= 0 or self.images_per_cell < 1 or self.max_steps < 1:
            raise RelearnError(f"Attack {self.name!r}: lr > 0, images_per_cell >= 1 and max_steps >= 1 are needed")


#: The default attacks: Adam on the image projection, 5 labelled images of every cell.
ATTACKS = (Attack("proj-lr1e-3-5img", 1e-3, 5), Attack("proj-lr1e-4-5img", 1e-4, 5))
#: Zero-shot accuracy on the forgotten cells that counts as relearned.
TARGET = 0.5


def _weight(site):
    return getattr(site.module, site.weight)


@torch.no_grad()
def _pooled(model, site, batches: Iterable) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pooled features (None where the projection is not the end of ``encode_image``), the images,
    class and domain labels of ``batches``."""
    p = next(model.parameters())
    xs, pooled, cls, dom = [], [], [], []
    exact = site.pooled is not None
    for batch in batches:
        x = batch[0].to(p.device, p.dtype)
        xs.append(x)
        cls.append(torch.as_tensor(batch[1]).long())
        dom.append(torch.as_tensor(batch[2]).long())
        if exact:
            h = site.pooled(x)
            exact = torch.allclose(project(site, h), encode_image(model, x), rtol=1e-4, atol=1e-5)
            pooled.append(h)
    if not cls:
        raise RelearnError("no images: the batches are empty")
    return (torch.cat(pooled) if exact else None), torch.cat(xs), torch.cat(cls), torch.cat(dom)


def _first_per_cell(cls: torch.Tensor, dom: torch.Tensor, k: int, cells: torch.Tensor) -> torch.Tensor:
    """Indices of the first ``k`` images (data order) of each (class, domain) cell in ``cells`` (a mask)."""
    idx = []
    for c, d in cells.nonzero().tolist():
        idx.append(((cls == c) & (dom == d)).nonzero().flatten()[:k])
    return torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long)


def relearning_attack(model, tokenizer, request: ForgetRequest, attack_batches: Iterable, eval_batches: Iterable, *,
                      attacks: Sequence[Attack] = ATTACKS, classnames: Sequence[str] | None = None,
                      domains: Sequence[str] | None = None, templates: Sequence[str] = CLASS_TEMPLATES,
                      target: float = TARGET, seed: int = 0, output=None) -> dict:
    """Run each of ``attacks`` on a folded copy of ``model`` (see the module docstring).

    ``attack_batches`` / ``eval_batches``: ``(images, class_idx, domain_idx, ...)`` batches, the
    attack's labelled images (the first ``images_per_cell`` of each cell are used) and the held-out
    images it is scored on. Returns ``{"target", "start_forget_acc", "start_retain_acc", "attacks":
    {name: {"steps_to_target", "forget_acc" (after 0, 1, ... steps), "retain_acc", "images", ...}}}``.
    ``model`` is left exactly as it was (its edits, weights, modes and gradients flags). ``output``:
    an optional fixed map applied to the image embedding after the projection (e.g. a concept eraser
    fitted at the output, ``(N, d) -> (N, d)``); the attack trains the projection before it.
    """
    from .edit import fold_
    from .metrics import forget_mask
    classnames = tuple(request.classnames if classnames is None else classnames)
    domains = tuple(request.domains if domains is None else domains)
    forget = forget_mask(request, classnames, domains)
    attacked = copy.deepcopy(model)
    fold_(attacked)
    attacked.eval()
    for p in attacked.parameters():
        p.requires_grad_(False)
    site = find_site(attacked, "image")
    with torch.no_grad():
        T = classifier(attacked, tokenizer, classnames, templates).float()
        scale = float(attacked.logit_scale.exp()) if hasattr(attacked, "logit_scale") else 100.0
    ha, xa, ca, da = _pooled(attacked, site, attack_batches)
    he, xe, ce, de = _pooled(attacked, site, eval_batches)
    f_eval = forget[ce, de]
    if not f_eval.any() or f_eval.all():
        raise RelearnError("the held-out images need both forgotten and retained cells")
    W0 = _weight(site).detach().clone()
    fast = ha is not None and he is not None
    if not fast and site.slot is not None and site.slot.installed is None:
        raise RelearnError("this image tower has no projection weight and its output is not the tower's pooled "
                           "output; the relearning attack has nothing to train")

    W = _weight(site)  # the folded copy's projection weight: the only tensor the attack trains

    def features(W, h, x):
        e = project(site, h, W) if fast else encode_image(attacked, x)  # slow path: the whole tower
        return e if output is None else output(e)

    @torch.no_grad()
    def score(W) -> tuple[float, float]:
        pred = (F.normalize(features(W, he, xe).float(), dim=-1) @ T).argmax(-1)
        ok = (pred == ce).double()
        return float(ok[f_eval].mean()), float(ok[~f_eval].mean())

    f0, r0 = score(W)
    out = {"target": target, "start_forget_acc": f0, "start_retain_acc": r0, "attacks": {}}
    for a in attacks:
        idx = _first_per_cell(ca, da, a.images_per_cell, forget if a.cells == "forget" else torch.ones_like(forget))
        if len(idx) == 0:
            raise RelearnError(f"attack {a.name!r}: no labelled images of the cells it trains on")
        torch.manual_seed(seed)
        with torch.no_grad():
            W.copy_(W0)
        W.requires_grad_(True)
        opt = torch.optim.Adam([W], lr=a.lr)
        fa, ra, steps = [f0], [r0], None if f0 < target else 0
        for _ in range(a.max_steps):
            with torch.enable_grad():
                h = features(W, None if ha is None else ha[idx], xa[idx])
                logits = scale * F.normalize(h.float(), dim=-1) @ T
                loss = F.cross_entropy(logits, ca[idx].to(logits.device))
                opt.zero_grad()
                loss.backward()
                opt.step()
            f, r = score(W)
            fa.append(f)
            ra.append(r)
            if steps is None and f >= target:
                steps = len(fa) - 1
        out["attacks"][a.name] = {"steps_to_target": steps, "forget_acc": fa, "retain_acc": ra, "images": len(idx),
                                  "min_retain_acc": min(ra), **asdict(a)}
    return out


def relearning_dataset(model, tokenizer, request: ForgetRequest, dataset, *, batch_size: int = 256,
                       num_workers: int = 0, **kwargs) -> dict:
    """:func:`relearning_attack` on one labelled dataset, split as the audit splits it
    (:func:`~lightning_unlearn.audit.split_cells`): the attack's images come from the fit half, the
    scores from the other half."""
    kwargs.setdefault("classnames", getattr(dataset, "classnames", None))
    kwargs.setdefault("domains", getattr(dataset, "domains", None))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    with eval_mode(model), torch.no_grad():
        items = [(x, torch.as_tensor(c), torch.as_tensor(d)) for x, c, d, *_ in loader]
    x, c, d = (torch.cat(z) for z in zip(*items))
    fit, test = split_cells(c, d, kwargs["classnames"], kwargs["domains"])
    chunks = lambda idx: [(x[i], c[i], d[i]) for i in idx.split(batch_size)]  # noqa: E731
    return relearning_attack(model, tokenizer, request, chunks(fit), chunks(test), **kwargs)


def relearning_with_unedited(model, tokenizer, request: ForgetRequest, dataset, **kwargs) -> dict:
    """:func:`relearning_dataset` on ``model`` and, where it carries injected edits, on a copy with
    them removed (the unedited model); keyword arguments are passed on.

    Returns:
        ``{"model": result, "unedited": result or None}``.
    """
    from .edit import edits, restore_
    out = {"model": relearning_dataset(model, tokenizer, request, dataset, **kwargs), "unedited": None}
    if edits(model):
        restore_(plain := copy.deepcopy(model))
        out["unedited"] = relearning_dataset(plain, tokenizer, request, dataset, **kwargs)
    return out


def summary(result: dict, prefix: str = "relearn") -> dict:
    """Flat keys for an audit dict: ``relearn_start_acc`` and ``relearn_steps@<attack>`` (None: not
    reached within the attack's ``max_steps``)."""
    out = {f"{prefix}_start_acc": result["start_forget_acc"]}
    for name, a in result["attacks"].items():
        out[f"{prefix}_steps@{name}"] = a["steps_to_target"]
    return out


def format_relearning(result: dict, label: str = "") -> str:
    """One line per attack: steps to the target and the forgotten / retained accuracy curve."""
    t = result["target"]
    head = (f"relearning attack{' on ' + label if label else ''} (Adam on the image projection; steps until the "
            f"forgotten cells reach {t:.2f} zero-shot accuracy; start {result['start_forget_acc']:.3f}, "
            f"retained {result['start_retain_acc']:.3f}):")
    lines = [head]
    for name, a in result["attacks"].items():
        s = a["steps_to_target"]
        reach = f"{s} steps" if s is not None else f"not reached in {a['max_steps']} steps"
        curve = " ".join(f"{v:.2f}" for v in a["forget_acc"][:11])
        lines.append(f"  {name}: {reach} ({a['images']} images); forgotten acc by step {curve}"
                     f"{' ...' if len(a['forget_acc']) > 11 else ''}; retained acc min {a['min_retain_acc']:.3f}")
    return "\n".join(lines)
