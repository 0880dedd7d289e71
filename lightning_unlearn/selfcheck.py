"""A self-check that needs no data: how the edit treats held-out prototypes, per (class, domain) cell.

After the map is computed, visual prototypes of the request's cells are synthesised with another seed
than the edit's (they are never constraints of the map they check) and classified zero-shot by the
model before and after the edit. Per cell this predicts the accuracy on the forgotten cells (should
fall) and the retained ones (should stay): :class:`Check` holds the cells, the means, the worst
forgotten and the worst retained cell (:func:`~lightning_unlearn.zeroshot.worst_cells`) and a
pass / fail against :class:`CheckThresholds`.

The check reads the edit through its maps, so it covers edits at the "joint" site (either tower, any
depth); prototypes come from the current :mod:`~lightning_unlearn.cache` like the edit's own, so a
check set is synthesised once per model and seed and reused by later requests. The correction rounds that
turn a failed check into constraints of the map are in :mod:`~lightning_unlearn.correction`.

What it is worth, measured on the embedded world (benchmarks/results/robustness_default.json: every
class, cell, domain, pair of domains and the several-class requests at seeds 0-4, 315 edits): it
catches gross damage (a forgotten class still named, a counted retained class sent elsewhere) and
agrees with the real pass / fail on 225 of the 315 edits, but it flagged 5 of the 75 real failing
cells: 53 lie in cells none of whose held-out prototypes the unedited model names confidently, 17 it
passed, and its per-cell predictions barely rank the real drops. A pass is therefore no proof that
no retained cell lost points.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from . import cache
from .directions import cell_keys, cell_texts, class_texts, encode, prototype_columns
from .prompts import fill_template
from .request import ForgetRequest
from .sites import Site, find_site
from .zeroshot import worst_cells

#: The check set's seed is the edit's seed plus this (round ``k`` of the corrections: plus ``k`` more).
SEED_OFFSET = 1000
#: Prototypes per cell and synthesis steps of a check set: a set then costs about half a whole-domain
#: edit (9.5-11.5 s on one CPU thread for the embedded world's 40 cells; benchmarks/self_check.py).
CHECK_PROTOTYPES, CHECK_STEPS = 2, 30
#: At most this many cells are checked (every forgotten cell up to half of it, then the retained
#: cells whose prompts are nearest the forgotten ones): bounds the cost on large label spaces.
MAX_CELLS = 256
#: A held-out prototype counts when the unedited model names it as its class by at least this margin
#: (cosine with its class minus the best other's): a borderline one flips under any change.
MIN_MARGIN = 0.1


@dataclass(frozen=True)
class CheckThresholds:
    """When :class:`Check` passes. Accuracies are fractions of a cell's held-out prototypes named as
    their class; drops are in points. ``forget_cell``: the most a forgotten cell may keep after the
    edit; ``forget_mean``: the most the forgotten cells may keep on average (None: ``forget_cell``).
    For whole domains one class per domain keeps its images (the sink: the floor of a linear map), so
    there both are judged on the other forgotten cells of each domain;
    ``retain_drop_cell`` / ``retain_drop_mean``: the most the worst retained cell / the retained cells
    on average may lose."""
    forget_cell: float = 0.05
    forget_mean: float | None = None
    retain_drop_cell: float = 5.0
    retain_drop_mean: float = 1.0


@dataclass
class Check:
    """The self-check of one edit: ``cells`` (per cell: ``cell``, ``forget``, ``n`` counted prototypes,
    ``coverage``, ``acc_after``, ``margin_before`` / ``margin_after``; see :func:`evaluate_check`), the
    means, the worst cells, ``passed`` and the ``failures`` (in words)."""
    cells: list[dict]
    forget_acc_before: float | None
    forget_acc_after: float | None
    retain_acc_before: float | None
    retain_acc_after: float | None
    worst_forget_cell: dict | None
    worst_retain_cell: dict | None
    passed: bool
    failures: list[str]
    thresholds: CheckThresholds
    seed: int
    n_prototypes: int
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["thresholds"] = asdict(self.thresholds)
        return d

    def summary(self) -> str:
        """A few lines: verdict, means and the worst cells."""
        def pct(x):
            return "-" if x is None else f"{100 * x:.0f}%"
        wf, wr = self.worst_forget_cell, self.worst_retain_cell
        unchecked = len(self.extra.get("unchecked_cells", ()))
        lines = [f"self-check ({self.n_prototypes} held-out prototypes per cell, seed {self.seed}, "
                 f"{len(self.cells) - unchecked} of {len(self.cells)} cells checked, {self.seconds:.1f} s): "
                 f"{'PASS' if self.passed else 'FAIL'}",
                 f"  predicted forget accuracy {pct(self.forget_acc_before)} -> {pct(self.forget_acc_after)}, "
                 f"retain accuracy {pct(self.retain_acc_before)} -> {pct(self.retain_acc_after)}"]
        if wf:
            lines.append(f"  worst forgotten cell {wf['cell'][0]} in {wf['cell'][1]}: {pct(wf['acc_before'])} -> "
                         f"{pct(wf['acc'])}")
        if wr:
            lines.append(f"  worst retained cell {wr['cell'][0]} in {wr['cell'][1]}: {pct(wr['acc_before'])} -> "
                         f"{pct(wr['acc'])} ({0.0 - wr['drop_points'] + 0.0:+.1f} points)")
        lines += [f"  fails: {f}" for f in self.failures]
        return "\n".join(lines)


def chosen_cells(model, tokenizer, request: ForgetRequest, limit: int = MAX_CELLS) -> list[tuple[str, str]]:
    """The cells a check covers: every cell when there are at most ``limit``; otherwise every
    forgotten cell (evenly spaced, at most half of ``limit``) and the retained cells whose cell
    prompts are nearest any forgotten cell's."""
    forget, retain = list(request.forget_cells), list(request.retain_cells)
    if len(forget) + len(retain) <= limit:
        return forget + retain
    if len(forget) > limit // 2:
        step = len(forget) / (limit // 2)
        forget = [forget[int(i * step)] for i in range(limit // 2)]
    T = cell_texts(model, tokenizer, forget + retain, request.templates)
    near = (T[len(forget):] @ T[:len(forget)].T).max(1).values
    keep = sorted(near.topk(limit - len(forget)).indices.tolist())
    return forget + [retain[i] for i in keep]


def holdout(model, tokenizer, request: ForgetRequest, cells, *, seed: int, n_prototypes: int = CHECK_PROTOTYPES,
            proto_steps: int = CHECK_STEPS, proto_lr: float = 0.05, class_templates, progress: bool = False,
            site: Site | None = None):
    """Held-out prototypes of ``cells`` on the unedited model: their normalised joint image
    embeddings (len(cells) * n_prototypes x d, cell-major), the class texts (C x d) they are labelled
    against, and the seconds spent synthesising (0 when the cache had them). ``site``: the image
    tower's :class:`~lightning_unlearn.sites.Site` when already found (else looked up)."""
    site = find_site(model, "image") if site is None else site
    classes = list(request.classnames)
    T = class_texts(model, tokenizer, classes, class_templates)
    targets = cell_texts(model, tokenizer, cells, request.templates)
    cols, stats = prototype_columns(model, site, "joint", targets, cell_keys(cells, request.templates), T,
                                    cache.settings_key(classes=classes, templates=class_templates, check=True),
                                    n_prototypes=n_prototypes, proto_steps=proto_steps, proto_lr=proto_lr,
                                    seed=seed, progress=progress)
    return cols.T.contiguous(), T.cpu(), stats["prototype_seconds"]  # on the CPU, with the maps


def edited_classifier(model, tokenizer, classes, class_templates, M_text: torch.Tensor | None) -> torch.Tensor:
    """The class texts (C x d) as the edited model's text tower gives them: each template embedding
    goes through ``M_text`` (the joint-site text edit, or None) before the mean (exact: the edit is
    linear and the embeddings are normalised after it)."""
    emb = encode(model, tokenizer, [fill_template(t, c=c) for c in classes for t in class_templates]).cpu()
    if M_text is not None:
        emb = F.normalize(emb @ M_text.float().T.to(emb), dim=-1)
    return F.normalize(emb.view(len(classes), len(class_templates), -1).mean(1), dim=-1)


def predict(H: torch.Tensor, T: torch.Tensor, own: torch.Tensor, M_image: torch.Tensor | None = None):
    """Per prototype (rows of ``H``), after the image edit ``M_image`` (None: unedited): whether it is
    named as its class ``own``, and its margin: the cosine with its own class minus the best other's."""
    h = H if M_image is None else F.normalize(H @ M_image.float().T.to(H), dim=-1)
    cos = h @ T.T.to(h)
    mine = cos.gather(1, own[:, None]).squeeze(1)
    other = cos.scatter(1, own[:, None], float("-inf")).max(1).values
    return cos.argmax(-1) == own, mine - other


def evaluate_check(request: ForgetRequest, cells, H, T_before, T_after, M_image, n_prototypes: int,
                   thresholds: CheckThresholds, seed: int) -> Check:
    """The :class:`Check` of the map ``M_image`` (and the edited class texts ``T_after``) on the
    held-out embeddings ``H`` of ``cells``.

    Only the prototypes the unedited model names as their class, by a margin of at least
    :data:`MIN_MARGIN`, count (a synthesised image that
    does not show its class to the model says nothing about what the edit does to that class): per
    cell ``n`` is how many do, ``coverage`` their share of the cell's prototypes, ``acc_after`` the
    share of them still named after the edit and ``margin_before`` / ``margin_after`` their mean margin
    (cosine with their class minus the best other class's).
    A cell none of whose prototypes counts is listed with ``n`` 0 and left out of the means and the
    worst cells."""
    classes, domains = list(request.classnames), list(request.domains)
    own = torch.tensor([classes.index(c) for c, _ in cells]).repeat_interleave(n_prototypes)
    hit_b, p_b = predict(H, T_before, own)
    hit_b &= p_b >= MIN_MARGIN
    hit_a, p_a = predict(H, T_after, own, M_image)
    shape = (len(classes), len(domains))
    valid, after = torch.zeros(shape), torch.zeros(shape)
    forget = set(request.forget_cells)
    rows = []
    for i, (c, d) in enumerate(cells):
        sl = slice(i * n_prototypes, (i + 1) * n_prototypes)
        ok = hit_b[sl]
        n = int(ok.sum())
        ci, di = classes.index(c), domains.index(d)
        valid[ci, di], after[ci, di] = n, float(hit_a[sl][ok].sum())
        rows.append({"cell": [c, d], "forget": (c, d) in forget, "n": n, "coverage": n / n_prototypes,
                     "acc_after": float(hit_a[sl][ok].float().mean()) if n else None,
                     "margin_after": float(p_a[sl][ok].mean()) if n else None,
                     "margin_before": float(p_b[sl][ok].mean()) if n else None})
    worst = worst_cells(after, valid, request, before=(valid, valid))

    def mean(is_forget):
        v = [r["acc_after"] for r in rows if r["forget"] == is_forget and r["n"]]
        return sum(v) / len(v) if v else None
    fa, ra = mean(True), mean(False)
    check = Check(rows, None if fa is None else 1.0, fa, None if ra is None else 1.0, ra, worst["worst_forget_cell"],
                  worst["worst_retain_cell"], True, [], thresholds, seed, n_prototypes,
                  extra={"unchecked_cells": [r["cell"] for r in rows if not r["n"]]})
    return judge(check, request, thresholds)


def judge(check: Check, request: ForgetRequest, thresholds: CheckThresholds) -> Check:
    """``check`` with ``passed`` / ``failures`` set against ``thresholds`` (in place; returned)."""
    failures, t = [], thresholds
    fa, wf, wr = check.forget_acc_after, check.worst_forget_cell, check.worst_retain_cell
    domain = request.paradigm == "domain"
    forget_mean = t.forget_mean if t.forget_mean is not None else t.forget_cell
    if domain:  # one class per domain keeps its images (the sink): judge the others
        kept = {}
        for r in check.cells:
            if r["forget"] and r["n"]:
                kept.setdefault(r["cell"][1], []).append(r)
        rest = [r for rows in kept.values() for r in sorted(rows, key=lambda r: r["acc_after"])[:-1]]
        fa = sum(r["acc_after"] for r in rest) / len(rest) if rest else None
        wf = max(rest, key=lambda r: r["acc_after"]) if rest else None
        wf = wf and {"cell": wf["cell"], "acc": wf["acc_after"]}
    if fa is not None and fa > forget_mean + 1e-9:
        failures.append(f"forgotten cells keep {100 * fa:.0f}% on average (at most {100 * forget_mean:.0f}%"
                        + ("; the sink class of each domain left out)" if domain else ")"))
    if wf is not None and wf["acc"] > t.forget_cell + 1e-9:
        failures.append(f"forgotten cell {wf['cell'][0]} in {wf['cell'][1]} keeps {100 * wf['acc']:.0f}% "
                        f"(at most {100 * t.forget_cell:.0f}%" + ("; besides the sink class)" if domain else ")"))
    if wr is not None and wr["drop_points"] > t.retain_drop_cell + 1e-9:
        failures.append(f"retained cell {wr['cell'][0]} in {wr['cell'][1]} loses {wr['drop_points']:.1f} points "
                        f"(at most {t.retain_drop_cell:g})")
    if check.retain_acc_after is not None and 100 * (1 - check.retain_acc_after) > t.retain_drop_mean + 1e-9:
        failures.append(f"retained cells lose {100 * (1 - check.retain_acc_after):.1f} points on average "
                        f"(at most {t.retain_drop_mean:g})")
    check.passed, check.failures, check.thresholds = not failures, failures, t
    return check


def self_check(model, tokenizer, request: ForgetRequest, maps: dict, config, *, seed: int | None = None,
               n_prototypes: int = CHECK_PROTOTYPES, proto_steps: int = CHECK_STEPS,
               thresholds: CheckThresholds | None = None, progress: bool = False,
               site: Site | None = None) -> Check | None:
    """The :class:`Check` of ``maps`` (tower -> map, as :func:`~lightning_unlearn.edit.unlearn_`
    computed them) on a held-out set of prototypes (seed ``config.seed + SEED_OFFSET`` unless given),
    synthesised on ``model`` as it is (call it before the edit is injected). None for an edit at the
    "pooled" site, which this check does not read. ``site``: the image tower's site when already found."""
    if config.site != "joint":
        return None
    t0 = time.perf_counter()
    seed = config.seed + SEED_OFFSET if seed is None else seed
    cells = chosen_cells(model, tokenizer, request)
    H, T, _ = holdout(model, tokenizer, request, cells, seed=seed, n_prototypes=n_prototypes, proto_steps=proto_steps,
                      proto_lr=config.proto_lr, class_templates=config.class_templates, progress=progress, site=site)
    T_after = T if "text" not in maps else edited_classifier(model, tokenizer, list(request.classnames),
                                                             config.class_templates, maps["text"])
    check = evaluate_check(request, cells, H, T, T_after, maps.get("image"), n_prototypes,
                           thresholds or CheckThresholds(), seed)
    check.seconds = round(time.perf_counter() - t0, 3)
    return check
