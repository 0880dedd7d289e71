"""The functional core: compute an edit, inject it as a frozen linear layer, fold it, restore.

The edit ``M`` (a d x d map in the joint space, or D x D on the pooled features) lives in a frozen
``nn.Linear(n, n, bias=False)`` registered as a ``torch.nn.utils.parametrize`` parametrization of
the tower's projection weight: the forward pass sees ``W_img @ M^T`` exactly as if the layer sat
right after the projection, no ``encode_*`` method is patched, edits compose in a chain, and the
original weight stays untouched in ``parametrizations.<name>.original`` for an exact restore.

Edits are named: :func:`edits` lists the names, :func:`remove_edit_` removes one, :func:`restore_`
all, :func:`unlearned` is a context manager. One return convention: the in-place functions (trailing
underscore) return what they did, never the model: :func:`unlearn_` the :class:`Unlearned` record,
:func:`inject_` the edit's name, :func:`remove_edit_` / :func:`restore_` the names removed,
:func:`fold_` the original weights it replaced.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from . import deep, nullspace
from .cache import CURRENT, Cache, chosen
from .compose import (  # noqa: F401 - importable from here
    _all_or_nothing,
    chain,
    check_after,
    checkerboard,
    composition_refusal,
    dependents,
    globally_forgotten,
    inject_,
    place,
    remove_edit_,
    suspended,
)
from .config import AUTO_PROTO_STEPS, AUTO_RETAIN_CELL_WEIGHT, UnlearnConfig  # noqa: F401 - importable from here
from .directions import build, build_constraints, cell_texts
from .errors import EditError
from .request import ForgetRequest
from .sites import Site, tower_sites
from .stack import (  # noqa: F401 - importable from here
    ProjectorEdit,
    edit_modules,
    edits,
    fold_,
    fresh_name,
    restore_,
    stacks,
)
from .state import map_digest, provenance


@dataclass
class Unlearned:
    """What :func:`unlearn_` returns: the maps, their ranks, the request and timings.

    Attributes:
        request: the :class:`~lightning_unlearn.ForgetRequest` that was forgotten.
        config: the :class:`UnlearnConfig` the edit was computed with (overrides applied).
        maps: ``{tower: M}``, the d x d float32 map injected on each edited tower.
        ranks: ``{tower: rank}`` of the removed subspace (projector solver) or of the constraints.
        stats: per-tower solver statistics (constraint counts, ranks of the text stage).
        seconds: wall time of the computation, injection included.
        infos: ``{tower: provenance}`` attached to each injected edit (request, config, ids, digests).
        name: the injected edit's name (see :func:`edits`, :func:`remove_edit_`).
    """
    request: ForgetRequest
    config: UnlearnConfig
    maps: dict  # tower -> M (float32, n x n)
    ranks: dict  # tower -> rank of the removed subspace (projector solver)
    stats: dict = field(default_factory=dict)
    seconds: float = 0.0
    infos: dict = field(default_factory=dict)  # tower -> the provenance attached to its injected edit
    name: str = ""  # the injected edit's name (see :func:`edits`, :func:`remove_edit_`)
    check: object = None  # the self-check on held-out prototypes (selfcheck.Check), when it ran; its
    # seconds are its own, not in ``seconds``, unless correction rounds ran (then it is part of the edit)


def solve(F: torch.Tensor, R: torch.Tensor, cfg: UnlearnConfig) -> tuple[torch.Tensor, int]:
    """The map ``M`` and the rank of what it removes, from forget / retain columns."""
    if cfg.solver == "projector":
        U = nullspace.nullspace_basis(F, R, cfg.energy, cfg.retain_energy)
        return nullspace.projector(U, cfg.alpha).float(), U.shape[1]
    return nullspace.regularized_edit(F, R, cfg.lam, cfg.mu, cfg.alpha)


def compute_map(model, tokenizer, request: ForgetRequest, site: Site, cfg: UnlearnConfig,
                progress: bool = True, pre: torch.Tensor | None = None,
                avoid: tuple = ()) -> tuple[torch.Tensor, int, dict]:
    """The edit ``M`` (float32) for one tower, the rank of its change, and statistics. ``pre``: a map
    applied first (the deep mode's eraser): ``M = M_surface pre``, the prototypes of the surface
    edit read through ``pre``, and ``alpha`` scaling the surface part only. ``avoid``: classes a
    whole-domain edit must not send its images to (forgotten by other edits).

    The default "two-sided" solver has two stages, ``M = M2 M1``. ``M1`` (``text_first``) is the
    regularised map of 2512.14137 on text alone: it takes the forgotten cells' own prompt
    directions out of the image embeddings and protects the kept classes (``lam``, ``mu``).
    ``M2`` is the two-sided map of :func:`nullspace.two_sided_map`: kept classes and attribute
    prompts keep their scores, forgotten prompts score like the kept average, and the visual
    prototypes, read through ``M1``, go where :func:`directions.build_constraints` sends them.
    """
    common = dict(multimodal=cfg.method == "multimodal", class_templates=cfg.class_templates,
                  n_prototypes=cfg.n_prototypes, proto_steps=cfg.prototype_steps(request.paradigm),
                  proto_lr=cfg.proto_lr, seed=cfg.seed, proto_start=cfg.proto_start, progress=progress)
    if cfg.solver != "two-sided":
        d = build(model, tokenizer, request, site, cfg.site, protect=cfg.protect, center=cfg.center, **common)
        M, rank = solve(d.F, d.R, cfg)
        return (M, rank, d.stats) if pre is None else _after(M.double(), pre, d.stats)
    M1, stats = None, {}  # stage 1 needs a kept class to protect: whole-domain requests have none
    if cfg.text_first and request.kept_classes:
        d = build(model, tokenizer, request, site, cfg.site, protect="classes", center=True,
                  **(common | {"multimodal": False}))
        M1, _ = nullspace.regularized_edit(d.F, d.R, cfg.lam, cfg.mu)  # the whole stage-1 map (alpha 1)
        stats["text_first_rank"] = d.F.shape[1]
    elif cfg.text_first:  # recorded, not skipped silently (see config.TwoSided)
        stats["text_first_skipped"] = "no kept class to protect (whole-domain request)"
    through = None if pre is None else pre.double()  # what the prototypes go through: pre, then M1
    if M1 is not None:
        through = M1.double() if through is None else M1.double() @ through
    t = build_constraints(model, tokenizer, request, site, cfg.site, text_weight=cfg.text_weight,
                          image_weight=cfg.image_weight, margin=cfg.margin,
                          sink_margin=cfg.sink_margin, retain_prompts=cfg.retain_prompts, pre=through, avoid=avoid,
                          **common)

    def finish(M2: torch.Tensor) -> torch.Tensor:  # the stage-2 map -> the whole map, alpha applied (before pre)
        M = M2 if M1 is None else M2 @ M1.double()
        eye = torch.eye(M.shape[0], dtype=M.dtype)
        return eye + cfg.alpha * (M - eye)
    w = cfg.cell_weight(request)
    if w > 0 and cfg.site == "joint" and site.tower == "image":  # retained cells' prompt directions stay put
        R = cell_texts(model, tokenizer, list(request.retain_cells), request.templates).T.cpu().double()
        R = R if through is None else torch.nn.functional.normalize(through.double() @ R, dim=0)
        t.V, t.Vt = torch.cat([t.V.double(), w ** 0.5 * R], 1), torch.cat([t.Vt.double(), w ** 0.5 * R], 1)
        stats["n_retain_cell_constraints"] = R.shape[1]
    M = finish(nullspace.two_sided_map(t.A, t.B, t.V, t.Vt))
    if cfg.rounds and cfg.corrects() and site.tower == "image":  # see correction.correct
        from .correction import correct
        M, correction = correct(model, tokenizer, request, cfg, t, M, finish, through, pre, progress=progress,
                                site=site)
        stats["correction"] = correction
    return _after(M, pre, stats | t.stats)


def _after(M: torch.Tensor, pre: torch.Tensor | None, stats: dict) -> tuple[torch.Tensor, int, dict]:
    """``M pre`` (float32), the rank of its change and ``stats``."""
    M = M if pre is None else M @ pre.double()
    return M.float(), int(torch.linalg.matrix_rank(M - torch.eye(M.shape[0], dtype=M.dtype), rtol=1e-6)), stats


def check_mode(cfg: UnlearnConfig, request: ForgetRequest, evidence=None) -> None:
    """Refuse the combinations of config and request that cannot work (measured), and ``evidence``
    unless ``cfg`` is the deep mode (the only one that reads it)."""
    if cfg.method == "text" and cfg.solver == "two-sided" and request.paradigm == "domain":
        raise ValueError(f"method='text' with solver='two-sided' cannot forget whole domains ({request.describe()}): "
                         "from text prompts alone its map comes out as the identity (measured: it changes nothing). "
                         "Use method='multimodal' (the default), which also moves the domain's visual prototypes")
    if cfg.depth == "deep" and request.paradigm == "domain":
        raise ValueError(f"depth='deep' cannot forget whole domains ({request.describe()}): its eraser removes the "
                         "domain's own signature from the image embedding, which is what the surface edit forgets the "
                         "domain by (measured: zero-shot on the domain back to 0.58 data-free and 0.95-1.00 with real "
                         "images, retained accuracy down to 0.86). Use depth='shallow' for whole domains")
    if evidence is not None and cfg.depth != "deep":
        raise ValueError("`evidence` is read by the deep mode only; pass depth='deep' with it (or drop evidence)")


def check_model(model: nn.Module) -> None:
    """Raise :class:`EditError` if ``model`` has no usable weights: some on the meta device (built
    without memory, never loaded), or NaN / inf values (a diverged or damaged checkpoint)."""
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise EditError(f"the model has {len(meta)} tensor(s) on the meta device (e.g. `{meta[0]}`): it was built "
                        "without weights; load them first (model.to_empty(device='cpu') then load_state_dict, or "
                        "open_clip.create_model_and_transforms(..., pretrained=...))")
    with torch.no_grad():
        for name, t in model.named_parameters():  # a NaN or inf makes the sum non-finite: one pass, no mask
            if t.is_floating_point() and not torch.isfinite(t.sum(dtype=torch.float32)) \
                    and not torch.isfinite(t).all():  # (a finite tensor whose sum overflowed is fine)
                raise EditError(f"the model's weight `{name}` has {int((~torch.isfinite(t)).sum())} NaN or inf "
                                "value(s): these weights are damaged or diverged, and no edit can be computed from "
                                "them; reload the original checkpoint")


def unlearn_(model: nn.Module, tokenizer, request: ForgetRequest, config: UnlearnConfig | None = None, *,
             compose: bool = False, name: str | None = None, progress: bool = True, evidence: dict | None = None,
             check=None, cache: Cache | None | str = CURRENT, **overrides) -> Unlearned:
    """Compute the edit for ``request`` and inject it in place under ``name`` (default: ``forget-``
    and the request digest); see :class:`UnlearnConfig` for the options; keyword ``overrides``
    replace config fields, e.g. ``alpha=0.5``. Returns the :class:`Unlearned` record (``.name``).

    ``evidence`` (``depth="deep"`` only): ``{(class, domain): preprocessed images (N, 3, H, W)}`` for
    any cells of the label space; the eraser then reads those cells' mean output from real images
    instead of prototypes (a linear probe stops reading the class only with evidence of every cell).

    ``check``: the self-check (:mod:`~lightning_unlearn.selfcheck`) of the edit on held-out
    prototypes, in ``Unlearned.check``: True, False, or a :class:`~lightning_unlearn.selfcheck.CheckThresholds`
    (run, with those thresholds); None (the default) runs it when :data:`CHECK_BY_DEFAULT` or when
    correction ``rounds`` ran (they check the result anyway).

    ``cache``: where prompt embeddings and prototypes are reused from and stored
    (:mod:`~lightning_unlearn.cache`): ``"current"`` (the default) the cache in use, i.e. the
    process-wide ``cache.DEFAULT`` unless a ``cache.use`` block chose another; a ``cache.Cache`` for
    this call (e.g. one per thread or per model); None: no caching.

    An already edited model raises unless ``compose=True``: the new edit is then computed on the
    edited model and appended, so both requests stay forgotten; :func:`remove_edit_` removes one
    edit by name, :func:`restore_` all of them.

    Args:
        model: an open_clip CLIP model, or a transformers ``CLIPModel`` / ``SiglipModel`` (edited in place).
        tokenizer: ``list[str] -> LongTensor [n, L]`` (``open_clip.get_tokenizer(name)``, or :func:`hf_tokenizer`).
        request: what to forget, in which label space.
        config: the settings; ``None`` = the defaults, updated by ``overrides``.

    Returns:
        The :class:`Unlearned` record of the injected edit.

    Raises:
        TypeError: ``request`` is not a :class:`~lightning_unlearn.ForgetRequest`, or ``cache`` is not a
            ``cache.Cache``, None or ``"current"``.
        ValueError: an invalid config or override, ``evidence`` outside the label space or without
            ``depth="deep"``, a deep edit of whole domains, ``method="text"`` on whole domains.
        EditError: the model already carries edits and ``compose`` is False, it has NaN / inf or
            meta-device weights, or the computed edit is the identity.
        UnsupportedModelError: the model has no tower this library can edit.
    """
    if not isinstance(request, ForgetRequest):
        raise TypeError(f"`request` must be a ForgetRequest, got {type(request).__name__}")
    cfg = replace(config or UnlearnConfig(), **overrides)
    check_mode(cfg, request, evidence)
    check_model(model)
    existing = edits(model)
    if existing and not compose:
        raise EditError(f"the model already carries {len(existing)} edit(s) ({existing}); "
                        "pass compose=True to add this request on top, or call restore_(model) first")
    if name is not None and (not isinstance(name, str) or not name or name in existing):
        raise ValueError(f"`name`={name!r} must be a non-empty string no edit of the model carries yet "
                         f"(it carries {existing}); pick another name or leave it out for a generated one")
    name = name or fresh_name(model, f"forget-{request.digest()[:8]}")
    t0 = time.perf_counter()
    sites = tower_sites(model, cfg.towers, strict=True)  # once per call; fails early on unsupported models
    deep.check_evidence(evidence, request, model)  # and on bad evidence
    info = provenance(request, cfg)
    refusal = composition_refusal(model, request, info)
    if refusal:
        raise EditError(refusal)
    positions = {tower: place(model, site, info) for tower, site in sites.items()}  # computed on what lies below it
    was_training = model.training
    model.eval()
    try:
        with suspended(model, positions, sites), chosen(cache):
            maps, ranks, stats = _compute_maps(model, tokenizer, request, cfg, sites, evidence, progress)
            result_check = _self_check(model, tokenizer, request, maps, cfg, stats, check, progress, sites.get("image"))
    finally:
        model.train(was_training)
    infos = _edit_infos(model, info, stats, evidence, sites, positions, maps)
    with _all_or_nothing(model, name):  # every tower or none
        for tower, M in maps.items():
            inject_(model, M, tower, cfg.site, infos[tower], name=name, position=positions[tower],
                    resolved=sites[tower])
        extra = result_check.seconds if result_check is not None and result_check.extra.get("standalone") else 0.0
        return Unlearned(request, cfg, maps, ranks, stats, time.perf_counter() - t0 - extra, infos=infos, name=name,
                         check=result_check)


def _compute_maps(model, tokenizer, request: ForgetRequest, cfg: UnlearnConfig, sites: dict[str, Site],
                  evidence, progress: bool) -> tuple[dict, dict, dict]:
    """Each tower's map, rank and statistics on the model as it is (the deep mode's eraser first, on the
    image tower's raw output; the surface edit is computed after it). Raises :class:`EditError` for a
    map that is the identity."""
    avoid = globally_forgotten(model)
    E, deep_stats = None, {}
    if cfg.depth == "deep":
        E, deep_stats = deep.output_eraser(
            model, tokenizer, request, n_prototypes=cfg.deep_prototypes,
            proto_steps=cfg.prototype_steps("eraser"), proto_lr=cfg.proto_lr, seed=cfg.seed,
            class_templates=cfg.class_templates, evidence=evidence, progress=progress, site=sites.get("image"))
    maps, ranks, stats = {}, {}, {}
    for tower, site in sites.items():  # prompts and prototypes go through cache.current()
        maps[tower], ranks[tower], stats[tower] = compute_map(
            model, tokenizer, request, site, cfg, progress, pre=E if tower == "image" else None, avoid=avoid)
        change = (maps[tower] - torch.eye(maps[tower].shape[0])).abs().max().item()
        if cfg.alpha > 0 and change < 1e-6 * cfg.alpha:  # the full (alpha = 1) map is the identity
            raise EditError(f"the {tower} edit computed for this request is the identity (largest change "
                            f"{change:.1e} at alpha={cfg.alpha}): it would forget nothing. With "
                            f"method={cfg.method!r}, solver={cfg.solver!r} the request gives no direction to "
                            "remove; try method='multimodal' or solver='projector'")
    if E is not None:
        stats["image"] |= deep_stats
        if deep_stats["eraser_normalised"] and "text" not in cfg.towers:
            warnings.warn(
                "with real images of every cell the deep edit reaches depth, but the erased images sit where "
                "the forgotten prompt ties with the others: measured zero-shot on the forgotten cells "
                "0.05-0.21 for global and 0.20-0.30 for domain-specific requests (0.00 for the shallow edit). For a "
                "global request add towers=('image', 'text'), which moves the forgotten prompt too "
                "(measured 0.00-0.03)", UserWarning, stacklevel=3)
    return maps, ranks, stats


def _edit_infos(model, info: dict, stats: dict, evidence, sites: dict[str, Site], positions: dict[str, int],
                maps: dict) -> dict[str, dict]:
    """Each tower's provenance for its injected edit: ``info`` with the evidence and the sink, the maps
    it was computed on top of (``after``: it is only re-applied on them) and its own map's digest."""
    if evidence is not None:
        info["evidence"] = stats["image"]["evidence_images"]
    if "sink" in stats[next(iter(stats))]:
        info["sink"] = stats[next(iter(stats))]["sink"]
    return {tower: info | {"after": chain(model, sites[tower])[:positions[tower]], "map": map_digest(M)}
            for tower, M in maps.items()}


#: Whether :func:`unlearn_` runs the self-check when ``check`` is None and no correction round ran
#: (measured: benchmarks/self_check.py; a check set costs prototype synthesis of every cell).
CHECK_BY_DEFAULT = False


def _self_check(model, tokenizer, request, maps, cfg, stats, check, progress, site: Site | None = None):
    """The edit's :class:`~lightning_unlearn.selfcheck.Check` (None when not asked for): the one the
    correction rounds ended with if they ran, else a fresh one (before the edit is injected), on the
    image tower's ``site`` when already found."""
    from .selfcheck import CheckThresholds, judge, self_check
    if check is not None and not isinstance(check, (bool, CheckThresholds)):
        raise TypeError(f"`check`={check!r} must be True, False, None or a CheckThresholds")
    thresholds = check if isinstance(check, CheckThresholds) else None
    ran = stats.get("image", {}).get("correction", {}).pop("check", None)
    if check is False or (check is None and ran is None and not CHECK_BY_DEFAULT):
        return None
    if ran is not None:
        return judge(ran, request, thresholds) if thresholds else ran
    result = self_check(model, tokenizer, request, maps, cfg, thresholds=thresholds, progress=progress, site=site)
    if result is not None:  # its time is not the edit's (Unlearned.seconds)
        result.extra["standalone"] = True
    return result


@contextlib.contextmanager
def unlearned(model: nn.Module, tokenizer, request: ForgetRequest, config: UnlearnConfig | None = None, **kwargs):
    """``with unlearned(model, tokenizer, request) as u:`` runs the block on the edited model and
    removes this edit on exit, also on an exception (``kwargs`` go to :func:`unlearn_`). Yields the
    :class:`Unlearned` record; raises what :func:`unlearn_` raises."""
    u = unlearn_(model, tokenizer, request, config, **kwargs)
    try:
        yield u
    finally:
        remove_edit_(model, u.name)
