"""Depth audit: does the model still *represent* the forgotten cells, not only fail to name them?

Zero-shot accuracy reads one direction per class. An edit can zero it while every other linear
read-out of the class survives. The audit looks for the class where a user of the model could:

* ``probe_balanced_acc``: a binary linear probe "forgotten cells vs the rest", fitted on image
  features of a *fit* split and scored on a held-out *test* split (balanced accuracy, chance 0.5);
  on the raw ``encode_image`` output and (``probe_balanced_acc_normalised``) on the L2-normalised one;
* ``probe_recall`` / ``probe_retain_acc``: a multi-class linear probe over all classes, accuracy on
  the forgotten / retained test cells (chance ``1 / C``);
* ``knn_recall`` / ``knn_retain_acc``: k-nearest neighbours (cosine, fit split as memory);
* ``paraphrase_acc``: zero-shot accuracy on the forgotten cells with prompts the edit never saw
  (colour-qualified "a photo of a red {c}." per colour, and :data:`PARAPHRASE_TEMPLATES`): the mean
  over these classifiers (``paraphrase_acc_max``: the one that recovers the most);
* ``retrieval_precision``: text -> image precision at ``k`` among all test images, per forgotten
  class (class prompts, ``k`` = its forgotten test images) when it is forgotten in every domain,
  else per forgotten cell (the request's cell prompts, ``k`` = the cell's test images);
* ``zeroshot_acc`` / ``zeroshot_retain_acc``: the plain zero-shot numbers, for reference.

The probe and k-NN metrics are also computed inside the tower: at the pooled features (the input
of the image projection) and at the output of intermediate blocks (token mean of a transformer
block, spatial mean of a ResNet stage), keyed ``<metric>@<layer>`` (``probe_recall@pooled``,
``probe_balanced_acc@block3``). Features are extracted once per model state, in one pass, through
:mod:`~lightning_unlearn.encoders` (open_clip and transformers models), in eval mode (each
submodule's mode is restored after).

Probes (:mod:`~lightning_unlearn.probes`) are multinomial logistic regressions on standardised
features (weight decay, full-batch L-BFGS, float64: deterministic); the binary probe weights both
sides equally. For a before / after
comparison, extract the unedited model's features once and call :func:`audit_features` per request,
or use :func:`compare` on two audits.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import encode_image, eval_mode, image_tower
from .errors import UnlearnError
from .probes import accuracy, binary_probe, probe_metrics
from .prompts import CLASS_TEMPLATES, fill_template
from .request import ForgetRequest
from .sites import find_site
from .zeroshot import classifier, text_embeddings

#: Class templates outside the library's prompt lists (the edit never saw them).
PARAPHRASE_TEMPLATES = ("a picture of a {c}.", "an image of the {c}.", "a close-up photo of the {c}.",
                        "a rendering of a {c}.", "there is a {c} in this image.")
#: Colour words of the colour-qualified paraphrases "a photo of a <colour> {c}.".
PARAPHRASE_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
#: Default layers: the raw image embedding, the projection input, the middle block ("block:mid").
LAYERS = ("output", "pooled", "block:mid")
#: Which way each metric should move after unlearning (False: lower means more forgotten).
HIGHER_IS_BETTER = {"probe_balanced_acc": False, "probe_balanced_acc_normalised": False, "probe_recall": False,
                    "probe_retain_acc": True, "knn_recall": False, "knn_retain_acc": True, "paraphrase_acc": False,
                    "paraphrase_acc_max": False, "paraphrase_retain_acc": True, "retrieval_precision": False,
                    "zeroshot_acc": False, "zeroshot_retain_acc": True}


class AuditError(UnlearnError, ValueError):
    """Input the audit cannot score; the message says what and how to fix it."""


@dataclass
class Features:
    """Image features of one model state: ``layers[name]`` is ``(N, width)`` float32 on CPU;
    ``cls`` / ``dom`` are the ``(N,)`` class and domain indices."""
    layers: dict[str, torch.Tensor]
    cls: torch.Tensor
    dom: torch.Tensor

    def subset(self, idx: torch.Tensor) -> "Features":
        return Features({k: v[idx] for k, v in self.layers.items()}, self.cls[idx], self.dom[idx])

    def __len__(self) -> int:
        return len(self.cls)


# ---------------------------------------------------------------------------------------------- features
def blocks(model: nn.Module) -> list[nn.Module]:
    """The image tower's residual blocks (ViT) or stages (ResNet), input to output."""
    visual = image_tower(model)
    for path in ("transformer.resblocks", "trunk.blocks", "trunk.stages", "encoder.layers"):
        owner = visual
        for name in path.split("."):
            owner = getattr(owner, name, None)
        if owner is not None:
            return list(owner)
    stages = [getattr(visual, f"layer{i}", None) for i in range(1, 5)]
    if all(s is not None for s in stages):
        return stages
    raise AuditError(f"cannot find the blocks of an image tower of type {type(visual).__name__}; "
                     "audit only layers=('output', 'pooled')")


