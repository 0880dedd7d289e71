"""``NullspaceUnlearning``: add training-free unlearning to any Trainer whose LightningModule holds an
open_clip model.

The callback finds the CLIP model on the module, computes the edit for its :class:`ForgetRequest` in
``setup`` (on every rank, with the same seed, then rank 0's maps are broadcast so all ranks hold the
same projector) and injects it as a frozen parametrization of the projection weight. Its state
(request, config and their edit id) is saved in checkpoints, so resuming never applies the edit
twice and a checkpoint made for another request is refused.

The Trainer-free helpers it uses live in :mod:`~lightning_unlearn.integration` (shared with
:class:`~lightning_unlearn.module.CLIPUnlearning`) and :mod:`~lightning_unlearn.state`.
"""
from __future__ import annotations

import difflib
import re
from typing import Any, Callable, Mapping

from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from .edit import UnlearnConfig, Unlearned, check_mode, edits, restore_
from .integration import (UnsupportedStrategyError, carried_edit_ids, check_flags, check_metrics, check_strategy,
                          check_tokenizer, compute_edit_, edit_parameters, edit_summary, find_clip, make_config,
                          make_request)
from .request import ForgetRequest, RequestError
from .state import checkpoint_edits, config_dict, describe_info, edit_id, info_edit_id

_ATTR = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


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
        evidence: with ``depth="deep"``, real images of cells of the label space (see :func:`unlearn_`).
        self_check: also run the edit's self-check on held-out prototypes (:mod:`~lightning_unlearn.selfcheck`):
            its summary goes to the log when the edit is computed and ``selfcheck/*`` scalars are
            logged at the end of every validation and test epoch.

    The edit is computed in ``setup`` for every stage (fit, validate, test, predict), once: a model
    that already carries an edit with this edit id is left alone. When a checkpoint is restored
    (``ckpt_path``), the edit it holds replaces the one computed in ``setup`` (weights are loaded,
    never stacked); a checkpoint whose edit was made for another request or config raises; a
    checkpoint without any edit (saved without the callback) gets the edit computed anew on its
    weights. During ``fit`` the edit stays frozen: its weights never get a gradient.

    Strategies: single device and ``"ddp"`` (all ranks end with rank 0's maps). FSDP, DeepSpeed and
    model-parallel strategies are refused, and so are ``"ddp_spawn"`` / ``"ddp_fork"`` (the
    parametrized model cannot be pickled or sent back to the main process).

    Raises:
        TypeError: a ``tokenizer`` that is not callable, a non-bool ``compose`` / ``progress``.
        ValueError: a malformed ``model_attr``, an invalid config or override, ``evidence`` without
            ``depth="deep"`` or outside the label space, a deep edit of whole domains (all at
            construction, before any Trainer runs). In ``setup``: a refused strategy, a second
            callback on one Trainer, no tokenizer found.
        RequestError: the request is malformed, names classes or domains the module's data does not
            have, or a restored checkpoint carries an edit for another request or config.

    Example::

        trainer = Trainer(callbacks=[NullspaceUnlearning(ForgetRequest(classes, domains, forget_classes=["dog"]))])
        trainer.test(my_module, test_loader)  # my_module.clip is an open_clip model, my_module.tokenizer its tokenizer
    """

    def __init__(self, request: ForgetRequest | Mapping, tokenizer: Callable | None = None,
                 model_attr: str | None = None, config: UnlearnConfig | Mapping | None = None, *,
                 compose: bool = False, progress: bool = False, evidence: Mapping | None = None,
                 self_check: bool = False, **overrides):
        self.request = make_request(request)
        check_tokenizer(tokenizer)
        if model_attr is not None and (not isinstance(model_attr, str) or not _ATTR.match(model_attr)):
            raise ValueError(f"`model_attr`={model_attr!r} must be a dotted attribute path such as 'clip' or "
                             "'backbone.model', or None to find the model automatically")
        check_flags(compose=compose, progress=progress, self_check=self_check)
        self.tokenizer, self.model_attr, self.compose, self.progress = tokenizer, model_attr, compose, progress
        self.self_check = self_check
        self.config = make_config(config, **overrides)
        check_mode(self.config, self.request, evidence)
        self.evidence = evidence
        self.edit_id = edit_id(self.request, self.config)
        self.result: Unlearned | None = None  # what the last computation returned
        self._model: nn.Module | None = None
        self._tokenizer: Callable | None = None
        self._trainer = None
        self._hooks: list = []
        self._recompute = False

    # ---- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"request": self.request.to_dict(), "config": config_dict(self.config), "edit_id": self.edit_id}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._check_state(state_dict)

    def _check_state(self, state: Mapping | None) -> None:
        theirs = state and state.get("edit_id")
        if state and theirs != self.edit_id:
            raise RequestError(
                f"the checkpoint was made by NullspaceUnlearning for another request or config "
                f"({describe_info(state)}; edit id {theirs}), but this callback has "
                f"{self.request.describe()} (edit id {self.edit_id}); pass the request and config the "
                "checkpoint was made with, or start from the weights without `ckpt_path`")

    # ---- hooks ------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        check_strategy(trainer.strategy, "NullspaceUnlearning")
        if getattr(pl_module, "computes_own_edit", False):  # CLIPUnlearning
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
        if self.edit_id in carried_edit_ids(model):
            rank_zero_info(f"NullspaceUnlearning: the model already carries this edit ({self.edit_id}); skipped")
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
        theirs = {info_edit_id(info) for info, _ in saved.values()}
        if saved and self.edit_id not in theirs:
            described = sorted({describe_info(info) for info, _ in saved.values()})
            raise RequestError(f"the checkpoint's model carries an edit for another request or config ({described}; "
                               f"edit id(s) {sorted(map(str, theirs))}), but this callback has "
                               f"{self.request.describe()} (edit id {self.edit_id}); pass the request and "
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
                                    compose=self.compose, progress=self.progress, evidence=self.evidence,
                                    check=True if self.self_check else None)
        rank_zero_info(edit_summary("NullspaceUnlearning", self.request, self.config, self.result, self.edit_id))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._log_check(pl_module)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._log_check(pl_module)

    def _log_check(self, pl_module) -> None:
        """Log the edit's self-check (``selfcheck/*``), when it ran."""
        metrics = check_metrics(self.result.check if self.result is not None else None)
        if metrics:
            pl_module.log_dict(metrics, sync_dist=True)

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


__all__ = ["NullspaceUnlearning", "UnsupportedStrategyError"]
