"""The deep mode: a closed-form concept eraser at the image output, on top of the surface edit.

The surface edit (:func:`edit.compute_map`) moves zero-shot scores; it is full rank, so every linear
read-out of the forgotten class that existed before still exists. The deep mode applies the eraser
``E`` of :func:`nullspace.oblique_eraser` *before* it, ``M = M_surface E``, with the surface edit's
prototypes read through ``E`` (so it still forgets on the erased embeddings). ``E`` removes, from
the raw ``encode_image`` output, the difference between the mean embedding of each forgotten group
(a forgotten class for class requests, a forgotten domain for whole-domain requests) and the mean
embedding of the retained cells. Both means are estimated without data from visual prototypes of
every cell (:func:`directions.prototype_columns`, kept in the prototype cache), or, for the
forgotten cells, from a few real images (``evidence``). ``E`` is d x d in the joint space, so the
whole deep edit is still one frozen map on the projection: it folds, restores, checkpoints and
exports like the surface edit.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from . import cache, nullspace
from .directions import cell_keys, cell_texts, class_texts, prototype_columns
from .encoders import encode_image, image_io
from .request import ForgetRequest
from .sites import find_site


def check_evidence(evidence: Mapping | None, request: ForgetRequest, model) -> dict:
    """``evidence`` as ``{(class, domain): float tensor (N, 3, H, W)}``, validated against the request
    and the model's input size."""
    image_size = image_io(model)[0]
    if evidence is None:
        return {}
    if not isinstance(evidence, Mapping):
        raise TypeError(f"`evidence` must be a dict from a forgotten (class, domain) cell to a tensor of "
                        f"preprocessed images (N, 3, H, W), got {type(evidence).__name__}")
    out = {}
    for cell, x in evidence.items():
        cell = tuple(cell) if isinstance(cell, (tuple, list)) else cell
        if cell not in request.forget_cells:
            raise ValueError(f"`evidence` key {cell!r} is not a forgotten cell of this request; expected some of "
                             f"{request.forget_cells}")
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] < 1 or x.shape[1] != 3 \
                or tuple(x.shape[2:]) != (image_size, image_size):
            raise ValueError(f"`evidence[{cell!r}]` must be a tensor of preprocessed images (N >= 1, 3, {image_size}, "
                             f"{image_size}), got {tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if not torch.isfinite(x).all():
            raise ValueError(f"`evidence[{cell!r}]` has NaN or inf pixels")
        out[cell] = x
    return out


@torch.no_grad()
def _encode(model, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    p = next(model.parameters())
    return torch.cat([encode_image(model, x[i:i + batch].to(p.device, p.dtype)).float().cpu()
                      for i in range(0, len(x), batch)]).double()


def cell_means(model, tokenizer, request: ForgetRequest, *, n_prototypes: int, proto_steps: int, proto_lr: float,
               seed: int, class_templates, evidence: Mapping | None = None,
               progress: bool = True) -> tuple[dict, dict]:
    """The mean raw output embedding of every cell of ``request`` (float64, by cell), and statistics.

    Prototypes: ``n_prototypes`` per cell (forgotten and retained), synthesised towards the cell's
    mean prompt, every cell of the label space in one canonical order, so they come from the
    current :mod:`cache` for any later request on the same model and label space. A forgotten cell
    with ``evidence`` uses the mean of its real images instead.
    """
    evidence = check_evidence(evidence, request, model)
    cells = [(c, d) for c in request.classnames for d in request.domains]
    T = class_texts(model, tokenizer, request.classnames, class_templates)
    cols, s = prototype_columns(model, find_site(model, "image"), "joint",
                                cell_texts(model, tokenizer, cells, request.templates),
                                cell_keys(cells, request.templates), T,
                                cache.settings_key(classes=request.classnames, templates=class_templates),
                                n_prototypes=n_prototypes, proto_steps=proto_steps, proto_lr=proto_lr, seed=seed,
                                normalise=False, progress=progress)
    H = cols.T.double().view(len(cells), n_prototypes, -1)
    means = {cell: H[i].mean(0) for i, cell in enumerate(cells)}
    for cell, x in evidence.items():
        means[cell] = _encode(model, x).mean(0)
    return means, {"eraser_prototypes": s["n_prototypes"], "eraser_prototypes_reused": s["prototypes_reused"],
                   "eraser_prototype_seconds": s["prototype_seconds"],
                   "evidence_images": {f"{c}|{d}": int(x.shape[0]) for (c, d), x in evidence.items()}}


def eraser(means: Mapping, request: ForgetRequest) -> torch.Tensor:
    """``E`` (d x d, float64) from cell means: one direction per forgotten group (class, or domain for
    whole-domain requests), the group's mean minus the mean of the retained cells."""
    forget = list(request.forget_cells)
    rest = torch.stack([means[c] for c in request.retain_cells]).mean(0)
    by = 1 if request.paradigm == "domain" else 0
    groups = list(dict.fromkeys(cell[by] for cell in forget))
    U = torch.stack([torch.stack([means[c] for c in forget if c[by] == g]).mean(0) - rest for g in groups], 1)
    return nullspace.oblique_eraser(U)


def output_eraser(model, tokenizer, request: ForgetRequest, evidence: Mapping | None = None, progress: bool = True,
                  **kw) -> tuple[torch.Tensor, dict]:
    """The eraser ``E`` (d x d, float32) of the deep mode and its statistics (see the module docstring
    and :func:`cell_means` for ``kw``)."""
    means, stats = cell_means(model, tokenizer, request, evidence=evidence, progress=progress, **kw)
    E = eraser(means, request)
    return E.float(), stats | {"eraser_rank": int(torch.linalg.matrix_rank(torch.eye(len(E), dtype=E.dtype) - E))}
