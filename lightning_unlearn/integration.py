"""What the callback and ``CLIPUnlearning`` share, without Lightning: config and request coercion,
finding the open_clip model on a module, strategy checks, and computing the edit on a strategy's
device (the prototype synthesis shared by the ranks, rank 0's maps broadcast to every rank), the
checks of their common arguments (``check_tokenizer``, ``check_flags``) and the log line of a
computed edit (``edit_summary``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import torch
from torch import nn

from . import sharding
from .config import KEYWORDS
from .edit import UnlearnConfig, Unlearned, unlearn_
from .errors import EditError, UnlearnError, check_fields
from .request import ForgetRequest
from .sites import is_clip, tower_sites
from .stack import ProjectorEdit, edit_modules, edits, restore_, site_stacks
from .state import info_edit_id, map_digest

#: Strategies that shard or flatten parameters: the parametrized projection cannot live there.
SHARDED_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy", "XLAFSDPStrategy")


class UnsupportedStrategyError(UnlearnError, ValueError):
    """The Trainer's strategy cannot carry a parametrized edit."""


def make_config(config: UnlearnConfig | Mapping | None = None, **overrides) -> UnlearnConfig:
    """An :class:`UnlearnConfig` from a config, a dict of its flat settings (:data:`config.KEYWORDS`), or
    ``None`` (defaults), with ``overrides``; unknown names raise a ``ValueError`` listing the valid ones."""
    if config is None:
        config = UnlearnConfig()
    elif isinstance(config, Mapping):
        overrides = {**config, **overrides}
        config = UnlearnConfig()
    elif not isinstance(config, UnlearnConfig):
        raise TypeError(f"`config` must be an UnlearnConfig, a dict of its fields or None, got {type(config).__name__}")
    check_fields(overrides, list(KEYWORDS), "UnlearnConfig field(s)")
    return dataclasses.replace(config, **overrides) if overrides else config


def make_request(request: ForgetRequest | Mapping) -> ForgetRequest:
    if isinstance(request, ForgetRequest):
        return request
    if isinstance(request, Mapping):
        return ForgetRequest.from_dict(dict(request))
    raise TypeError(f"`request` must be a ForgetRequest or a dict from ForgetRequest.to_dict(), "
                    f"got {type(request).__name__}")


def carried_edit_ids(model: nn.Module) -> list[str | None]:
    """The :func:`~lightning_unlearn.state.edit_id` of every edit ``model`` carries, in application order."""
    return [info_edit_id(e.info) for _, e in edit_modules(model)]


def find_clip(module: nn.Module, attr: str | None = None) -> tuple[str, nn.Module]:
    """(attribute path, model) of the CLIP model held by ``module``: the one at ``attr`` (e.g.
    ``"clip"`` or ``"backbone.model"``), else the only CLIP model among its submodules (open_clip
    CLIP / CustomTextCLIP / CoCa, transformers CLIPModel / SiglipModel; ``module`` itself counts,
    with path ``""``)."""
    found = [(name, m) for name, m in module.named_modules() if is_clip(m)]
    names = [n or "<the module itself>" for n, _ in found]
    owner = type(module).__name__
    if attr is not None:
        obj = module
        for i, part in enumerate(attr.split(".")):
            if not hasattr(obj, part):
                where = ".".join(attr.split(".")[:i]) or owner
                raise ValueError(f"`model_attr`={attr!r}: {where} has no attribute {part!r}; open_clip models found "
                                 f"in {owner}: {names or 'none'}")
            obj = getattr(obj, part)
        if not is_clip(obj):
            raise TypeError(f"`model_attr`={attr!r} is a {type(obj).__name__}, not a CLIP model (open_clip CLIP, "
                            f"CustomTextCLIP, CoCa; transformers CLIPModel, SiglipModel); CLIP models found in "
                            f"{owner}: {names or 'none'}")
        return attr, obj
    if not found:
        raise ValueError(f"no CLIP model (open_clip CLIP / CustomTextCLIP / CoCa, transformers CLIPModel / "
                         f"SiglipModel) found in {owner}: keep one as an attribute "
                         "(e.g. `self.clip = open_clip.create_model(...)`) or pass `model_attr='path.to.model'`")
    if len(found) > 1:
        raise ValueError(f"{len(found)} open_clip models found in {owner}: {names}; pass `model_attr=` one of them")
    return found[0]


def check_strategy(strategy: Any, who: str, allow_fork: bool = False) -> None:
    """Raise :class:`UnsupportedStrategyError` for strategies that cannot carry the edit."""
    kinds = {c.__name__ for c in type(strategy).__mro__}
    sharded = sorted(kinds & set(SHARDED_STRATEGIES))
    if sharded:
        raise UnsupportedStrategyError(
            f"{who} does not support `strategy`={type(strategy).__name__}: sharded strategies (FSDP, DeepSpeed, "
            "model parallel) flatten or partition the projection weight that the edit parametrizes. Use "
            "strategy='ddp' (or a single device); the edit is a small frozen d x d map, the model is not sharded")
    launcher = getattr(strategy, "launcher", None)
    method = getattr(launcher, "_start_method", None)
    if type(launcher).__name__ == "_MultiProcessingLauncher" and (method != "fork" or not allow_fork):
        name = {"spawn": "ddp_spawn", "fork": "ddp_fork / ddp_notebook"}.get(method, f"start method {method!r}")
        why = ("pickles the LightningModule into each process, and torch parametrized modules (the injected edit) "
               "cannot be pickled" if method != "fork" else
               "edits the model in forked processes and loads rank 0's weights back into the main process's "
               "un-edited model, which cannot receive them")
        raise UnsupportedStrategyError(f"{who} does not support `strategy`={name!r}: it {why}. Use strategy='ddp', "
                                       "which launches each rank as a subprocess running your script")