def resolve_layers(model: nn.Module, layers: Sequence[str] = LAYERS) -> tuple[str, ...]:
    """``layers`` with ``block:mid`` / negative block indices made explicit (``block:3``)."""
    out = []
    for name in layers:
        m = re.fullmatch(r"block:(-?\d+|mid)", name)
        if name in ("output", "pooled"):
            out.append(name)
        elif m:
            n = len(blocks(model))
            i = n // 2 if m[1] == "mid" else int(m[1])
            if not -n <= i < n:
                raise AuditError(f"layer {name!r}: the image tower has {n} blocks; use block:0 .. block:{n - 1}")
            out.append(f"block:{i % n}")
        else:
            raise AuditError(f"unknown layer {name!r}; use 'output', 'pooled' or 'block:<index>' / 'block:mid'")
    return tuple(dict.fromkeys(out))


def _summary(x: torch.Tensor) -> torch.Tensor:
    """One vector per image from a block's output: token mean (N, L, D) or spatial mean (N, C, H, W)."""
    x = x[0] if isinstance(x, tuple) else x
    return x.mean(1) if x.dim() == 3 else x.mean((2, 3)) if x.dim() == 4 else x


def project(site, pooled: torch.Tensor, W: torch.Tensor | None = None) -> torch.Tensor:
    """The projection of ``site`` (its own weight, or ``W``) applied to ``pooled`` features."""
    W = getattr(site.module, site.weight) if W is None else W
    if site.layout == "param":
        return pooled @ W
    return F.linear(pooled, W, getattr(site.module, site.bias) if site.bias else None)


@torch.no_grad()
def extract(model: nn.Module, batches: Iterable, layers: Sequence[str] = LAYERS) -> Features:
    """Features of every image in ``batches`` (``(images, class_idx, domain_idx, ...)``) at ``layers``,
    in one forward pass per batch, in eval mode (each submodule's mode is restored on return).
    ``output`` is :func:`~lightning_unlearn.encoders.encode_image` (unnormalised)."""
    with eval_mode(model):
        return _extract(model, batches, resolve_layers(model, layers))


def _extract(model: nn.Module, batches: Iterable, layers: tuple[str, ...]) -> Features:
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    site = find_site(model, "image")
    tower = blocks(model) if any(name.startswith("block:") for name in layers) else []
    captured: dict[str, torch.Tensor] = {}
    hooks = [tower[int(name[6:])].register_forward_hook(
        lambda m, a, out, name=name: captured.__setitem__(name, _summary(out)))
        for name in layers if name.startswith("block:")]
    feats = {name: [] for name in layers}
    cls, dom = [], []
    checked = False
    try:
        for batch in batches:
            x = batch[0].to(device, dtype)
            pooled = site.pooled(x)
            output = project(site, pooled)
            if not checked:  # the shortcut output = projection(pooled) must be encode_image itself
                checked = True
                exact = torch.allclose(output, encode_image(model, x), rtol=1e-4, atol=1e-5)
            if not exact:
                output = encode_image(model, x)
            for name in layers:
                v = {"output": output, "pooled": pooled}.get(name, captured.get(name))
                feats[name].append(v.float().cpu())
            cls.append(torch.as_tensor(batch[1]).long())
            dom.append(torch.as_tensor(batch[2]).long())
    finally:
        for h in hooks:
            h.remove()
    if not cls:
        raise AuditError("no images: the batches are empty")
    return Features({k: torch.cat(v) for k, v in feats.items()}, torch.cat(cls), torch.cat(dom))


# ---------------------------------------------------------------------------------------------- text side
def _zero_shot(h: torch.Tensor, T: torch.Tensor, test: Features, f_test: torch.Tensor) -> tuple:
    pred = (F.normalize(h, dim=-1) @ T.cpu().float()).argmax(-1)
    return accuracy(pred, test.cls, f_test), accuracy(pred, test.cls, ~f_test)


