"""``NullspaceUnlearning``: add training-free unlearning to any Trainer whose LightningModule holds an
open_clip model.

The callback finds the CLIP model on the module, computes the edit for its :class:`ForgetRequest` in
``setup`` (on every rank, with the same seed, then rank 0's maps are broadcast so all ranks hold the
same projector) and injects it as a frozen parametrization of the projection weight. Its state
(request, config and a fingerprint of both) is saved in checkpoints, so resuming never applies the
edit twice and a checkpoint made for another request is refused.

The helpers below (``edit_fingerprint``, ``find_clip``, ``check_strategy``, ``compute_edit_``) work
without a Trainer and are shared with :class:`~lightning_unlearn.module.CLIPUnlearning`.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
from typing import Any, Callable, Mapping

import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torch.nn.utils import parametrize

from .edit import ProjectorEdit, UnlearnConfig, Unlearned, edits, restore_, unlearn_
from .request import ForgetRequest, RequestError
from .targets import find_site, is_clip

_ATTR = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
#: Strategies that shard or flatten parameters: the parametrized projection cannot live there.
SHARDED_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy", "XLAFSDPStrategy")


class UnsupportedStrategyError(ValueError):
    """The Trainer's strategy cannot carry a parametrized edit."""


# ----------------------------------------------------------------------------------------------
# Helpers usable without a Trainer
# ----------------------------------------------------------------------------------------------

def config_dict(config: UnlearnConfig) -> dict:
    """``config`` as plain JSON data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def make_config(config: UnlearnConfig | Mapping | None = None, **overrides) -> UnlearnConfig:
    """An :class:`UnlearnConfig` from a config, a dict of its fields, or ``None`` (defaults), with
    ``overrides``; unknown field names raise a ``ValueError`` listing the valid ones."""
    if config is None:
        config = UnlearnConfig()
    elif isinstance(config, Mapping):
        overrides = {**config, **overrides}
        config = UnlearnConfig()
    elif not isinstance(config, UnlearnConfig):
        raise TypeError(f"`config` must be an UnlearnConfig, a dict of its fields or None, got {type(config).__name__}")
    fields = [f.name for f in dataclasses.fields(UnlearnConfig)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        hints = {u: difflib.get_close_matches(u, fields, n=1) for u in unknown}
        hint = "; ".join(f"{u!r} -> did you mean {h[0]!r}?" for u, h in hints.items() if h)
        raise ValueError(f"unknown UnlearnConfig field(s) {unknown}{' (' + hint + ')' if hint else ''}; "
                         f"valid fields are {fields}")
    return dataclasses.replace(config, **overrides) if overrides else config


def make_request(request: ForgetRequest | Mapping) -> ForgetRequest:
    if isinstance(request, ForgetRequest):
        return request
    if isinstance(request, Mapping):
        return ForgetRequest.from_dict(dict(request))
    raise TypeError(f"`request` must be a ForgetRequest or a dict from ForgetRequest.to_dict(), "
                    f"got {type(request).__name__}")


def edit_fingerprint(request: ForgetRequest | Mapping, config: UnlearnConfig | Mapping) -> str:
    """A short stable hash of what the edit depends on: the request and the config.

    Computed the same way from objects or from the ``info`` that :func:`unlearn_` stores in each
    injected :class:`ProjectorEdit` (``{"request": ..., "config": ...}``)."""
    r = request.to_dict() if isinstance(request, ForgetRequest) else dict(request)
    c = config_dict(config) if isinstance(config, UnlearnConfig) else dict(config)
    payload = json.dumps({"request": r, "config": c}, sort_keys=True, default=list)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def info_fingerprint(info: Mapping) -> str | None:
    """The :func:`edit_fingerprint` of an injected edit's ``info`` (``None`` if it has none)."""
    if "request" not in info or "config" not in info:
        return None
    return edit_fingerprint(info["request"], info["config"])


def carried_fingerprints(model: nn.Module) -> list[str | None]:
    """Fingerprint of every edit ``model`` carries, in application order."""
    return [info_fingerprint(e.info) for _, e in edits(model)]


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
    out = {}
    for tower in config.towers:
        site = find_site(model, tower)
        names = [site.weight] + ([site.bias] if site.bias is not None and config.site == "joint" else [])
        out[tower] = [getattr(site.module.parametrizations, n)[-1] for n in names
                      if parametrize.is_parametrized(site.module, n)]
    return out


def compute_edit_(model: nn.Module, tokenizer: Callable, request: ForgetRequest, config: UnlearnConfig, *,
                  strategy: Any = None, compose: bool = False, progress: bool = False) -> Unlearned:
    """:func:`unlearn_` on the strategy's device; under a multi-process strategy every rank computes
    (same seed) and then takes rank 0's maps, so all ranks carry bit-identical projectors."""
    if strategy is not None:
        model.to(strategy.root_device)
    result = unlearn_(model, tokenizer, request, config, compose=compose, progress=progress)
    if strategy is not None and getattr(strategy, "world_size", 1) > 1:
        maps = strategy.broadcast({k: v.detach().cpu() for k, v in result.maps.items()}, src=0)
        with torch.no_grad():
            for tower, targets in tower_edits(model, config).items():
                for e in targets:
                    e.P.weight.copy_(maps[tower].to(e.P.weight))
        result.maps = maps
    return result