def tower_edits(model: nn.Module, config: UnlearnConfig) -> dict[str, list[ProjectorEdit]]:
    """The last injected edit of every tensor each tower's edit changes (weight, and bias at "joint")."""
    return {tower: [st.edits[-1] for st in site_stacks(site, config.site) if st.edits]
            for tower, site in tower_sites(model, config.towers, strict=True).items()}


def compute_edit_(model: nn.Module, tokenizer: Callable, request: ForgetRequest, config: UnlearnConfig, *,
                  strategy: Any = None, compose: bool = False, progress: bool = False,
                  evidence: Mapping | None = None, check=None) -> Unlearned:
    """:func:`unlearn_` on the strategy's device. Under a multi-process strategy the ranks share the
    prototype synthesis (:mod:`~lightning_unlearn.sharding`: each synthesises its round-robin share
    of every batch's images, the columns are all-gathered), every rank solves the same system, and
    all take rank 0's maps, so all ranks carry bit-identical projectors. If any rank fails, every
    rank raises (the others with rank 0's message, or the failing rank's number) instead of waiting
    in a collective. Only the strategy's own collectives are used (``reduce_boolean_decision``,
    ``all_gather``, ``broadcast``)."""
    distributed = strategy is not None and getattr(strategy, "world_size", 1) > 1
    error, result, before, peer = None, None, edits(model), False
    try:
        if strategy is not None:
            model.to(strategy.root_device)
        with sharding.use(sharding.Shard.from_strategy(strategy) if distributed else None):
            result = unlearn_(model, tokenizer, request, config, compose=compose, progress=progress,
                              evidence=evidence, check=check)
    except sharding.PeerFailedError as e:  # another rank failed and voted; this one has voted too
        error, peer = e, True
    except Exception as e:  # noqa: BLE001 - re-raised below, after the other ranks learn of it
        if not distributed:
            raise
        error = e
    if not distributed:
        return result
    if peer or strategy.reduce_boolean_decision(error is not None, all=False):  # True if any rank failed
        first = strategy.broadcast(None if error is None or peer else f"{type(error).__name__}: {error}", src=0)
        if result is not None and not before:  # this rank injected the edit: take it out, the model is as it was
            restore_(model)
        if error is not None and not peer:
            raise error
        raise EditError(f"computing the edit failed on another rank (this is rank {strategy.global_rank}): "
                        + (first if first is not None else "rank 0 did not fail, see the failing rank's log"))
    maps = strategy.broadcast({k: v.detach().cpu() for k, v in result.maps.items()}, src=0)
    with torch.no_grad():
        for tower, tower_maps in tower_edits(model, config).items():
            for e in tower_maps:
                e.P.weight.copy_(maps[tower].to(e.P.weight))
                e.info["map"] = map_digest(maps[tower])  # the map's identity follows the map
            result.infos[tower]["map"] = map_digest(maps[tower])
    result.maps = maps
    return result


def edit_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [e.P.weight for _, e in edit_modules(model)]


def check_metrics(check) -> dict:
    """The self-check (:class:`~lightning_unlearn.selfcheck.Check`) as scalars to log: pass (1 / 0),
    predicted forget / retain accuracy after, the worst forgotten cell's accuracy and the worst
    retained cell's drop in points (keys that have no value are left out)."""
    if check is None:
        return {}
    out = {"passed": float(check.passed), "forget_acc_after": check.forget_acc_after,
           "retain_acc_after": check.retain_acc_after,
           "worst_forget_cell_acc": check.worst_forget_cell and check.worst_forget_cell["acc"],
           "worst_retain_cell_drop": check.worst_retain_cell and check.worst_retain_cell["drop_points"]}
    return {f"selfcheck/{k}": float(v) for k, v in out.items() if v is not None}


def check_tokenizer(tokenizer: Callable | None) -> None:
    """Raise ``TypeError`` for a ``tokenizer`` that is neither None nor callable."""
    if tokenizer is not None and not callable(tokenizer):
        raise TypeError(f"`tokenizer` must be callable (e.g. open_clip.get_tokenizer(name)), got "
                        f"{type(tokenizer).__name__}")


def check_flags(**flags) -> None:
    """Raise ``TypeError`` for a flag (keyword argument) that is not ``True`` or ``False``."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"`{name}`={value!r} must be True or False")


def edit_summary(who: str, request: ForgetRequest, config: UnlearnConfig, result: Unlearned,
                 edit_id: str | None = None) -> str:
    """The log line of a computed edit: the request, the edited towers, method, solver, ranks and
    seconds (and ``edit_id`` when given), then the self-check's summary when it ran."""
    tail = f", edit id {edit_id}" if edit_id else ""
    return (f"{who}: {request.describe()}; edited {list(result.maps)} ({config.method}, {config.solver}, "
            f"ranks {result.ranks}, {result.seconds:.2f} s{tail})"
            + (f"\n{result.check.summary()}" if result.check is not None else ""))
