"""Forget and retain directions of a request: text prompts and synthesised visual prototypes.

Every direction is built in the joint space (d) and then mapped to the edit site: a text
direction ``t`` becomes the pooled-feature direction whose score it reads (``W t``), a
prototype contributes its own pooled features.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import prototypes as protos
from .prompts import cell_prompts, fill_template
from .request import ForgetRequest
from .targets import Site
from .zeroshot import text_embeddings


@dataclass
class Directions:
    F: torch.Tensor  # n x m_f forget directions at the site (columns)
    R: torch.Tensor  # n x m_r retain directions at the site
    stats: dict = field(default_factory=dict)


def cell_texts(model, tokenizer, cells, templates) -> torch.Tensor:
    """Normalised mean prompt embedding of every (class, domain) cell: len(cells) x d."""
    texts = [p for c, d in cells for p in cell_prompts(c, d, templates)]
    emb = text_embeddings(model, tokenizer, texts).view(len(cells), len(templates), -1)
    return F.normalize(emb.mean(1), dim=-1)


def class_texts(model, tokenizer, classes, templates) -> torch.Tensor:
    """Normalised mean embedding of each class over domain-agnostic templates: len(classes) x d."""
    emb = text_embeddings(model, tokenizer, [fill_template(t, c=c) for c in classes for t in templates])
    return F.normalize(emb.view(len(classes), len(templates), -1).mean(1), dim=-1)


def to_site(model, site: Site, where: str, text: torch.Tensor | None = None,
            images: torch.Tensor | None = None) -> torch.Tensor:
    """Columns at the edit site for joint-space ``text`` rows and/or prototype ``images``."""
    cols = []
    W = getattr(site.module, site.weight).detach().float().cpu()
    if text is not None and len(text):
        if where == "joint":
            cols.append(text.T.cpu())
        else:  # the pooled-feature direction whose projection reads t: W t (W maps pooled -> joint)
            cols.append((W @ text.T.cpu()) if site.layout == "param" else (W.T @ text.T.cpu()))
    if images is not None and len(images):
        with torch.no_grad():
            x = protos.normalise_images(model, images)
            feats = model.encode_image(x) if where == "joint" else site.pooled(x)
        cols.append(F.normalize(feats.float(), dim=-1).T.cpu())
    n = site.dims[1] if where == "joint" else site.dims[0]
    return torch.cat(cols, 1) if cols else torch.zeros(n, 0)


def build(model, tokenizer, request: ForgetRequest, site: Site, where: str, *, multimodal: bool,
          protect: str, class_templates, n_prototypes: int, proto_steps: int, proto_lr: float, seed: int,
          center: bool, progress: bool = True) -> Directions:
    """Forget directions of ``request`` (cell texts, plus class texts for global requests, plus
    prototypes if ``multimodal``) and retain directions chosen by ``protect``:
    "none", "classes" (classifier vectors of classes with no forgotten cell) or "cells"
    (mean texts of every retained cell)."""
    forget_cells, retain_cells = request.forget_cells, request.retain_cells
    all_cells = forget_cells + retain_cells
    T_cells = cell_texts(model, tokenizer, all_cells, request.templates)
    mu = T_cells.mean(0, keepdim=True) if center else 0.0
    T_forget = T_cells[: len(forget_cells)] - mu
    stats = {"n_forget_text": len(forget_cells)}
    if request.paradigm == "global":
        T_forget = torch.cat([T_forget, class_texts(model, tokenizer, request.forget_classes, class_templates) - mu])
        stats["n_forget_text"] += len(request.forget_classes)
    images = None
    if multimodal:
        p = protos.synthesize(model, T_cells[: len(forget_cells)], n_per_target=n_prototypes, steps=proto_steps,
                              lr=proto_lr, seed=seed, classes=T_cells, progress=progress)
        images = p.images.flatten(0, 1)
        stats |= {"n_prototypes": images.shape[0], "prototype_cos": float(p.cos.mean()),
                  "prototype_steps": p.steps, "prototype_seconds": round(p.seconds, 3)}
    Fm = to_site(model, site, where, T_forget, images)
    if protect == "none":
        T_retain = T_cells[:0]
    elif protect == "classes":
        kept = [c for c in request.classnames if all(c != fc for fc, _ in forget_cells)]
        T_retain = class_texts(model, tokenizer, kept, class_templates) - mu if kept else T_cells[:0]
    elif protect == "cells":
        T_retain = T_cells[len(forget_cells):] - mu
    else:
        raise ValueError(f"`protect`={protect!r} is not one of ('none', 'classes', 'cells')")
    stats["n_retain"] = len(T_retain)
    return Directions(Fm, to_site(model, site, where, T_retain), stats)
