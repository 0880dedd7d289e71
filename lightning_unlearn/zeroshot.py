"""Zero-shot classification for any open_clip model: classifier weights and per-cell accuracy."""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .encoders import encode_image, encode_text, eval_mode, rows, tokenize
from .prompts import fill_template


def _short_context(model) -> bool:
    """True when ``model.encode_text`` is open_clip's causal text tower pooled at the end-of-text
    token: a prompt's embedding then depends only on the tokens up to that token, so the context
    can be cut to the longest prompt of a batch without changing any embedding."""
    needed = ("token_embedding", "positional_embedding", "attn_mask", "transformer", "ln_final", "text_pool_type")
    return all(hasattr(model, a) for a in needed) and getattr(model, "attn_mask", None) is not None and \
        model.text_pool_type in ("argmax", "eos") and type(model).encode_text is _open_clip_encode_text()


def _open_clip_encode_text():
    from open_clip.model import CLIP
    return CLIP.encode_text


def _encode_short(model, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip ``CLIP.encode_text`` on the first ``L`` positions of ``tokens`` (L = the batch's
    longest prompt, end-of-text token included): the same embeddings without the padding."""
    from open_clip.transformer import text_global_pool
    eos = getattr(model, "text_eos_id", None)
    last = (tokens == eos).int().argmax(-1) if model.text_pool_type == "eos" else tokens.argmax(-1)
    n = int(last.max()) + 1
    tokens = tokens[:, :n]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:n].to(cast)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=eos)
    proj = model.text_projection
    return x if proj is None else proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


@torch.no_grad()
def text_embeddings(model, tokenizer, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Normalised text embeddings, float32, one row per text. Causal open_clip text towers see
    prompts sorted by length in batches cut to their longest prompt (no padding to the full
    context: identical embeddings, a fraction of the cost for short prompts)."""
    device = next(model.parameters()).device
    tokens = tokenize(tokenizer, list(texts), device)
    if not _short_context(model):
        out = [encode_text(model, rows(tokens, i, i + batch_size)).float() for i in range(0, len(texts), batch_size)]
        return F.normalize(torch.cat(out), dim=-1)
    order = (tokens != 0).sum(-1).argsort(stable=True)
    out = torch.cat([_encode_short(model, tokens[order[i:i + batch_size]]).float()
                     for i in range(0, len(tokens), batch_size)])
    return F.normalize(out[order.argsort()], dim=-1)


@torch.no_grad()
def classifier(model, tokenizer, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """The zero-shot classifier ``T`` (d x C): per class, the renormalised mean of its normalised
    template embeddings. Templates take ``{}`` or ``{c}`` for the class name."""
    texts = [fill_template(t, c=c) for c in classnames for t in templates]
    emb = text_embeddings(model, tokenizer, texts).view(len(classnames), len(templates), -1)
    return F.normalize(emb.mean(1), dim=-1).T


@torch.no_grad()
def image_embeddings(model, images: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    return F.normalize(encode_image(model, images.to(device, dtype)).float(), dim=-1)


@torch.no_grad()
def encode_images(model, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Unnormalised float32 embeddings of preprocessed ``images``, encoded ``batch_size`` at a time."""
    return torch.cat([encode_image(model, images[i:i + batch_size]).float() for i in range(0, len(images), batch_size)])


def evaluate(model, tokenizer, classnames: Sequence[str], templates: Sequence[str], loader: Iterable,
             domains: Sequence[str], progress: bool = True,
             extra: dict[str, tuple[torch.Tensor, Callable]] | None = None) -> dict:
    """Zero-shot accuracy per (class, domain) cell.

    ``loader`` yields ``(images, class_idx, domain_idx)`` batches (extra label columns are ignored
    unless ``extra`` maps a name to ``(classifier, label_of_batch)``). Returns
    ``{"cells": {(c, d): acc}, "correct", "total" (C x D tensors), "micro", "macro", "per_domain"}``.
    The model runs in eval mode; every submodule's train / eval mode is restored on return.
    """
    with eval_mode(model):
        return _evaluate(model, tokenizer, classnames, templates, loader, domains, progress, extra)


def _evaluate(model, tokenizer, classnames, templates, loader, domains, progress, extra) -> dict:
    T = classifier(model, tokenizer, classnames, templates)
    correct = torch.zeros(len(classnames), len(domains), dtype=torch.long)
    total = torch.zeros_like(correct)
    extra_hits = {k: [0, 0] for k in (extra or {})}
    for batch in tqdm(loader, desc="zero-shot", disable=not progress, leave=False):
        images, cls, dom = batch[0], batch[1], batch[2]
        h = image_embeddings(model, images)
        pred = (h @ T.to(h.device)).argmax(-1).cpu()
        idx = cls * len(domains) + dom
        total.view(-1).index_add_(0, idx, torch.ones_like(idx))
        correct.view(-1).index_add_(0, idx, (pred == cls).long())
        for name, (W, label_of) in (extra or {}).items():
            y = label_of(batch)
            extra_hits[name][0] += int(((h @ W.to(h.device)).argmax(-1).cpu() == y).sum())
            extra_hits[name][1] += len(y)
    return summarise(correct, total, classnames, domains) | {
        f"{k}_accuracy": v[0] / max(v[1], 1) for k, v in extra_hits.items()}


def summarise(correct: torch.Tensor, total: torch.Tensor, classnames, domains) -> dict:
    """Micro / macro / per-domain accuracy from C x D correct and total counts."""
    acc = correct / total.clamp(min=1)
    seen = total > 0
    return {
        "cells": {(c, d): float(acc[i, j]) for i, c in enumerate(classnames) for j, d in enumerate(domains)
                  if seen[i, j]},
        "correct": correct, "total": total,
        "micro": float(correct.sum() / total.sum().clamp(min=1)),
        "macro": float(acc[seen].mean()) if seen.any() else 0.0,
        "per_domain": {d: float(correct[:, j].sum() / total[:, j].sum().clamp(min=1)) for j, d in enumerate(domains)},
    }


def split_accuracy(correct: torch.Tensor, total: torch.Tensor, request) -> dict:
    """Micro accuracy over a request's forget cells, retain cells, and the retained cells of the
    forgotten classes ("same class, other domains"; None when there are none), from C x D counts."""
    def acc(cells):
        if not cells:
            return None
        idx = [(request.classnames.index(c), request.domains.index(d)) for c, d in cells]
        i, j = torch.tensor(idx).T
        return float(correct[i, j].sum() / total[i, j].sum().clamp(min=1))
    return {"forget_acc": acc(request.forget_cells), "retain_acc": acc(request.retain_cells),
            "same_class_other_domains_acc": acc(request.same_class_other_domain_cells())}


def request_accuracy(model, clip, batches: Iterable, request, colour_classifier: torch.Tensor | None = None,
                     cells: bool = False) -> dict:
    """:func:`split_accuracy` of ``request`` on ``batches``, and the unrelated task's accuracy.

    Args:
        model: the (edited) model to score.
        clip: its label space and prompts (``.tokenizer``, ``.classnames``, ``.templates``, ``.domains``:
            :func:`~lightning_unlearn.load.load_clip`).
        batches: ``(images, class, domain, colour)`` batches (:func:`~lightning_unlearn.data.rendered_batches`).
        request: the :class:`~lightning_unlearn.ForgetRequest` whose cells are scored.
        colour_classifier: the colour task's zero-shot classifier, read against the batches' fourth column.
        cells: also return the per-cell counts.

    Returns:
        ``forget_acc``, ``retain_acc``, ``same_class_other_domains_acc``, ``unrelated_acc`` (the colour
        accuracy; absent without ``colour_classifier``) and, with ``cells``, ``cells``: ``(correct, total)``.
    """
    extra = {"colour": (colour_classifier, lambda b: b[3])} if colour_classifier is not None else None
    res = evaluate(model, clip.tokenizer, clip.classnames, clip.templates, batches, clip.domains, progress=False,
                   extra=extra)
    out = split_accuracy(res["correct"], res["total"], request)
    if extra:
        out["unrelated_acc"] = res["colour_accuracy"]
    return out | ({"cells": (res["correct"], res["total"])} if cells else {})


def worst_cells(correct: torch.Tensor, total: torch.Tensor, forget, classnames=None, domains=None,
                before: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """The worst forgotten and the worst retained (class, domain) cell, from C x D counts: the one place
    every summary (demo, ``evaluate``, :class:`~lightning_unlearn.metrics.UnlearningAccuracy`, the
    benchmarks, the self-check) takes them from. ``forget``: a request, or a C x D boolean mask (then
    ``classnames`` / ``domains`` name the cells; default their indices). ``before``: the unedited
    model's ``(correct, total)``.

    Returns ``{"worst_forget_cell": {"cell": [class, domain], "acc", ["acc_before"]},
    "worst_retain_cell": {"cell", "acc", ["acc_before", "drop_points"]}}`` (None where no cell of that
    kind has images). The worst forgotten cell is the one most accurate after the edit; the worst
    retained cell is the one that lost the most points (with ``before``; ties go to the lower accuracy
    after), or without ``before`` the least accurate one. Cells with no image are skipped."""
    if isinstance(forget, torch.Tensor):
        mask = forget.bool().cpu()
        classnames = list(classnames) if classnames is not None else [str(i) for i in range(mask.shape[0])]
        domains = list(domains) if domains is not None else [str(j) for j in range(mask.shape[1])]
    else:
        classnames, domains = list(forget.classnames), list(forget.domains)
        mask = torch.zeros(len(classnames), len(domains), dtype=torch.bool)
        for c, d in forget.forget_cells:
            mask[classnames.index(c), domains.index(d)] = True
    correct, total = correct.detach().double().cpu(), total.detach().double().cpu()
    acc = correct / total.clamp(min=1)
    seen = total > 0
    acc_b = seen_b = None
    if before is not None:
        cb, tb = before[0].detach().double().cpu(), before[1].detach().double().cpu()
        acc_b, seen_b = cb / tb.clamp(min=1), tb > 0
        seen = seen & seen_b

    def entry(i: int, j: int) -> dict:
        out = {"cell": [classnames[i], domains[j]], "acc": float(acc[i, j])}
        if acc_b is not None:
            out |= {"acc_before": float(acc_b[i, j]), "drop_points": 100 * float(acc_b[i, j] - acc[i, j])}
        return out

    def pick(cells: torch.Tensor, key) -> dict | None:
        idx = [(i, j) for i, j in cells.nonzero().tolist()]
        return entry(*max(idx, key=key)) if idx else None

    worst_forget = pick(mask & seen, lambda ij: float(acc[ij]))
    if acc_b is not None:
        worst_retain = pick(~mask & seen, lambda ij: (float(acc_b[ij] - acc[ij]), -float(acc[ij])))
    else:
        worst_retain = pick(~mask & seen, lambda ij: -float(acc[ij]))
    return {"worst_forget_cell": worst_forget, "worst_retain_cell": worst_retain}


def format_worst(worst: dict) -> str:
    """One line naming the worst forgotten and retained cells of :func:`worst_cells`."""
    parts = []
    for key, label in (("worst_forget_cell", "worst forgotten cell"), ("worst_retain_cell", "worst retained cell")):
        w = worst.get(key)
        if w is None:
            continue
        where = f"{w['cell'][0]} in {w['cell'][1]}"
        if "acc_before" in w:
            drop = f", {0.0 - w['drop_points'] + 0.0:+.1f} points" if key == "worst_retain_cell" else ""
            parts.append(f"{label} {where} {100 * w['acc_before']:.0f}% -> {100 * w['acc']:.0f}%{drop}")
        else:
            parts.append(f"{label} {where} {100 * w['acc']:.0f}%")
    return "; ".join(parts)