def checkpoint_edits(state_dict: Mapping[str, Any], prefix: str) -> dict[str, tuple[dict, torch.Tensor]]:
    """Edits stored in a ``state_dict`` under ``prefix``: ``{key of P.weight: (info, M)}``."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith(prefix) and ".parametrizations." in key and key.endswith("._extra_state"):
            stem = key[: -len("_extra_state")]
            if isinstance(value, Mapping) and "info" in value and stem + "P.weight" in state_dict:
                out[stem + "P.weight"] = (json.loads(value["info"]), state_dict[stem + "P.weight"])
    return out


def _describe(info: Mapping) -> str:
    try:
        return ForgetRequest.from_dict(info["request"]).describe()
    except Exception:
        return "an unreadable request"


def edit_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [e.P.weight for _, e in edits(model)]


# ----------------------------------------------------------------------------------------------
# The callback
# ----------------------------------------------------------------------------------------------

class NullspaceUnlearning(Callback):
    """Unlearn ``request`` in the open_clip model of any LightningModule, training-free.

    Args:
        request: what to forget (a :class:`ForgetRequest` or its ``to_dict()``).
        tokenizer: the model's tokenizer; default: the module's ``tokenizer`` attribute.
        model_attr: attribute path of the open_clip model on the module (``"clip"``,
            ``"backbone.model"``); default: the only CLIP / CustomTextCLIP among its submodules.
        config: an :class:`UnlearnConfig` or a dict of its fields; ``**overrides`` replace fields
            (``method="text"``, ``alpha=0.5``, ...).
        compose: allow adding this edit on top of edits the model already carries.
        progress: show the edit's progress bars.

    The edit is computed in ``setup`` for every stage (fit, validate, test, predict), once: a model
    that already carries an edit with this fingerprint is left alone. When a checkpoint is restored
    (``ckpt_path``), the edit it holds replaces the one computed in ``setup`` (weights are loaded,
    never stacked); a checkpoint whose edit was made for another request or config raises; a
    checkpoint without any edit (saved without the callback) gets the edit computed anew on its
    weights. During ``fit`` the edit stays frozen: its weights never get a gradient.

    Strategies: single device and ``"ddp"`` (all ranks end with rank 0's maps). FSDP, DeepSpeed and
    model-parallel strategies are refused, and so are ``"ddp_spawn"`` / ``"ddp_fork"`` (the
    parametrized model cannot be pickled or sent back to the main process).

    Example::

        trainer = Trainer(callbacks=[NullspaceUnlearning(ForgetRequest(classes, domains, forget_classes=["dog"]))])
        trainer.test(my_module, test_loader)  # my_module.clip is an open_clip model, my_module.tokenizer its tokenizer
    """

    def __init__(self, request: ForgetRequest | Mapping, tokenizer: Callable | None = None,
                 model_attr: str | None = None, config: UnlearnConfig | Mapping | None = None, *,
                 compose: bool = False, progress: bool = False, **overrides):
        self.request = make_request(request)
        if tokenizer is not None and not callable(tokenizer):
            raise TypeError(f"`tokenizer` must be callable (e.g. open_clip.get_tokenizer(name)), got "
                            f"{type(tokenizer).__name__}")
        if model_attr is not None and (not isinstance(model_attr, str) or not _ATTR.match(model_attr)):
            raise ValueError(f"`model_attr`={model_attr!r} must be a dotted attribute path such as 'clip' or "
                             "'backbone.model', or None to find the model automatically")
        for name, value in [("compose", compose), ("progress", progress)]:
            if not isinstance(value, bool):
                raise TypeError(f"`{name}`={value!r} must be True or False")
        self.tokenizer, self.model_attr, self.compose, self.progress = tokenizer, model_attr, compose, progress
        self.config = make_config(config, **overrides)
        self.fingerprint = edit_fingerprint(self.request, self.config)
        self.result: Unlearned | None = None  # what the last computation returned
        self._model: nn.Module | None = None
        self._tokenizer: Callable | None = None
        self._trainer = None
        self._hooks: list = []
        self._recompute = False

    # ---- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"request": self.request.to_dict(), "config": config_dict(self.config), "fingerprint": self.fingerprint}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._check_state(state_dict)

    def _check_state(self, state: Mapping | None) -> None:
        if state and state.get("fingerprint") != self.fingerprint:
            raise RequestError(
                f"the checkpoint was made by NullspaceUnlearning for another request or config "
                f"({_describe(state)}; fingerprint {state.get('fingerprint')}), but this callback has "
                f"{self.request.describe()} (fingerprint {self.fingerprint}); pass the request and config the "
                "checkpoint was made with, or start from the weights without `ckpt_path`")

    # ---- hooks ------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        check_strategy(trainer.strategy, "NullspaceUnlearning")
        from .module import CLIPUnlearning
        if isinstance(pl_module, CLIPUnlearning):
            raise TypeError("CLIPUnlearning computes its own edit; do not add NullspaceUnlearning to its Trainer "
                            "(the callback is for your own LightningModules)")
        if sum(isinstance(cb, NullspaceUnlearning) for cb in trainer.callbacks) > 1:
            raise ValueError("only one NullspaceUnlearning callback per Trainer is supported; put every class and "
                             "domain to forget in one ForgetRequest")
        _, model = find_clip(pl_module, self.model_attr)
        tokenizer = self.tokenizer if self.tokenizer is not None else getattr(pl_module, "tokenizer", None)
        if tokenizer is None or not callable(tokenizer):
            raise ValueError(f"no tokenizer: pass `tokenizer=open_clip.get_tokenizer(<model name>)` to "
                             f"NullspaceUnlearning or set `self.tokenizer` on {type(pl_module).__name__}")
        self.check_names(pl_module, self.request)
        self._model, self._tokenizer, self._trainer = model, tokenizer, trainer
        self._remove_hooks()
        self._hooks = [model.register_load_state_dict_pre_hook(self._before_load),
                       model.register_load_state_dict_post_hook(self._after_load)]
        if self.fingerprint in carried_fingerprints(model):
            rank_zero_info(f"NullspaceUnlearning: the model already carries this edit ({self.fingerprint}); skipped")
            return
        self._apply()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def _before_load(self, module, state_dict, prefix, *args) -> None:
        """Loading a checkpoint into the model (``ckpt_path``): check the edit it holds."""
        saved = checkpoint_edits(state_dict, prefix)
        theirs = {info_fingerprint(info) for info, _ in saved.values()}
        if saved and self.fingerprint not in theirs:
            described = sorted({_describe(info) for info, _ in saved.values()})
            raise RequestError(f"the checkpoint's model carries an edit for another request or config ({described}; "
                               f"fingerprint(s) {sorted(map(str, theirs))}), but this callback has "
                               f"{self.request.describe()} (fingerprint {self.fingerprint}); pass the request and "
                               "config the checkpoint was made with, or load its weights without the callback")
        if not saved and edits(module):  # weights saved without the edit: load them plain, then edit them
            restore_(module)
            self._recompute = True

    def _after_load(self, module, incompatible_keys) -> None:
        if self._recompute:
            self._recompute = False
            rank_zero_info("NullspaceUnlearning: the checkpoint holds no edit; computing it on the loaded weights")
            self._apply()

    def on_fit_start(self, trainer, pl_module) -> None:
        if self._model is None:
            return
        params = edit_parameters(self._model)
        ids = {id(p) for p in params}
        for p in params:
            p.requires_grad_(False)
        for opt in trainer.optimizers:
            if any(id(p) in ids for group in opt.param_groups for p in group["params"]):
                rank_zero_warn("NullspaceUnlearning: the optimiser holds the edit's frozen weights; they never get a "
                               "gradient and so are never updated (build the optimiser from parameters that "
                               "require grad to leave them out)")
                break

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._model is not None:
            for p in edit_parameters(self._model):  # frozen even if something turned requires_grad back on
                p.grad = None

    # ---- work -------------------------------------------------------------------------------
    def _apply(self) -> None:
        strategy = self._trainer.strategy if self._trainer is not None else None
        self.result = compute_edit_(self._model, self._tokenizer, self.request, self.config, strategy=strategy,
                                    compose=self.compose, progress=self.progress)
        rank_zero_info(f"NullspaceUnlearning: {self.request.describe()}; edited {list(self.result.maps)} "
                       f"({self.config.method}, {self.config.solver}, ranks {self.result.ranks}, "
                       f"{self.result.seconds:.2f} s, fingerprint {self.fingerprint})")

    @staticmethod
    def check_names(pl_module: nn.Module, request: ForgetRequest) -> None:
        """Raise if the module lists ``classnames`` / ``domains`` that miss a forgotten name."""
        for attr, wanted in [("classnames", {c for c, _ in request.forget_cells}),
                             ("domains", {d for _, d in request.forget_cells})]:
            names = getattr(pl_module, attr, None)
            if names is None or isinstance(names, str) or not all(isinstance(n, str) for n in names):
                continue
            missing = sorted(wanted - set(names))
            if missing:
                close = {m: difflib.get_close_matches(m, list(names), n=1) for m in missing}
                hint = "; ".join(f"{m!r} -> {c[0]!r}?" for m, c in close.items() if c)
                raise RequestError(f"the request forgets {attr[:-1] if attr == 'domains' else 'class'} name(s) "
                                   f"{missing}, which {type(pl_module).__name__}.{attr} does not list "
                                   f"({list(names)}){' (' + hint + ')' if hint else ''}; fix the request's names "
                                   f"or the module's `{attr}`")


__all__ = ["NullspaceUnlearning", "UnsupportedStrategyError", "check_strategy", "compute_edit_",
           "edit_fingerprint", "find_clip", "make_config"]
