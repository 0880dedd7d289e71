"""Forget and retain directions of a request: text prompts and synthesised visual prototypes.

Every direction is built in the joint space (d) and then mapped to the edit site: a text
direction ``t`` becomes the pooled-feature direction whose score it reads (``W t``), a
prototype contributes its own pooled features.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import cache, nullspace, sharding
from . import prototypes as protos
from .encoders import encode_image
from .prompts import cell_prompts, fill_template
from .request import ForgetRequest
from .sites import Site
from .stack import site_edits
from .zeroshot import text_embeddings


@dataclass
class Directions:
    F: torch.Tensor  # n x m_f forget directions at the site (columns)
    R: torch.Tensor  # n x m_r retain directions at the site
    stats: dict = field(default_factory=dict)


def encode(model, tokenizer, texts) -> torch.Tensor:
    """:func:`zeroshot.text_embeddings` through the current :mod:`cache` (keyed by the model's
    weights and the text): each prompt is encoded once per model, across stages and requests."""
    store = cache.current()
    if store is None:
        return text_embeddings(model, tokenizer, texts)
    base = (cache.weights_key(model), type(tokenizer).__name__, getattr(tokenizer, "context_length", None))
    new = [t for t in dict.fromkeys(texts) if store.text(base + (t,)) is None]
    if new:
        store.put_texts(zip([base + (t,) for t in new], text_embeddings(model, tokenizer, new)))
    return torch.stack([store.text(base + (t,)) for t in texts])


def cell_texts(model, tokenizer, cells, templates) -> torch.Tensor:
    """Normalised mean prompt embedding of every (class, domain) cell: len(cells) x d."""
    texts = [p for c, d in cells for p in cell_prompts(c, d, templates)]
    emb = encode(model, tokenizer, texts).view(len(cells), len(templates), -1)
    return F.normalize(emb.mean(1), dim=-1)


def class_texts(model, tokenizer, classes, templates) -> torch.Tensor:
    """Normalised mean embedding of each class over domain-agnostic templates: len(classes) x d."""
    emb = encode(model, tokenizer, [fill_template(t, c=c) for c in classes for t in templates])
    return F.normalize(emb.view(len(classes), len(templates), -1).mean(1), dim=-1)


def _edited_range(model, site: Site, where: str) -> torch.Tensor | None:
    """Projector (d x d, symmetric) onto the range of the edits already at an image tower's "joint"
    site, or None if there are none (or it is full rank). Earlier edits send the features to
    ``C h``; a text only reads them inside range(C), so the nullspace of a composed edit is taken
    there: it then keeps the earlier requests forgotten (with an alpha=1 projector, range(C) is
    span(U_f) complement and this is C itself). The "pooled" site reads through the edited weight
    already, and text-tower embeddings come from the edited tower."""
    chained = site_edits(site) if where == "joint" and site.tower == "image" else []
    if not chained:
        return None
    C = torch.eye(site.dims[1], dtype=torch.float64)
    for e in chained:  # in application order
        if e.side == "joint":
            C = e.P.weight.detach().double().cpu() @ C
    U = nullspace.orth(C)
    return None if U.shape[1] == C.shape[0] else (U @ U.T).float()


def to_site(model, site: Site, where: str, text: torch.Tensor | None = None,
            images: torch.Tensor | None = None, normalise: bool = True) -> torch.Tensor:
    """Columns at the edit site for joint-space ``text`` rows and/or prototype ``images`` (their
    features L2-normalised unless ``normalise=False``)."""
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
            feats = encode_image(model, x) if where == "joint" else site.pooled(x)
        cols.append((F.normalize(feats.float(), dim=-1) if normalise else feats.float()).T.cpu())
    n = site.map_size(where)
    return torch.cat(cols, 1) if cols else torch.zeros(n, 0)


#: Images per synthesis batch, at 224 px (scaled with the image area, at most CHUNK_MAX): bounds the
#: memory of pixels, Adam moments and activations whatever the number of cells. The cap matters for
#: small inputs, where a tower's activations shrink less than the pixels (measured: 1,568 images of
#: 32 px per batch, the uncapped scaling, took a small tower's synthesis past 3.5 GB at 345 x 6).
CHUNK_224, CHUNK_MAX = 32, 256


def group_images(model) -> int:
    """Images per stop group at ``model``'s input size: ``CHUNK_224`` at 224 px, scaled with the image
    area, at most ``CHUNK_MAX``."""
    return min(CHUNK_224 * 224 ** 2 // protos.model_io(model)[0] ** 2, CHUNK_MAX)


#: Share of a warm start's steps spent on the class stage (the rest refines each cell).
CLASS_STAGE = 0.5


@dataclass(frozen=True)
class Start:
    """A warm start (``proto_start="class"``): each target's images are first synthesised towards its
    class text ``T[of[i]]`` (the class stage: ``CLASS_STAGE`` of the steps, in the label space ``T``,
    each class stopping on its own), then refined towards the target's own text for the other steps.
    ``keys`` name the rows of ``T`` (their starting noise and the bank entry)."""
    T: torch.Tensor  # C x d class texts
    keys: list  # C strings
    of: list  # per target, its row of T

    @classmethod
    def of_cells(cls, model, tokenizer, cells, classnames, templates, T: torch.Tensor | None = None) -> "Start":
        """The warm start of ``cells`` ((class, domain) pairs) from the texts ``T`` of ``classnames``
        (computed when None)."""
        T = class_texts(model, tokenizer, classnames, templates) if T is None else T
        return cls(T, class_keys(classnames, templates), [list(classnames).index(c) for c, _ in cells])

    def steps(self, total: int) -> tuple[int, int]:
        """(class stage, cell stage) steps of ``total``: each at least one (so one step becomes two). The
        cell stage keeps the early stop: images whose class stage already classifies them may stop at
        its first check."""
        first = max(1, round(total * CLASS_STAGE))
        return first, max(1, total - first)


def class_stage(model, start: Start, classes: list, *, n_prototypes: int, steps: int, lr: float, seed: int,
                shard, progress: bool, autocast: bool) -> tuple[dict, float]:
    """The class stage of a warm start for the rows ``classes`` of ``start.T``: ``{row: (images
    n_prototypes x 3 x H x W, the steps each ran)}`` and the seconds taken. Under a ``shard`` the
    class images are dealt to the ranks like the cells' and gathered."""
    p = protos.synthesize(model, start.T[classes], n_per_text=n_prototypes, steps=steps, lr=lr, seed=seed,
                          classes=start.T, keys=[start.keys[c] for c in classes], groups=list(range(len(classes))),
                          progress=progress, share=None if shard is None else (shard.rank, shard.world),
                          agree=None if shard is None else shard.every, autocast=autocast)
    images, ran = p.images.cpu(), p.steps.float()
    if shard is not None:  # this rank's class images -> every rank's
        size = protos.model_io(model)[0]
        every = shard.rows(torch.cat([images.flatten(1), ran[:, None]], 1), len(classes) * n_prototypes)
        images = every[:, :-1].view(len(classes), n_prototypes, 3, size, size)
        ran = every[:, -1].view(len(classes), n_prototypes)
    return {c: (images[j], ran[j]) for j, c in enumerate(classes)}, p.seconds