def retrieval_precision(model, tokenizer, request: ForgetRequest, h: torch.Tensor, test: Features,
                        classnames: Sequence[str], domains: Sequence[str], T: torch.Tensor) -> float:
    """Text -> image precision at k over all test images (see the module docstring)."""
    h = F.normalize(h, dim=-1)
    queries, relevant = [], []
    for c in dict.fromkeys(c for c, _ in request.forget_cells):
        i = classnames.index(c)
        forgotten = [d for cc, d in request.forget_cells if cc == c]
        if len(forgotten) == len(request.domains):
            queries.append(T[:, i].cpu().float())
            relevant.append(test.cls == i)
        else:
            for d in forgotten:
                prompts = [fill_template(t, c=c, d=d) for t in request.templates]
                queries.append(F.normalize(text_embeddings(model, tokenizer, prompts).mean(0), dim=-1).cpu())
                relevant.append((test.cls == i) & (test.dom == domains.index(d)))
    hits = total = 0
    for q, rel in zip(queries, relevant):
        k = int(rel.sum())
        if k:
            hits += int(rel[(h @ q).topk(k).indices].sum())
            total += k
    return hits / total if total else None


# ---------------------------------------------------------------------------------------------- audit
def audit_features(model, tokenizer, request: ForgetRequest, fit: Features, test: Features, *,
                   classnames: Sequence[str] | None = None, domains: Sequence[str] | None = None,
                   templates: Sequence[str] = CLASS_TEMPLATES,
                   paraphrase_templates: Sequence[str] = PARAPHRASE_TEMPLATES,
                   colours: Sequence[str] = PARAPHRASE_COLOURS, k: int = 10, weight_decay: float = 1e-3) -> dict:
    """The audit (see the module docstring) from features already extracted by :func:`extract`
    from the model in its current state; ``model`` / ``tokenizer`` give the text side.
    Returns a flat dict of floats (None where a set is empty)."""
    from .metrics import forget_mask
    classnames = tuple(request.classnames if classnames is None else classnames)
    domains = tuple(request.domains if domains is None else domains)
    forget = forget_mask(request, classnames, domains)
    C = len(classnames)
    _check(fit, test, forget, C, len(domains))
    out = {"n_fit": len(fit), "n_test": len(test), "n_forget_test": int(forget[test.cls, test.dom].sum())}
    for name in test.layers:
        m = probe_metrics(fit.layers[name], fit, test.layers[name], test, forget, C, k, weight_decay)
        out |= {(key if name == "output" else f"{key}@{name.replace(':', '')}"): v for key, v in m.items()}
        if name == "output":
            nf, nt = F.normalize(fit.layers[name], dim=-1), F.normalize(test.layers[name], dim=-1)
            out["probe_balanced_acc_normalised"] = binary_probe(nf, forget[fit.cls, fit.dom], nt,
                                                                forget[test.cls, test.dom], weight_decay)
    if "output" not in test.layers:
        return out
    h, f_test = test.layers["output"], forget[test.cls, test.dom]
    T = classifier(model, tokenizer, classnames, templates)
    out["zeroshot_acc"], out["zeroshot_retain_acc"] = _zero_shot(h, T, test, f_test)
    para = [[f"a photo of a {colour} {{c}}."] for colour in colours] + [[t] for t in paraphrase_templates]
    accs = [_zero_shot(h, classifier(model, tokenizer, classnames, t), test, f_test) for t in para]
    out["paraphrase_acc"] = sum(a for a, _ in accs) / len(accs)
    out["paraphrase_acc_max"] = max(a for a, _ in accs)
    out["paraphrase_retain_acc"] = sum(r for _, r in accs) / len(accs)
    out["retrieval_precision"] = retrieval_precision(model, tokenizer, request, h, test, classnames, domains, T)
    return out


def _check(fit: Features, test: Features, forget: torch.Tensor, C: int, D: int) -> None:
    for what, f in (("fit", fit), ("test", test)):
        if len(f) and (int(f.cls.max()) >= C or int(f.dom.max()) >= D or int(f.cls.min()) < 0 or int(f.dom.min()) < 0):
            raise AuditError(f"the {what} split has labels outside {C} classes x {D} domains; pass the data's "
                             "`classnames` / `domains` in label-index order")
        f_mask = forget[f.cls, f.dom]
        if not f_mask.any() or f_mask.all():
            raise AuditError(f"the {what} split has {int(f_mask.sum())} images of forgotten cells out of {len(f)}; "
                             "the audit needs images of both forgotten and retained cells in both splits")
        if len(f.cls.unique()) < 2:
            raise AuditError(f"the {what} split has images of a single class; the probes need at least two")


