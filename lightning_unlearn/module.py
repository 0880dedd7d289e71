"""``CLIPUnlearning``: an open_clip model with a forget request, as a LightningModule.

Structure is made in ``__init__``: the frozen projector layers are injected as identity maps, so a
checkpoint's keys always match. Values are made in ``setup`` for every stage, once: the edit is
computed only if the persistent ``computed_edit_id`` buffer does not already record this request
and config (after ``load_from_checkpoint`` it does, so nothing is recomputed). With
``trainer.test(module, ckpt_path=...)`` on a fresh module, Lightning runs ``setup`` before it reads
the checkpoint, so the edit is computed once and then replaced by the checkpoint's (a checkpoint of
another request or config is refused in ``on_load_checkpoint``). Validation, test and predict
steps classify zero-shot with a classifier built once per stage from the unchanged prompts, and
log forget / retain / per-domain accuracy through :class:`UnlearningAccuracy`.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric

from . import zeroshot
from .edit import UnlearnConfig, check_mode, fold_, restore_
from .encoders import encode_image, encode_text, to_device, tokenize
from .integration import check_flags, check_metrics, check_strategy, compute_edit_, edit_summary, make_config
from .metrics import UnlearningAccuracy
from .module_setup import (Evaluation, FineTuning, build_model, check_source, inject_placeholders, is_world, options,
                           resolve_request, unfreeze)
from .prompts import fill_template
from .request import ForgetRequest, RequestError
from .state import EDIT_ID_LEN, config_dict, edit_id, edit_id_from_tensor, edit_id_tensor


class CLIPUnlearning(LightningModule):
    """Zero-shot evaluation (and optional fine-tuning) of an open_clip model with a class / domain
    forgotten by the training-free nullspace edit.

    Args:
        request: what to forget, a :class:`ForgetRequest` or its ``to_dict()``; or, shorter,
            ``forget_classes`` / ``forget_domains``: names of ``classnames`` / ``domains`` (with
            ``cell_templates``, the request's (class, domain) templates).
        classnames, domains: the data's label names, in label-index order. Default: the request's,
            else the embedded world's (for the embedded model and ``arch="world-clip"``).
        unlearn: the edit, an :class:`UnlearnConfig` or a dict of its fields (``{"method": "text"}``).
        arch: an open_clip model name (``"ViT-B-32"``, ``"world-clip"``) or ``"local-dir:/path"``;
            with ``weights``, a local weights file. Neither (and no ``model``): the embedded model
            (:func:`lightning_unlearn.load.load_clip`).
        model, tokenizer: an open_clip model object (and its tokenizer) instead of ``arch``. The
            object is not saved in the hyper-parameters, so ``load_from_checkpoint`` then needs
            ``model=`` (an un-edited model of the same architecture; the checkpoint's weights replace
            its own) and ``tokenizer=`` unless ``arch`` names it.
        evaluation: how validate / test / predict classify, an :class:`Evaluation` or a dict of its
            fields (``templates``; ``colours`` and ``colour_templates``, an unrelated task found as a
            4th label column, the world's colours by default for the embedded model).
        finetune: a :class:`FineTuning` or a dict of its fields: ``trainable`` parameter-name prefixes
            of the CLIP model to fine-tune in ``fit`` (everything is frozen by default; the edit
            itself is never trainable), AdamW's ``lr`` and ``weight_decay``.
        progress: show the edit's progress bars.
        evidence: with ``unlearn={"depth": "deep"}``, real images of cells of the label space
            (see :func:`~lightning_unlearn.edit.unlearn_`); not saved in the hyper-parameters (the
            edit it shaped is in the checkpoint).
        self_check: also run the edit's self-check on held-out prototypes when the edit is computed
            (:mod:`~lightning_unlearn.selfcheck`; ``self.check``): its summary goes to the log.

    Logged per stage (``val/``, ``test/``): the keys of :class:`UnlearningAccuracy` and, with
    colours, ``unrelated_accuracy``; with a self-check, ``selfcheck/*`` (pass, worst cells).
    ``predict_step`` returns ``{"pred", "scores"}`` (and the labels when the batch has them).

    Raises:
        ValueError: conflicting or missing arguments (``request`` and ``forget_*`` together, nothing to
            forget, ``arch`` without ``classnames`` / ``domains``, an unknown ``arch``, ``model`` and
            ``weights`` together, a ``trainable`` prefix matching nothing), an invalid config or
            unknown option fields.
        TypeError: a ``tokenizer`` that is not callable, a ``model`` that is not a CLIP model, a
            non-bool ``progress`` / ``self_check``.
        FileNotFoundError: ``weights`` is not a file.
        EditError: a passed ``model`` already carries edits.
        RequestError: a malformed request.
    """

    #: Tells :class:`~lightning_unlearn.callback.NullspaceUnlearning` not to add a second edit.
    computes_own_edit = True

    def __init__(
        self,
        request: Optional[Union[ForgetRequest, dict]] = None,
        forget_classes: Optional[list[str]] = None,
        forget_domains: Optional[list[str]] = None,
        classnames: Optional[list[str]] = None,
        domains: Optional[list[str]] = None,
        unlearn: Optional[Union[UnlearnConfig, dict]] = None,
        arch: Optional[str] = None,
        weights: Optional[str] = None,
        evaluation: Optional[Evaluation] = None,
        finetune: Optional[FineTuning] = None,
        cell_templates: Optional[list[str]] = None,
        progress: bool = False,
        model: Optional[nn.Module] = None,
        tokenizer: Optional[Callable] = None,
        evidence: Optional[dict] = None,
        self_check: bool = False,
    ):
        super().__init__()
        # every cheap check first; the model is loaded last
        self.config = make_config(unlearn)
        finetune = options(finetune, FineTuning, "finetune")
        check_flags(progress=progress, self_check=self_check)
        check_source(model, tokenizer, arch, weights)
        world = is_world(model, arch)
        self.request, self.classnames, self.domains = resolve_request(
            request, forget_classes, forget_domains, classnames, domains, cell_templates, arch=arch, world=world)
        check_mode(self.config, self.request, evidence)
        self.evaluation = options(evaluation, Evaluation, "evaluation").resolved(world)
        self._make_metrics()

        self.clip, self.preprocess, self.tokenizer, self.model_config = build_model(model, tokenizer, arch, weights)
        self.edit_id = edit_id(self.request, self.config)
        self.register_buffer("computed_edit_id", torch.zeros(EDIT_ID_LEN, dtype=torch.uint8))
        if inject_placeholders(self.clip, self.config, self.edit_id):  # the model already carries this edit
            self.computed_edit_id.copy_(edit_id_tensor(self.edit_id))
        self.clip.requires_grad_(False)
        self.trainable = unfreeze(self.clip, finetune.trainable)
        self.lr, self.weight_decay = finetune.lr, finetune.weight_decay
        self.progress, self.evidence, self.self_check = progress, evidence, self_check
        self.check = None  # the edit's selfcheck.Check, once computed
        self._classifiers: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._tokens: torch.Tensor | None = None
        self.save_hyperparameters({
            "request": self.request.to_dict(), "unlearn": config_dict(self.config),
            "classnames": list(self.classnames), "domains": list(self.domains), "arch": arch, "weights": weights,
            "evaluation": self.evaluation.to_dict(), "finetune": finetune.to_dict(), "progress": progress})

    def _make_metrics(self) -> None:
        """The metrics of validation and test (they check that the request's names are the data's)."""
        self.val_metric = UnlearningAccuracy(self.request, self.classnames, self.domains)
        self.test_metric = UnlearningAccuracy(self.request, self.classnames, self.domains)
        self.val_unrelated = self.test_unrelated = None
        if self.evaluation.colours:  # the unrelated task's accuracy: a running mean of hits, no per-batch device sync
            self.val_unrelated = MeanMetric(nan_strategy="disable")
            self.test_unrelated = MeanMetric(nan_strategy="disable")

    # ---- the edit -----------------------------------------------------------------------------
    @property
    def computed(self) -> bool:
        """Whether the injected layers hold this request's edit (not the identity placeholders)."""
        return edit_id_from_tensor(self.computed_edit_id) == self.edit_id

    def compute_edit(self, strategy: Any = None):
        """Compute and inject the edit unless already done (returns the :class:`Unlearned`, or None)."""
        if self.computed:
            return None
        restore_(self.clip)  # drop the identity placeholders; unlearn_ injects the same structure
        result = compute_edit_(self.clip, self.tokenizer, self.request, self.config, strategy=strategy,
                               progress=self.progress, evidence=self.evidence, check=True if self.self_check else None)
        self.check = result.check
        self.computed_edit_id.copy_(edit_id_tensor(self.edit_id).to(self.computed_edit_id.device))
        rank_zero_info(edit_summary("CLIPUnlearning", self.request, self.config, result))
        return result

    def folded_model(self) -> nn.Module:
        """A deep copy of the edited CLIP model with the edit folded into its projection weights: a
        plain open_clip model with the original state_dict keys and no overhead."""
        if not self.computed:
            raise RuntimeError("the edit has not been computed yet: call `compute_edit()` or run trainer.validate / "
                               "test / predict first (or load a checkpoint)")
        model = copy.deepcopy(self.clip)
        fold_(model)
        return model.eval()

    # ---- Lightning hooks ----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        trainer = self._trainer
        strategy = trainer.strategy if trainer is not None else None
        if trainer is not None:
            check_strategy(strategy, "CLIPUnlearning", allow_fork=True)
            self._check_data(trainer)
        if stage == "fit" and not any(p.requires_grad for p in self.parameters()):
            raise ValueError("nothing to train: every parameter of CLIPUnlearning is frozen. Pass "
                             "`finetune={'trainable': [...]}`, parameter-name prefixes of the CLIP model (e.g. "
                             "['visual.transformer.resblocks.5']), to fine-tune with the edit in place, or use "
                             "trainer.validate / test / predict")
        self._classifiers.clear()
        if self.computed:
            return
        self.compute_edit(strategy)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["clip_model_config"] = self.model_config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.model_config is None and isinstance(checkpoint.get("clip_model_config"), dict):
            self.model_config = checkpoint["clip_model_config"]
        state = checkpoint.get("state_dict", {})
        theirs = state.get("computed_edit_id")
        if theirs is not None and edit_id_from_tensor(theirs):
            self._check_edit_id(edit_id_from_tensor(theirs))

    def _check_edit_id(self, theirs: str) -> None:
        if theirs != self.edit_id:
            raise RequestError(f"the checkpoint holds an edit with edit id {theirs}, but this CLIPUnlearning has "
                               f"{self.request.describe()} with config {self.config.method!r} (edit id "
                               f"{self.edit_id}); load it with CLIPUnlearning.load_from_checkpoint(path), which "
                               "restores its request and config, or pass the same ones")

    def _check_data(self, trainer) -> None:
        dm = getattr(trainer, "datamodule", None)
        for attr in ("classnames", "domains"):
            theirs = getattr(dm, attr, None)
            if theirs is not None and tuple(theirs) != tuple(getattr(self, attr)):
                raise ValueError(f"the data module's {attr} {list(theirs)} differ from CLIPUnlearning's `{attr}` "
                                 f"{list(getattr(self, attr))}; label i means {attr}[i], so pass `{attr}=` in the "
                                 "data's order")

    def __getstate__(self):
        raise TypeError("CLIPUnlearning holds torch parametrizations (the injected edit), which cannot be pickled: "
                        "with the Trainer use strategy='ddp' (each rank runs your script) instead of 'ddp_spawn'; "
                        "to save, use trainer.save_checkpoint or module.state_dict()")

    def __deepcopy__(self, memo):
        replica = self.__class__.__new__(self.__class__)
        memo[id(self)] = replica
        state = dict(self.__dict__)
        state["_trainer"] = None
        replica.__dict__ = copy.deepcopy(state, memo)
        return replica

    # ---- zero-shot classification -------------------------------------------------------------
    def _build_classifiers(self, stage: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        if stage not in self._classifiers:
            ev = self.evaluation
            T = zeroshot.classifier(self.clip, self.tokenizer, self.classnames, ev.templates)
            Tc = zeroshot.classifier(self.clip, self.tokenizer, ev.colours, ev.colour_templates) if ev.colours else None
            self._classifiers[stage] = (T, Tc)
        return self._classifiers[stage]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings (float32)."""
        return F.normalize(encode_image(self.clip, images).float(), dim=-1)

    def on_validation_start(self) -> None:
        self._classifiers.pop("validate", None)  # the text tower may have changed during fit
        self._build_classifiers("validate")

    def on_test_start(self) -> None:
        self._build_classifiers("test")

    def on_predict_start(self) -> None:
        self._build_classifiers("predict")

    def _eval_step(self, batch, stage: str, metric: UnlearningAccuracy, unrelated) -> None:
        images, cls, dom = batch[0], batch[1], batch[2]
        T, Tc = self._build_classifiers(stage)
        h = self(images)
        metric.update(h @ T.to(h.device), cls, dom)
        if unrelated is not None and len(batch) > 3:
            unrelated.update(((h @ Tc.to(h.device)).argmax(-1) == batch[3]).float())

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "validate", self.val_metric, self.val_unrelated)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metric, self.test_unrelated)

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        images = batch if isinstance(batch, torch.Tensor) else batch[0]
        T, _ = self._build_classifiers("predict")
        scores = self(images) @ T.to(images.device)
        out = {"pred": scores.argmax(-1), "scores": scores}
        if not isinstance(batch, torch.Tensor) and len(batch) > 2:
            out |= {"target_class": batch[1], "target_domain": batch[2]}
        return out

    def _log_epoch(self, prefix: str, metric: UnlearningAccuracy, unrelated) -> None:
        if not metric.update_called:
            return
        out = {f"{prefix}/{k}": v for k, v in metric.compute().items()}
        if unrelated is not None and unrelated.update_called:
            out[f"{prefix}/unrelated_accuracy"] = unrelated.compute()
            unrelated.reset()
        metric.reset()
        out |= check_metrics(self.check)  # the self-check of the edit, when it ran (same on every rank)
        # compute() already summed the counts over every process, so the values agree on all ranks;
        # sync_dist only averages equal numbers (and keeps Lightning's distributed-logging check quiet).
        self.log_dict(out, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val", self.val_metric, self.val_unrelated)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test", self.test_metric, self.test_unrelated)

    # ---- optional fine-tuning -----------------------------------------------------------------
    def _text_trainable(self) -> bool:
        return any(p.requires_grad for n, p in self.clip.named_parameters() if not n.startswith("visual."))

    def _train_classifier(self) -> torch.Tensor:
        if not self._text_trainable():
            if "fit" not in self._classifiers:
                with torch.no_grad():
                    self._classifiers["fit"] = (zeroshot.classifier(self.clip, self.tokenizer, self.classnames,
                                                                    self.evaluation.templates), None)
            return self._classifiers["fit"][0]
        if self._tokens is None:
            texts = [fill_template(t, c=c) for c in self.classnames for t in self.evaluation.templates]
            self._tokens = tokenize(self.tokenizer, texts, "cpu")
        emb = F.normalize(encode_text(self.clip, to_device(self._tokens, self.device)).float(), dim=-1)
        emb = emb.view(len(self.classnames), len(self.evaluation.templates), -1).mean(1)
        return F.normalize(emb, dim=-1).T

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, cls = batch[0], batch[1]
        T = self._train_classifier().to(self.device)
        logits = self.clip.logit_scale.exp().float() * (self(images) @ T)
        loss = F.cross_entropy(logits, cls)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError("nothing to train: pass `finetune={'trainable': [...]}`, parameter-name prefixes of the "
                             "CLIP model")
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)


__all__ = ["CLIPUnlearning", "Evaluation", "FineTuning"]