def prototype_columns(model, site: Site, where: str, targets: torch.Tensor, keys, classes: torch.Tensor,
                      label_key: str, *, n_prototypes: int, proto_steps: int, proto_lr: float, seed: int,
                      normalise: bool = True, progress: bool = True,
                      start: Start | None = None) -> tuple[torch.Tensor, dict]:
    """Site columns (n x k * n_prototypes, target-major) of the prototypes of ``targets`` (k x d,
    named by ``keys``) with the early stop over ``classes`` (named by ``label_key``), and their
    statistics; the columns are normalised features unless ``normalise=False`` (raw).

    Cells stop in groups keyed by their cells (sorted keys, ``CHUNK_224`` images of 224 px per
    group, at most ``CHUNK_MAX``): a group's early stop depends on all its cells, so the groups are
    the same on every device. A group already in the current :mod:`cache`'s bank for this model (same
    cells, label space, seed and settings) is reused. The groups left are synthesised in batches
    sized by the device (:func:`prototypes.batch_images`, several groups per batch on CUDA), each
    group stopping on its own. Under a :mod:`~lightning_unlearn.sharding` shard (a multi-process
    strategy) each batch's images are dealt round-robin to the ranks and the columns all-gathered.

    ``start``: a warm start (:class:`Start`; None: from noise); each class stage runs once per call,
    with the first batch that needs it. ``prototype_image_steps`` counts every forward-backward
    image-step, a class stage's shared out over the targets synthesised from it in that call (a bank
    entry keeps the share of the call that made it); ``prototype_steps`` is the most image-steps
    accounted to one prototype (its own, plus that share)."""
    store = cache.current()
    bank = None if store is None else store.bank(cache.weights_key(model))
    opts = protos.current_options()
    settings = dict(labels=label_key, seed=seed, n=n_prototypes, steps=proto_steps, lr=proto_lr, where=where,
                    site=site.weight, dims=site.dims) | ({} if normalise else {"raw": True}) | \
        ({"autocast": "bf16"} if opts.autocast else {}) | \
        ({} if start is None else {"start": cache.settings_key(classes=start.keys), "class_stage": CLASS_STAGE})
    n = site.map_size(where)
    shape = (n_prototypes, n + 2)  # a bank entry: a cell's rows
    per = max(1, group_images(model) // n_prototypes)  # cells per stop group
    order = sorted(range(len(keys)), key=lambda i: keys[i])  # groups of the same cells, whatever the request's order
    groups = [order[j:j + per] for j in range(0, len(keys), per)]
    names, hits = {}, {}
    for idx in groups:  # a group's early stop depends on all its cells: keyed together
        batch = cache.settings_key(cells=[keys[i] for i in idx])
        for i in idx:
            names[i] = cache.settings_key(cell=keys[i], batch=batch, **settings)
            hits[i] = bank.get(names[i], shape) if bank is not None else None
    need = torch.tensor([any(hits[i] is None for i in idx) for idx in groups], dtype=torch.bool)
    shard = sharding.current()
    if shard is not None:  # every rank synthesises the groups some rank lacks: the same batches everywhere
        need = shard.some(need)
    found = {i: hits[i] for idx, g in zip(groups, need.tolist()) if not g for i in idx}
    todo = [idx for idx, g in zip(groups, need.tolist()) if g]
    limit = protos.batch_images(model, per * n_prototypes, opts) if todo else 0
    if shard is not None and todo:  # the same batches on every rank, whatever each one's free memory
        limit = shard.least(limit)
    batches, seconds, stage = [], 0.0, {}  # stage: class row -> its class-stage images and steps
    sharing = torch.bincount(torch.tensor([start.of[i] for g in todo for i in g], dtype=torch.long),
                             minlength=len(start.keys)).float() if start is not None and todo else None
    for idx in todo:  # whole groups per batch, up to the device's limit
        if batches and (sum(map(len, batches[-1])) + len(idx)) * n_prototypes <= limit:
            batches[-1].append(idx)
        else:
            batches.append([idx])
    last = {} if start is None else {start.of[i]: b for b, gs in enumerate(batches) for g in gs for i in g}
    for b, gs in enumerate(batches):
        idx = [i for g in gs for i in g]
        label = [j for j, g in enumerate(gs) for _ in g]
        init, extra, steps = None, torch.zeros(len(idx) * n_prototypes), proto_steps
        if start is not None:
            first, steps = start.steps(proto_steps)
            new = sorted({start.of[i] for i in idx} - set(stage))
            if new:
                got, t = class_stage(model, start, new, n_prototypes=n_prototypes, steps=first, lr=proto_lr,
                                     seed=seed, shard=shard, progress=progress, autocast=opts.autocast)
                stage, seconds = stage | got, seconds + t
            init = torch.stack([stage[start.of[i]][0] for i in idx])
            extra = torch.cat([stage[start.of[i]][1] / sharing[start.of[i]] for i in idx])
            stage = {c: v for c, v in stage.items() if last[c] > b}  # no later batch starts from these
        p = protos.synthesize(model, targets[idx], n_per_text=n_prototypes, steps=steps, lr=proto_lr,
                              seed=seed, classes=classes, keys=[keys[i] for i in idx], progress=progress,
                              groups=None if len(gs) == 1 else label, autocast=opts.autocast,
                              share=None if shard is None else (shard.rank, shard.world),
                              agree=None if shard is None else shard.every, init=init)
        seconds += p.seconds
        ran = p.steps.flatten().float() + (extra if shard is None else extra[shard.rank::shard.world])
        if shard is None:
            cols = to_site(model, site, where, images=p.images.flatten(0, 1), normalise=normalise).T.reshape(
                len(idx), n_prototypes, -1)
            rows = torch.cat([cols, p.cos[..., None], ran.view(len(idx), n_prototypes, 1)], 2)
        else:  # this rank's images -> its rows; the others' from the gather
            cols = to_site(model, site, where, images=p.images, normalise=normalise).T
            mine = torch.cat([cols, p.cos[:, None], ran[:, None]], 1)
            rows = shard.rows(mine, len(idx) * n_prototypes).view(len(idx), n_prototypes, n + 2)
        for r, i in enumerate(idx):
            found[i] = rows[r].clone()
            if bank is not None:
                bank.put(names[i], found[i])
    rows = torch.cat([found[i] for i in range(len(keys))])  # k * n_prototypes x (n + 2)
    synthesised = sum(map(len, todo))
    stats = {"n_prototypes": rows.shape[0], "prototype_cos": float(rows[:, -2].mean()),
             "prototype_steps": round(float(rows[:, -1].max())),
             "prototype_image_steps": round(float(rows[:, -1].sum())),
             "prototypes_reused": (len(keys) - synthesised) * n_prototypes, "prototype_seconds": round(seconds, 3)} | \
        ({"prototype_autocast": "bf16"} if opts.autocast else {})
    return rows[:, :-2].T.contiguous(), stats


def _start(model, tokenizer, proto_start: str, cells, request: ForgetRequest, class_templates,
           T: torch.Tensor | None = None) -> Start | None:
    """The warm start ``proto_start`` names for ``cells`` (class texts ``T`` of the request's classes,
    computed when None): None for "noise"."""
    if proto_start == "noise":
        return None
    return Start.of_cells(model, tokenizer, cells, request.classnames, class_templates, T)


def cell_keys(cells, templates) -> list[str]:
    return ["|".join(cell_prompts(c, d, templates)) for c, d in cells]


def class_keys(classes, templates) -> list[str]:
    return ["|".join(fill_template(t, c=c) for t in templates) for c in classes]


def build(model, tokenizer, request: ForgetRequest, site: Site, where: str, *, multimodal: bool,
          protect: str, class_templates, n_prototypes: int, proto_steps: int, proto_lr: float, seed: int,
          center: bool, proto_start: str = "noise", progress: bool = True) -> Directions:
    """Forget directions of ``request`` (cell texts, plus class texts for global requests, plus
    prototypes if ``multimodal``) and retain directions chosen by ``protect``:
    "none", "classes" (classifier vectors of classes with no forgotten cell) or "cells"
    (mean texts of every retained cell). A domain-specific request of several cells also protects,
    under "classes" (every solver reading it, the two-sided solver's text stage included), the
    mean texts of its forgotten classes' retained cells: the span of several forgotten cell texts
    holds class directions (star-sketch minus heart-sketch is star minus heart), which would
    otherwise go in every domain (benchmarks/cell_sweep.py --paradigms multi-ds; README, "Several
    classes in several domains"). A one-cell request is left as it was: a trial that protected
    them there too cost forgetting on single cells."""
    forget_cells, retain_cells = request.forget_cells, request.retain_cells
    all_cells = forget_cells + retain_cells
    T_cells = cell_texts(model, tokenizer, all_cells, request.templates)
    mu = T_cells.mean(0, keepdim=True) if center else 0.0
    T_forget = T_cells[: len(forget_cells)] - mu
    stats = {"n_forget_text": len(forget_cells)}
    if request.paradigm == "global":
        T_forget = torch.cat([T_forget, class_texts(model, tokenizer, request.forget_classes, class_templates) - mu])
        stats["n_forget_text"] += len(request.forget_classes)
    P = _edited_range(model, site, where)
    if P is not None:  # composing on an edited image tower: see _edited_range
        T_forget = T_forget.cpu() @ P
    Fm = to_site(model, site, where, T_forget)
    if multimodal:
        keys = cell_keys(all_cells, request.templates)
        V, s = prototype_columns(model, site, where, T_cells[: len(forget_cells)], keys[: len(forget_cells)],
                                 T_cells, cache.settings_key(cells=keys), n_prototypes=n_prototypes,
                                 proto_steps=proto_steps, proto_lr=proto_lr, seed=seed, progress=progress,
                                 start=_start(model, tokenizer, proto_start, forget_cells, request, class_templates))
        Fm, stats = torch.cat([Fm, V], 1), stats | s
    if protect == "none":
        T_retain = T_cells[:0]
    elif protect == "classes":
        kept = request.kept_classes
        T_retain = class_texts(model, tokenizer, kept, class_templates) - mu if kept else T_cells[:0]
        if request.paradigm == "domain-specific" and len(forget_cells) > 1:  # see the docstring
            same = request.same_class_other_domain_cells()
            T_retain = torch.cat([T_retain, T_cells[[all_cells.index(c) for c in same]] - mu])
    elif protect == "cells":
        T_retain = T_cells[len(forget_cells):] - mu
    else:
        raise ValueError(f"`protect`={protect!r} is not one of ('none', 'classes', 'cells')")
    stats["n_retain"] = len(T_retain)
    if P is not None:
        T_retain = T_retain.cpu() @ P
    return Directions(Fm, to_site(model, site, where, T_retain), stats)


@dataclass
class Constraints:
    """Directions and where they must go, at the edit site (columns), for the two-sided solver."""
    A: torch.Tensor  # text directions ...
    B: torch.Tensor  # ... and what the edited image embeddings must score against them instead
    V: torch.Tensor  # image directions (prototypes) ...
    Vt: torch.Tensor  # ... and where the edit must send them
    stats: dict = field(default_factory=dict)


def build_constraints(model, tokenizer, request: ForgetRequest, site: Site, where: str, *, multimodal: bool,
                  class_templates, n_prototypes: int, proto_steps: int, proto_lr: float, seed: int,
                  text_weight: float, image_weight: float, margin: float, sink_margin: float,
                  retain_prompts=(), pre: torch.Tensor | None = None, avoid=(), proto_start: str = "noise",
                  progress: bool = True) -> Constraints:
    """Constraints of the two-sided edit, read as zero-shot scores with the unchanged prompts:

    - every class with no forgotten cell keeps its score on every image (``T_k -> T_k``), and so
      does every prompt in ``retain_prompts`` (other knowledge to keep, e.g. attribute words);
    - global requests: every prompt of a forgotten class scores like the mean retained class
      (``t -> mean_k T_k``), so the class can no longer win on any image;
    - multimodal: prototypes of forgotten cells move along ``g`` (their class text minus a sink:
      the mean kept class) until their coefficient on ``g`` is ``-margin``, a fixed target that
      does not depend on how strongly a prototype shows its class (domain-specific requests: along
      one ``u`` per domain, the combination of the ``g`` of the domain's forgotten classes with
      coefficient 1 on each of them, by the amount that reaches the same coefficient: where class
      and domain add up, the forgotten cells of one domain can only share one shift, and separate
      ones would pull the classes' other domains along; a plain sum of the ``g`` would raise a
      class whose ``g`` points away from the others'. For one class ``u`` is along ``g``, as
      before. Measured on several-class requests, benchmarks/cell_sweep.py multi-ds); prototypes of
      the retained cells of forgotten classes (the same class in other domains) stay where they are;
    - whole domains (no class kept): every forgotten prototype gets one common shift towards a sink
      class (the most generic class text), the smallest that takes every prototype of the other
      classes ``sink_margin`` past it. Where class and domain add up in the embedding (they do here,
      see benchmarks/linear_bound.py), a linear map can only add domain-dependent class scores:
      sending the whole domain to one class is then the best it can do (forget = 1 / classes:
      the sink's own images stay right).

    ``pre`` (n x n) is an edit applied before this one: the prototypes are read through it. ``avoid``:
    classes that cannot be the sink (other edits forget them; ``stats["sink"]`` names the one chosen).
    """
    forget_cells, classes = request.forget_cells, request.classnames
    kept = request.kept_classes
    forgotten = [c for c in classes if c not in kept]
    T = class_texts(model, tokenizer, classes, class_templates)  # C x d
    T_kept = T[[classes.index(c) for c in kept]]
    # A forgotten class should score like the average kept one; with no kept class (whole domains)
    # every forgotten image goes to one "sink" class, the most generic class text.
    generic = (T @ T.mean(0)).masked_fill(torch.tensor([c in avoid for c in classes]), -torch.inf)
    sink = T_kept.mean(0) if kept else T[int(generic.argmax())]
    A = [T_kept] + ([encode(model, tokenizer, list(retain_prompts))] if retain_prompts else [])
    B = list(A)
    if request.paradigm == "global":
        prompts = torch.cat([class_texts(model, tokenizer, forgotten, class_templates),
                             cell_texts(model, tokenizer, forget_cells, request.templates)])
        A.append(prompts)
        B.append(sink.expand_as(prompts))
    A, B = torch.cat(A), torch.cat(B)
    wt = text_weight ** 0.5
    At, Bt = to_site(model, site, where, A) * wt, to_site(model, site, where, B) * wt
    stats = {"n_text": len(A)} | ({} if kept else {"sink": classes[int(generic.argmax())]})
    n = At.shape[0]
    V = Vt = torch.zeros(n, 0)
    if multimodal:
        retain = request.same_class_other_domain_cells() if request.paradigm != "global" else ()
        cells = forget_cells + retain
        V, s = prototype_columns(model, site, where, cell_texts(model, tokenizer, cells, request.templates),
                                 cell_keys(cells, request.templates), T,
                                 cache.settings_key(classes=classes, templates=class_templates),
                                 n_prototypes=n_prototypes, proto_steps=proto_steps, proto_lr=proto_lr, seed=seed,
                                 progress=progress, start=_start(model, tokenizer, proto_start, cells, request,
                                                                 class_templates, T))
        V = V if pre is None else F.normalize(pre.float() @ V, dim=0)
        Vt = V.clone()
        k = len(forget_cells) * n_prototypes
        g = to_site(model, site, where, torch.stack([T[classes.index(c)] - sink for c, _ in forget_cells]))
        g = g.repeat_interleave(n_prototypes, 1)  # n x k: each forget prototype's class-minus-sink direction
        coef = (V[:, :k] * g).sum(0) / (g * g).sum(0).clamp(min=1e-12)
        if request.paradigm == "domain-specific" and kept:  # along u: coefficient 1 on each g of its domain
            u, scale = shared_shift(g, [d for _, d in forget_cells], n_prototypes)
            Vt[:, :k] = V[:, :k] - (coef + margin) * scale * u
        elif kept:  # each prototype moves along its own g
            Vt[:, :k] = V[:, :k] - (coef + margin) * g
        else:  # one common shift towards the sink, the largest any prototype needs (see above)
            u = to_site(model, site, where, (sink - T.mean(0))[None])
            need = (coef + sink_margin) * (g * g).sum(0) / (-(u * g).sum(0)).clamp(min=1e-12)
            Vt[:, :k] = V[:, :k] + need[(g * g).sum(0) > 1e-12].max() * u
        wv = image_weight ** 0.5
        V, Vt = V * wv, Vt * wv
        stats |= s | {"n_forget_prototypes": k}
    return Constraints(At, Bt, V, Vt, stats)


def shared_shift(g: torch.Tensor, domains, n_prototypes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per forgotten prototype (the columns of ``g``, ``n_prototypes`` per cell, cells in the domains
    ``domains``), the shift direction ``u`` shared by its domain and the ``scale`` with which a step
    of ``scale * u`` changes its coefficient on its own ``g`` by one step of ``g``. ``u`` is the
    combination of the domain's ``g`` with coefficient 1 on each (ridge 1e-3); a prototype whose
    ``g`` it cannot reach (near-equal ``g``'s: coefficient below 0.5) keeps its own ``g``."""
    per_domain = {}
    for d in dict.fromkeys(domains):
        G = g[:, [i * n_prototypes for i, e in enumerate(domains) if e == d]].double()
        gram = G.T @ G
        gram = gram + 1e-3 * gram.trace() / len(gram) * torch.eye(len(gram), dtype=gram.dtype)
        per_domain[d] = (G @ torch.linalg.solve(gram, torch.ones(len(gram), dtype=gram.dtype))).float()
    u = torch.stack([per_domain[d] for d in domains], 1).repeat_interleave(n_prototypes, 1)
    gg, ug = (g * g).sum(0), (u * g).sum(0)
    ok = ug > 0.5
    return torch.where(ok, u, g), torch.where(ok, gg / ug.clamp(min=1e-12), torch.ones_like(gg))
