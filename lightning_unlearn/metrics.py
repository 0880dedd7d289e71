"""Forget / retain accuracy per (class, domain) cell as a torchmetrics ``Metric``.

The only states are two ``C x D`` count tables (``correct``, ``total``) summed across processes,
so the numbers over a sharded test set equal the single-process numbers exactly.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics import Metric

from .request import ForgetRequest, RequestError

#: Which way each key of :meth:`UnlearningAccuracy.compute` should move after unlearning.
HIGHER_IS_BETTER = {"forget_accuracy": False, "forget_accuracy_macro": False, "retain_accuracy": True,
                    "retain_accuracy_macro": True, "same_class_other_domains_accuracy": True, "accuracy": None,
                    "worst_forget_cell_accuracy": False, "worst_retain_cell_accuracy": True}


def forget_mask(request: ForgetRequest, classnames: Sequence[str] | None = None,
                domains: Sequence[str] | None = None) -> torch.Tensor:
    """The ``C x D`` boolean mask of ``request``'s forget cells over ``classnames`` x ``domains``
    (default: the request's own). Every forgotten class and domain must be among the names.

    >>> r = ForgetRequest(["cat", "dog"], ["photo", "sketch"], forget_classes=["dog"])
    >>> forget_mask(r).tolist()
    [[False, False], [True, True]]
    """
    classnames = tuple(request.classnames if classnames is None else classnames)
    domains = tuple(request.domains if domains is None else domains)
    for names, universe, what, arg in [({c for c, _ in request.forget_cells}, classnames, "class", "classnames"),
                                       ({d for _, d in request.forget_cells}, domains, "domain", "domains")]:
        missing = sorted(n for n in names if n not in universe)
        if missing:
            raise RequestError(f"the request forgets {what} name(s) {missing}, which are not in `{arg}` "
                               f"{list(universe)}; fix the request's names, or pass `{arg}=` with the data's label "
                               "names in label-index order")
    mask = torch.zeros(len(classnames), len(domains), dtype=torch.bool)
    for c, d in request.forget_cells:
        mask[classnames.index(c), domains.index(d)] = True
    return mask


class UnlearningAccuracy(Metric):
    """Zero-shot accuracy on the forgotten cells, the retained cells and per domain.

    Args:
        forget: a :class:`~lightning_unlearn.ForgetRequest` or a boolean ``C x D`` mask of the
            forgotten (class, domain) cells.
        classnames, domains: the label names of the data, in label-index order (default: the
            request's; with a mask, class and domain indices are used as names).
        validate_args: check input shapes and label ranges in ``update`` (one device sync per batch).

    ``update(preds, target_class, target_domain)`` takes predicted class indices ``(N,)`` or
    scores ``(N, C)`` (arg-maxed). ``compute()`` returns a dict of scalar tensors:
    ``forget_accuracy`` / ``retain_accuracy`` (micro: over images; ``*_macro``: mean over the cells
    seen), ``worst_forget_cell_accuracy`` / ``worst_retain_cell_accuracy`` (the most accurate
    forgotten cell, the least accurate retained cell; :meth:`worst_cells` names them), ``same_class_other_domains_accuracy`` (retained cells of a forgotten class; only when
    the request has such cells, i.e. domain-specific ones), ``accuracy`` (every image) and
    ``accuracy_<domain>`` per domain. A set with no image yet is ``nan``.

    Lower is better for the forget keys and higher for the others (see :data:`HIGHER_IS_BETTER`),
    so the metric as a whole declares ``higher_is_better = None``.

    Raises:
        TypeError: ``forget`` is neither a request nor a tensor.
        ValueError: a mask that is not 2-D bool, does not match ``classnames`` x ``domains`` or marks
            no cell; in ``update`` (with ``validate_args``), mismatched shapes or labels out of range.

    >>> r = ForgetRequest(["cat", "dog"], ["photo", "sketch"], forget_classes=["dog"], forget_domains=["sketch"])
    >>> m = UnlearningAccuracy(r)
    >>> m.update(torch.tensor([0, 1, 0, 0]), target_class=torch.tensor([0, 1, 1, 0]),
    ...          target_domain=torch.tensor([0, 0, 1, 1]))
    >>> out = m.compute()
    >>> round(float(out["forget_accuracy"]), 3), round(float(out["retain_accuracy"]), 3)
    (0.0, 1.0)
    >>> float(out["same_class_other_domains_accuracy"]), float(out["accuracy_sketch"])
    (1.0, 0.5)
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False
    correct: torch.Tensor
    total: torch.Tensor

    def __init__(self, forget: ForgetRequest | torch.Tensor, classnames: Sequence[str] | None = None,
                 domains: Sequence[str] | None = None, validate_args: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.validate_args = validate_args
        if isinstance(forget, ForgetRequest):
            mask = forget_mask(forget, classnames, domains)
            classnames = tuple(forget.classnames if classnames is None else classnames)
            domains = tuple(forget.domains if domains is None else domains)
        elif isinstance(forget, torch.Tensor):
            if forget.dim() != 2 or forget.dtype != torch.bool:
                raise ValueError(f"`forget` must be a ForgetRequest or a 2-D bool (classes x domains) mask, got a "
                                 f"{forget.dtype} tensor of shape {tuple(forget.shape)}")
            mask = forget.clone()
            classnames = tuple(str(i) for i in range(mask.shape[0])) if classnames is None else tuple(classnames)
            domains = tuple(str(j) for j in range(mask.shape[1])) if domains is None else tuple(domains)
            if (len(classnames), len(domains)) != tuple(mask.shape):
                raise ValueError(f"the `forget` mask has shape {tuple(mask.shape)} but {len(classnames)} `classnames` "
                                 f"and {len(domains)} `domains` were given; give one name per row / column")
        else:
            raise TypeError(f"`forget` must be a ForgetRequest or a bool tensor, got {type(forget).__name__}")
        if not mask.any() or mask.all():
            raise ValueError(f"the forget mask marks {int(mask.sum())} of {mask.numel()} cells; it needs at least one "
                             "forgotten and one retained cell")
        self.classnames, self.domains = classnames, domains
        forgotten_classes = mask.any(1, keepdim=True)
        self.register_buffer("forget_cells", mask, persistent=False)
        self.register_buffer("same_class_cells", forgotten_classes & ~mask, persistent=False)
        shape = tuple(mask.shape)
        self.add_state("correct", default=torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target_class: torch.Tensor, target_domain: torch.Tensor) -> None:
        C, D = self.correct.shape
        if preds.dim() == 2:
            if preds.shape[1] != C:
                raise ValueError(f"`preds` has scores for {preds.shape[1]} classes, expected {C}")
            preds = preds.argmax(-1)
        if not (preds.shape == target_class.shape == target_domain.shape) or preds.dim() != 1:
            raise ValueError(f"`preds` {tuple(preds.shape)}, `target_class` {tuple(target_class.shape)} and "
                             f"`target_domain` {tuple(target_domain.shape)} must be 1-D of the same length")
        target_class, target_domain = target_class.long(), target_domain.long()
        if self.validate_args:  # one device sync per batch
            bad = (target_class < 0) | (target_class >= C) | (target_domain < 0) | (target_domain >= D)
            if bool(bad.any()):
                raise ValueError(f"labels out of range: classes must be in [0, {C}) and domains in [0, {D}); "
                                 "check that the data's label order matches `classnames` / `domains`")
        idx = target_class * D + target_domain
        self.total.view(-1).index_add_(0, idx, torch.ones_like(idx))
        self.correct.view(-1).index_add_(0, idx, (preds.long() == target_class).long())

    def compute(self) -> dict[str, torch.Tensor]:
        correct, total = self.correct.double(), self.total.double()
        acc = correct / total.clamp(min=1)
        seen = self.total > 0
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=acc.device)

        def micro(cells):
            n = total[cells].sum()
            return correct[cells].sum() / n if n > 0 else nan

        def macro(cells):
            cells = cells & seen
            return acc[cells].mean() if cells.any() else nan

        out = {"forget_accuracy": micro(self.forget_cells), "forget_accuracy_macro": macro(self.forget_cells),
               "retain_accuracy": micro(~self.forget_cells), "retain_accuracy_macro": macro(~self.forget_cells)}
        if self.same_class_cells.any():
            out["same_class_other_domains_accuracy"] = micro(self.same_class_cells)
        worst = self.worst_cells()
        for key, kind in (("worst_forget_cell_accuracy", "worst_forget_cell"),
                          ("worst_retain_cell_accuracy", "worst_retain_cell")):
            out[key] = nan if worst[kind] is None else torch.tensor(worst[kind]["acc"], dtype=torch.float64,
                                                                    device=acc.device)
        out["accuracy"] = micro(torch.ones_like(self.forget_cells))
        for j, d in enumerate(self.domains):
            column = torch.zeros_like(self.forget_cells)
            column[:, j] = True
            out[f"accuracy_{d}"] = micro(column)
        return {k: v.float() for k, v in out.items()}

    def worst_cells(self) -> dict:
        """The most accurate forgotten and the least accurate retained cell seen so far, named
        (:func:`~lightning_unlearn.zeroshot.worst_cells`: ``{"worst_forget_cell": {"cell": [class,
        domain], "acc"}, "worst_retain_cell": ...}``, None where no image of that kind was seen)."""
        from .zeroshot import worst_cells
        return worst_cells(self.correct, self.total, self.forget_cells, self.classnames, self.domains)


def sample_masks(labels: torch.Tensor, request: ForgetRequest) -> tuple[torch.Tensor, torch.Tensor]:
    """Which images are in a forgotten cell, and which in a retained cell of a forgotten class.

    Args:
        labels: ``(N, >= 2)`` class and domain indices over the request's names (e.g.
            :func:`~lightning_unlearn.data.render_split`'s labels).
        request: the request.

    Returns:
        ``(forget, same)``: ``(N,)`` boolean masks; ``same`` ("same class, other domains") is empty
        for whole domains.
    """
    forget = forget_mask(request)[labels[:, 0], labels[:, 1]]
    forgotten = torch.zeros(len(request.classnames), dtype=torch.bool)
    for c in request.forget_classes or ():
        forgotten[request.classnames.index(c)] = True
    return forget, forgotten[labels[:, 0]] & ~forget


def _mean(hits: torch.Tensor) -> float | None:
    return float(hits.double().mean()) if hits.numel() else None


def depth_metrics(fit_h: torch.Tensor, fit_labels: torch.Tensor, test_h: torch.Tensor, test_labels: torch.Tensor,
                  request: ForgetRequest, class_T: torch.Tensor, colour_T: torch.Tensor) -> dict:
    """Zero-shot and linear-probe metrics of a request on (edited) image embeddings: probes fitted
    on ``fit_h`` and scored, with zero-shot, on ``test_h``.

    Args:
        fit_h, test_h: raw image embeddings.
        fit_labels, test_labels: their ``(class, domain, colour)`` indices (``(N, 3)``).
        request: the request whose forgotten cells are scored.
        class_T, colour_T: the class and colour zero-shot classifiers (``width x C``), in ``test_h``'s dtype.

    Returns:
        ``zs_forget``, ``zs_retain``, ``zs_same`` (zero-shot accuracy on the forgotten cells, the
        others, the forgotten classes' other domains), ``colour``; ``probe_bal_raw`` /
        ``probe_bal_norm`` (binary "forgotten vs the rest" probe, balanced accuracy, raw /
        normalised embedding; chance 0.5); and the class probe's ``probe_recall`` (forgotten
        cells), ``probe_recall_same`` and ``probe_retain_acc``. None where a set is empty.
    """
    from .probes import binary_probe, fit_probe
    fv, _ = sample_masks(fit_labels, request)
    ft, st = sample_masks(test_labels, request)
    e = torch.nn.functional.normalize(test_h, dim=-1)
    zs = (e @ class_T).argmax(1) == test_labels[:, 0]
    out = {"zs_forget": _mean(zs[ft]), "zs_retain": _mean(zs[~ft]), "zs_same": _mean(zs[st]),
           "colour": _mean((e @ colour_T).argmax(1) == test_labels[:, 2])}
    for name, f in [("raw", lambda h: h), ("norm", lambda h: torch.nn.functional.normalize(h, dim=-1))]:
        out[f"probe_bal_{name}"] = binary_probe(f(fit_h), fv, f(test_h), ft)
    ok = fit_probe(fit_h, fit_labels[:, 0], len(request.classnames))(test_h) == test_labels[:, 0]
    return out | {"probe_recall": _mean(ok[ft]), "probe_recall_same": _mean(ok[st]),
                  "probe_retain_acc": _mean(ok[~ft & ~st])}