def audit(model, tokenizer, request: ForgetRequest, fit_batches: Iterable, test_batches: Iterable, *,
          layers: Sequence[str] = LAYERS, **kwargs) -> dict:
    """Extract features of ``fit_batches`` and ``test_batches`` (``(images, class_idx, domain_idx, ...)``)
    at ``layers`` and return :func:`audit_features` (keyword arguments are passed on), all in eval mode
    (each submodule's mode is restored on return)."""
    with eval_mode(model):
        return audit_features(model, tokenizer, request, extract(model, fit_batches, layers),
                              extract(model, test_batches, layers), **kwargs)


def compare(before: dict, after: dict) -> dict:
    """``{key}_before``, ``{key}_after`` and ``{key}_delta`` (after - before) for every shared key."""
    out = {}
    for key in before:
        if key in after:
            b, a = before[key], after[key]
            out |= {f"{key}_before": b, f"{key}_after": a,
                    f"{key}_delta": None if a is None or b is None else a - b}
    return out


def split_cells(cls: torch.Tensor, dom: torch.Tensor, classnames: Sequence[str] | None = None,
                domains: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic stratified half split of a labelled image set: within every (class, domain)
    cell, in data order, images 0, 2, 4, ... go to the fit split and 1, 3, 5, ... to the test split.
    Every cell present needs at least two images. Returns the (sorted) fit and test indices."""
    cls, dom = torch.as_tensor(cls).long(), torch.as_tensor(dom).long()
    key = cls * (int(dom.max()) + 1) + dom
    fit, test = [], []
    for cell in key.unique():
        idx = (key == cell).nonzero().flatten()
        if len(idx) < 2:
            c, d = int(cls[idx[0]]), int(dom[idx[0]])
            name = (classnames[c] if classnames else c, domains[d] if domains else d)
            raise AuditError(f"cell (class, domain) = {name} has {len(idx)} image; the audit needs at least 2 images "
                             "per cell (half fit the probes, half score them); add images to that cell or run "
                             "without the audit")
        fit.append(idx[0::2])
        test.append(idx[1::2])
    return torch.cat(fit).sort().values, torch.cat(test).sort().values


def audit_dataset(model, tokenizer, request: ForgetRequest, dataset, *, batch_size: int = 256, num_workers: int = 0,
                  layers: Sequence[str] = LAYERS, relearn: bool = False, **kwargs) -> dict:
    """The audit on one labelled dataset (items ``(image, class_idx, domain_idx, ...)``, with
    ``classnames`` / ``domains`` attributes when the request's names are not in label order), split
    by :func:`split_cells`: features are extracted once, half of each cell fits the probes. With
    ``relearn``, also the relearning attack's figures (:func:`~lightning_unlearn.relearn.summary`:
    ``relearn_start_acc``, ``relearn_steps@<attack>``; attack images from the fit half)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    kwargs.setdefault("classnames", getattr(dataset, "classnames", None))
    kwargs.setdefault("domains", getattr(dataset, "domains", None))
    with eval_mode(model):  # each submodule's mode is restored on return
        feats = extract(model, loader, layers)
        fit, test = split_cells(feats.cls, feats.dom, kwargs["classnames"], kwargs["domains"])
        out = audit_features(model, tokenizer, request, feats.subset(fit), feats.subset(test), **kwargs)
    if relearn:
        from .relearn import relearning_dataset, summary
        out |= summary(relearning_dataset(model, tokenizer, request, dataset, batch_size=batch_size,
                                          num_workers=num_workers, classnames=kwargs["classnames"],
                                          domains=kwargs["domains"],
                                          templates=kwargs.get("templates", CLASS_TEMPLATES)))
    return out


def format_audit(result: dict, before: dict | None = None) -> str:
    """A text table of an audit (metric, value; with ``before``: before -> after)."""
    rows = [(k, v) for k, v in result.items() if not k.startswith("n_")]
    width = max(len(k) for k, _ in rows)
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"{'metric'.ljust(width)}  " + ("before -> after" if before else "value")]
    for k, v in rows:
        lines.append(f"{k.ljust(width)}  " + (f"{fmt(before.get(k))} -> {fmt(v)}" if before else fmt(v)))
    return "\n".join(lines)
