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
import difflib
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric

from . import embedded, zeroshot
from .edit import EditError, UnlearnConfig, check_mode, edit_modules, edits, fold_, inject_, restore_
from .integration import (carried_edit_ids, check_metrics, check_strategy, compute_edit_, make_config, make_request,
                          tower_edits)
from .load import load_clip, model_cfg_of
from .metrics import UnlearningAccuracy
from .prompts import CLASS_TEMPLATES, fill_template, validate_templates
from .request import ForgetRequest, RequestError, as_names
from .encoders import encode_image, encode_text, to_device, tokenize
from .sites import find_site, is_clip
from .state import EDIT_ID_LEN, config_dict, edit_id, edit_id_from_tensor, edit_id_tensor


class CLIPUnlearning(LightningModule):
    """Zero-shot evaluation (and optional fine-tuning) of an open_clip model with a class / domain
    forgotten by the training-free nullspace edit.

    Args:
        request: what to forget, a :class:`ForgetRequest` or its ``to_dict()``; or give
            ``forget_classes`` / ``forget_domains`` (names of ``classnames`` / ``domains``).
        unlearn: an :class:`UnlearnConfig` or a dict of its fields (``{"method": "text"}``).
        classnames, domains: the label names of the data, in label-index order. Default: the
            request's names, else the embedded world's (for the embedded model and ``arch="world-clip"``).
        arch: an open_clip model name (``"ViT-B-32"``, ``"world-clip"``) or ``"local-dir:/path"``;
            with ``weights``, a local weights file. Neither (and no ``model``): the embedded model
            (:func:`lightning_unlearn.load.load_clip`).
        model, tokenizer: an open_clip model object (and its tokenizer) instead of ``arch``. The
            object is not saved in the hyper-parameters, so ``load_from_checkpoint`` then needs
            ``model=`` (an un-edited model of the same architecture; the checkpoint's weights replace
            its own) and ``tokenizer=`` unless ``arch`` names it.
        templates: zero-shot classifier templates (``{c}`` = class); ``cell_templates``: the
            request's (class, domain) templates when built from ``forget_*``.
        colours, colour_templates: names of an unrelated task found as a 4th label column in the
            batches (the world's colours by default for the embedded model); logged as
            ``<stage>/unrelated_accuracy``.
        trainable: parameter-name prefixes of the CLIP model to fine-tune in ``fit`` (everything is
            frozen by default; the edit itself is never trainable); ``lr``, ``weight_decay``: AdamW.
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
            ``weights`` together, a ``trainable`` prefix matching nothing), an invalid config.
        TypeError: a ``tokenizer`` that is not callable, a ``model`` that is not a CLIP model.
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
        templates: Optional[list[str]] = None,
        cell_templates: Optional[list[str]] = None,
        colours: Optional[list[str]] = None,
        colour_templates: Optional[list[str]] = None,
        trainable: Optional[list[str]] = None,
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        progress: bool = False,
        model: Optional[nn.Module] = None,
        tokenizer: Optional[Callable] = None,
        evidence: Optional[dict] = None,
        self_check: bool = False,
    ):
        super().__init__()
        self.config = make_config(unlearn)
        for name, value in [("lr", lr), ("weight_decay", weight_decay)]:
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"`{name}`={value!r} must be a number >= 0")
        if not isinstance(progress, bool):
            raise TypeError(f"`progress`={progress!r} must be True or False")
        self._check_source(model, tokenizer, arch, weights)
        world = (model is None and arch is None) or arch == embedded.MODEL_NAME  # the embedded world's defaults

        # --- names and request --------------------------------------------------------------
        if request is not None:
            if forget_classes is not None or forget_domains is not None:
                raise ValueError("give either `request` or `forget_classes` / `forget_domains`, not both")
            request = make_request(request)
            classnames = request.classnames if classnames is None else classnames
            domains = request.domains if domains is None else domains
        if classnames is None or domains is None:
            if not world:
                raise ValueError(f"`classnames` and `domains` are required for `arch`={arch!r} (the data's label "
                                 "names in label-index order), or give a `request` that lists them")
            classnames = embedded.Embedded.classnames if classnames is None else classnames
            domains = embedded.Embedded.domains if domains is None else domains
        classnames, domains = as_names(classnames, "classnames"), as_names(domains, "domains")
        if request is None:
            if forget_classes is None and forget_domains is None:
                raise ValueError("nothing to forget: give `forget_classes` and/or `forget_domains` (names of "
                                 f"`classnames` {list(classnames)} / `domains` {list(domains)}), or a `request`")
            request = ForgetRequest(classnames, domains, forget_classes, forget_domains, templates=cell_templates)
        elif cell_templates is not None:
            raise ValueError("`cell_templates` only applies with `forget_classes` / `forget_domains`; a `request` "
                             "carries its own templates")
        self.request, self.classnames, self.domains = request, classnames, domains
        check_mode(self.config, request, evidence)
        self.templates = validate_templates(templates or CLASS_TEMPLATES, "c", "templates")
        if colours is None and world:
            colours = embedded.Embedded.colours
            colour_templates = colour_templates or embedded.COLOUR_TEMPLATES
        self.colours = as_names(colours, "colours", allow_none=True)
        if self.colours is not None and colour_templates is None:
            raise ValueError("`colour_templates` are required with `colours` (e.g. ['a {c} thing.'])")
        self.colour_templates = validate_templates(colour_templates, "c", "colour_templates") if self.colours else None

        # --- the metric (validates that the request's names are among the data's) ----------
        self.val_metric = UnlearningAccuracy(request, classnames, domains)
        self.test_metric = UnlearningAccuracy(request, classnames, domains)
        self.val_unrelated = self.test_unrelated = None
        if self.colours:  # the unrelated task's accuracy: a running mean of hits, no per-batch device sync
            self.val_unrelated = MeanMetric(nan_strategy="disable")
            self.test_unrelated = MeanMetric(nan_strategy="disable")

        # --- the model and its frozen projector layers (built last: every cheap check first) --
        clip, preprocess, tokenizer, self.model_config = self._build_model(model, tokenizer, arch, weights)
        self.clip, self.preprocess, self.tokenizer = clip, preprocess, tokenizer
        self.edit_id = edit_id(request, self.config)
        self.register_buffer("computed_edit_id", torch.zeros(EDIT_ID_LEN, dtype=torch.uint8))
        self._register_load_state_dict_pre_hook(_rename_old_buffer)
        self._adopt_or_inject(clip)
        self.clip.requires_grad_(False)
        self.trainable = self._unfreeze(trainable)
        self.lr, self.weight_decay, self.progress = lr, weight_decay, progress
        self.evidence = evidence
        if not isinstance(self_check, bool):
            raise TypeError(f"`self_check`={self_check!r} must be True or False")
        self.self_check, self.check = self_check, None  # the edit's selfcheck.Check, once computed
        self._classifiers: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._tokens: torch.Tensor | None = None

        self.save_hyperparameters({
            "request": request.to_dict(), "unlearn": config_dict(self.config), "classnames": list(classnames),
            "domains": list(domains), "arch": arch, "weights": weights, "templates": list(self.templates),
            "colours": None if self.colours is None else list(self.colours),
            "colour_templates": None if self.colour_templates is None else list(self.colour_templates),
            "trainable": trainable, "lr": lr, "weight_decay": weight_decay, "progress": progress})

    # ---- construction helpers -----------------------------------------------------------------
    @staticmethod
    def _check_source(model, tokenizer, arch, weights) -> None:
        """Cheap checks of where the model comes from, before anything is loaded."""
        if tokenizer is not None and not callable(tokenizer):
            raise TypeError(f"`tokenizer` must be callable (open_clip.get_tokenizer(<name>)), got "
                            f"{type(tokenizer).__name__}")
        if model is not None:
            if not is_clip(model):
                raise TypeError(f"`model` must be an open_clip CLIP / CustomTextCLIP / CoCa or a transformers "
                                f"CLIPModel / SiglipModel, got {type(model).__name__}")
            if weights is not None:
                raise ValueError("give either `model` or `weights`, not both (load the weights into the model first)")
            if tokenizer is None and arch is None:
                raise ValueError("a `model` object needs its `tokenizer` (open_clip.get_tokenizer(<name>)) or the "
                                 "`arch` name it was built from")
        if arch is not None:
            import open_clip
            if not isinstance(arch, str) or not arch.strip():
                raise ValueError(f"`arch`={arch!r} must be an open_clip model name (see open_clip.list_models()) or "
                                 "'local-dir:/path/to/folder'")
            embedded.register()
            local = arch.startswith("local-dir:")
            if local and weights is not None:
                raise ValueError(f"`arch`={arch!r} loads the weights from its folder; drop `weights`={weights!r}")
            if not local and arch not in open_clip.list_models():
                close = difflib.get_close_matches(arch, open_clip.list_models(), n=3)
                raise ValueError(f"`arch`={arch!r} is not an open_clip model name" +
                                 (f"; did you mean {close}?" if close else "; see open_clip.list_models()"))
        if weights is not None and not Path(weights).is_file():
            raise FileNotFoundError(f"`weights`={weights!r} is not a file; give a local weights file (.safetensors, "
                                    ".pt, .bin) or use arch='local-dir:/path' for a folder")

    @staticmethod
    def _build_model(model, tokenizer, arch, weights):
        """(model, preprocess, tokenizer, model config) from an object, an architecture name, or the
        embedded default; the model config (``{"arch", "model_cfg"}``) is None for an object without ``arch``."""
        import open_clip
        if model is not None:
            if tokenizer is None:
                tokenizer = open_clip.get_tokenizer(arch)
            return model, None, tokenizer, None if arch is None else {"arch": arch, "model_cfg": model_cfg_of(arch)}
        loaded = load_clip(arch, weights)
        return loaded.model, loaded.preprocess, tokenizer or loaded.tokenizer, loaded.model_config

    def _adopt_or_inject(self, clip: nn.Module) -> None:
        carried = carried_edit_ids(clip)
        if carried:
            n_edited = sum(len(v) for v in tower_edits(clip, self.config).values())
            if set(carried) == {self.edit_id} and len(carried) == n_edited:
                self.computed_edit_id.copy_(edit_id_tensor(self.edit_id))  # the model already carries exactly this edit
                return
            raise EditError(f"`model` already carries {len(carried)} edit(s) ({edits(clip)}) "
                            "that are not this request's; pass an un-edited model: restore_(model) drops them, "
                            "fold_(model) keeps them as plain weights")
        for tower in self.config.towers:
            site = find_site(clip, tower)
            n = site.dims[1] if self.config.site == "joint" else site.dims[0]
            inject_(clip, torch.eye(n), tower, self.config.site, info={})

    def _unfreeze(self, prefixes) -> tuple[str, ...]:
        if prefixes is None:
            return ()
        if isinstance(prefixes, str):
            prefixes = [prefixes]
        frozen = {id(p) for _, e in edit_modules(self.clip) for p in e.parameters()}
        names = dict(self.clip.named_parameters())
        for prefix in prefixes:
            hits = [n for n, p in names.items() if (n == prefix or n.startswith(prefix + ".")) and id(p) not in frozen]
            if not hits:
                tops = sorted({n.split(".")[0] for n in names})
                raise ValueError(f"`trainable` prefix {prefix!r} matches no trainable parameter of the CLIP model "
                                 f"(the edit's own weights are never trainable); top-level names: {tops}, e.g. "
                                 "'visual.transformer.resblocks.5' or 'visual.ln_post'")
            for n in hits:
                names[n].requires_grad_(True)
        return tuple(prefixes)

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
        rank_zero_info(f"CLIPUnlearning: {self.request.describe()}; edited {list(result.maps)} ({self.config.method}, "
                       f"{self.config.solver}, ranks {result.ranks}, {result.seconds:.2f} s)"
                       + (f"\n{result.check.summary()}" if result.check is not None else ""))
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
            raise ValueError("nothing to train: every parameter of CLIPUnlearning is frozen. Pass `trainable=` "
                             "parameter-name prefixes of the CLIP model (e.g. ['visual.transformer.resblocks.5']) to "
                             "fine-tune with the edit in place, or use trainer.validate / test / predict")
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
        theirs = state.get("computed_edit_id", state.get("edit_fingerprint"))  # older checkpoints: edit_fingerprint
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
            T = zeroshot.classifier(self.clip, self.tokenizer, self.classnames, self.templates)
            Tc = zeroshot.classifier(self.clip, self.tokenizer, self.colours, self.colour_templates) \
                if self.colours else None
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
                                                                    self.templates), None)
            return self._classifiers["fit"][0]
        if self._tokens is None:
            texts = [fill_template(t, c=c) for c in self.classnames for t in self.templates]
            self._tokens = tokenize(self.tokenizer, texts, "cpu")
        emb = F.normalize(encode_text(self.clip, to_device(self._tokens, self.device)).float(), dim=-1)
        emb = emb.view(len(self.classnames), len(self.templates), -1).mean(1)
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
            raise ValueError("nothing to train: pass `trainable=` parameter-name prefixes of the CLIP model")
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)


def _rename_old_buffer(state_dict, prefix, *args) -> None:
    """Checkpoints written before the buffer was renamed hold ``edit_fingerprint``: load it as ``computed_edit_id``."""
    if prefix + "edit_fingerprint" in state_dict and prefix + "computed_edit_id" not in state_dict:
        state_dict[prefix + "computed_edit_id"] = state_dict.pop(prefix + "edit_fingerprint")


__all__ = ["CLIPUnlearning"]
