"""The deep mode: a closed-form concept eraser at the image output, on top of the surface edit.

The surface edit (:func:`edit.compute_map`) moves zero-shot scores; it is full rank, so every linear
read-out of the forgotten class that existed before still exists. The deep mode applies the eraser
``E`` of :func:`nullspace.oblique_eraser` *before* it, ``M = M_surface E``, with the surface edit's
prototypes read through ``E`` (so it still forgets on the erased embeddings). ``E`` removes, from
the raw ``encode_image`` output, the difference between the mean embedding of each forgotten group
(a forgotten class for class requests, a forgotten domain for whole-domain requests) and the mean
embedding of the retained cells, and, when ``evidence`` covers every cell, the same difference of
the L2-normalised embeddings (:func:`eraser`). Every cell's embeddings are real images where
``evidence`` has some (forgotten or retained cells), else, data-free, visual prototypes
(:func:`directions.prototype_columns`, kept in the prototype cache). A linear probe only stops
reading the class when *both* means are close to the real ones, so depth needs evidence of every
cell (the README's evidence curve); prototypes and forgotten-cell evidence alone leave the probe
near 1. :func:`edit.unlearn_` refuses whole-domain requests in the deep mode (the eraser removes the
domain signature the surface edit forgets a domain by). ``E`` is d x d in the joint space, so the
whole deep edit is still one frozen map on the projection: it folds, restores, checkpoints and
exports like the surface edit.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from . import cache, nullspace
from .directions import cell_keys, cell_texts, class_texts, prototype_columns
from .encoders import encode_image, image_io
from .request import ForgetRequest
from .sites import Site, find_site


def check_evidence(evidence: Mapping | None, request: ForgetRequest, model) -> dict:
    """``evidence`` as ``{(class, domain): float tensor (N, 3, H, W)}``, validated against the request's
    label space (any of its cells, forgotten or retained) and the model's input size."""
    image_size = image_io(model)[0]
    if evidence is None:
        return {}
    if not isinstance(evidence, Mapping):
        raise TypeError(f"`evidence` must be a dict from a forgotten (class, domain) cell to a tensor of "
                        f"preprocessed images (N, 3, H, W), got {type(evidence).__name__}")
    out = {}
    for cell, x in evidence.items():
        cell = tuple(cell) if isinstance(cell, (tuple, list)) else cell
        if not (isinstance(cell, tuple) and len(cell) == 2 and cell[0] in request.classnames
                and cell[1] in request.domains):
            raise ValueError(f"`evidence` key {cell!r} is not a (class, domain) cell of this request's label space; "
                             f"expected a class of {list(request.classnames)} and a domain of {list(request.domains)}")
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


def cell_embeddings(model, tokenizer, request: ForgetRequest, *, n_prototypes: int, proto_steps: int,
                    proto_lr: float, seed: int, class_templates, evidence: Mapping | None = None,
                    progress: bool = True, site: Site | None = None) -> tuple[dict, dict]:
    """Raw output embeddings of every cell of ``request`` (``(N, d)`` float64, by cell), and statistics.
    ``site``: the image tower's :class:`~lightning_unlearn.sites.Site` when already found (else looked up).

    Prototypes: ``n_prototypes`` per cell (forgotten and retained), synthesised towards the cell's
    mean prompt, every cell of the label space in one canonical order, so they come from the
    current :mod:`cache` for any later request on the same model and label space. A cell with
    ``evidence`` (forgotten or retained) uses its real images instead.
    """
    evidence = check_evidence(evidence, request, model)
    cells = [(c, d) for c in request.classnames for d in request.domains]
    T = class_texts(model, tokenizer, request.classnames, class_templates)
    cols, s = prototype_columns(model, find_site(model, "image") if site is None else site, "joint",
                                cell_texts(model, tokenizer, cells, request.templates),
                                cell_keys(cells, request.templates), T,
                                cache.settings_key(classes=request.classnames, templates=class_templates),
                                n_prototypes=n_prototypes, proto_steps=proto_steps, proto_lr=proto_lr, seed=seed,
                                normalise=False, progress=progress)
    H = cols.T.double().view(len(cells), n_prototypes, -1)
    out = {cell: H[i] for i, cell in enumerate(cells)} | {cell: _encode(model, x) for cell, x in evidence.items()}
    return out, {"eraser_prototypes": s["n_prototypes"], "eraser_prototypes_reused": s["prototypes_reused"],
                 "eraser_prototype_seconds": s["prototype_seconds"],
                 "evidence_images": {f"{c}|{d}": int(x.shape[0]) for (c, d), x in evidence.items()}}


def group_gaps(means: Mapping, request: ForgetRequest) -> torch.Tensor:
    """One column per forgotten group (class, or domain for whole-domain requests): the group's mean
    minus the mean of the retained cells (``means``: one vector per cell)."""
    forget = list(request.forget_cells)
    rest = torch.stack([means[c] for c in request.retain_cells]).mean(0)
    by = 1 if request.paradigm == "domain" else 0
    groups = list(dict.fromkeys(cell[by] for cell in forget))
    return torch.stack([torch.stack([means[c] for c in forget if c[by] == g]).mean(0) - rest for g in groups], 1)


def eraser(embeddings: Mapping, request: ForgetRequest, normalised: bool = False) -> torch.Tensor:
    """``E`` (d x d, float64) from the raw output embeddings of every cell (``(N, d)``, or one ``(d,)``
    mean, each): it removes, per forgotten group, the gap of the raw means. With ``normalised`` it
    also removes the gap of the L2-normalised embeddings left after that first direction: the
    forgotten images' norms differ from the rest's, so after normalisation (how CLIP embeddings are
    used) a probe would still read the class. One round suffices (more cost retained zero-shot
    accuracy); it is only worth its cost when the embeddings are real images (measured: from
    prototypes it costs retained and colour accuracy and reaches no depth).
    """
    if normalised and any(h.dim() != 2 for h in embeddings.values()):
        raise ValueError("`normalised=True` needs the embeddings of every cell as (N, d) images: the mean of the "
                         "normalised embeddings is not the normalised mean; pass the images' embeddings")
    H = {c: torch.atleast_2d(h) for c, h in embeddings.items()}
    U = group_gaps({c: h.mean(0) for c, h in H.items()}, request)
    if normalised:
        E1 = nullspace.oblique_eraser(U)
        U = torch.cat([U, group_gaps({c: F.normalize(h @ E1.T, dim=-1).mean(0) for c, h in H.items()}, request)], 1)
    return nullspace.oblique_eraser(U)


def output_eraser(model, tokenizer, request: ForgetRequest, evidence: Mapping | None = None, progress: bool = True,
                  **kw) -> tuple[torch.Tensor, dict]:
    """The eraser ``E`` (d x d, float32) of the deep mode and its statistics (see the module docstring
    and :func:`cell_embeddings` for ``kw``)."""
    H, stats = cell_embeddings(model, tokenizer, request, evidence=evidence, progress=progress, **kw)
    everywhere = len(stats["evidence_images"]) == len(H)  # real images of every cell
    E = eraser(H, request, normalised=everywhere)
    return E.float(), stats | {"eraser_rank": int(torch.linalg.matrix_rank(torch.eye(len(E), dtype=E.dtype) - E)),
                               "eraser_normalised": everywhere}
