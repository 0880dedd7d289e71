"""The NullspaceUnlearning callback on a user's own LightningModule: finding the model, checking names and
arguments, strategies, the broadcast maps, resuming and plain checkpoints. The helpers are
tests/test_lightning.py's."""
import warnings

import lightning as L
import pytest
import torch
from torch import nn

from lightning_unlearn import ForgetRequest, RequestError, edits
from lightning_unlearn.callback import NullspaceUnlearning
from lightning_unlearn.data import CLASSES, DOMAINS
from lightning_unlearn.edit import UnlearnConfig, edit_modules
from lightning_unlearn.integration import UnsupportedStrategyError, check_strategy, compute_edit_
from lightning_helpers import (FORGET, QUIET, UserModule, make_module, projector, tiny_clip, tokenizer)


def test_callback_on_a_users_module_finds_the_model_and_matches_the_module(loader, counter):
    user = UserModule(tiny_clip(), tokenizer())
    request = ForgetRequest(CLASSES, DOMAINS, **FORGET)
    cb = NullspaceUnlearning(request, method="text")
    trainer = L.Trainer(callbacks=[cb], **QUIET)
    out = trainer.test(user, loader, verbose=False)[0]
    assert len(counter) == 1 and [n for n, _ in edit_modules(user.clip)] == ["visual.proj"]
    trainer.test(user, loader, verbose=False)  # setup again: the model already carries this edit
    assert len(counter) == 1 and len(edits(user.clip)) == 1
    module = make_module()
    module_out = L.Trainer(**QUIET).test(module, loader, verbose=False)[0]
    assert torch.equal(projector(user.clip), projector(module.clip))  # the same edit as CLIPUnlearning's
    assert cb.state_dict()["edit_id"] == cb.edit_id and cb.state_dict()["request"] == request.to_dict()
    assert out["test/forget_accuracy"] == module_out["test/forget_accuracy"]  # so the same accuracies


class Nested(L.LightningModule):
    def __init__(self, n_models: int = 1):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.model = tiny_clip()
        if n_models > 1:
            self.teacher = tiny_clip()
        self.tokenizer = tokenizer()


def test_callback_finds_the_model_by_path_and_names_the_candidates():
    request = ForgetRequest(CLASSES, DOMAINS, **FORGET)
    trainer = L.Trainer(**QUIET)
    module = Nested()
    NullspaceUnlearning(request, model_attr="backbone.model", method="text").setup(trainer, module, "test")
    assert [n for n, _ in edit_modules(module)] == ["backbone.model.visual.proj"]
    module = Nested()
    NullspaceUnlearning(request, method="text").setup(trainer, module, "test")  # found by scanning
    assert [n for n, _ in edit_modules(module)] == ["backbone.model.visual.proj"]

    with pytest.raises(ValueError, match=r"2 open_clip models found in Nested: \['backbone.model', 'teacher'\]"):
        NullspaceUnlearning(request, method="text").setup(trainer, Nested(2), "test")
    with pytest.raises(ValueError, match=r"no CLIP model .* found in LightningModule.*`model_attr="):
        NullspaceUnlearning(request).setup(trainer, L.LightningModule(), "test")
    with pytest.raises(ValueError, match=r"`model_attr`='backbone.clip': backbone has no attribute 'clip'.*"
                                         r"\['backbone.model'\]"):
        NullspaceUnlearning(request, model_attr="backbone.clip").setup(trainer, Nested(), "test")
    with pytest.raises(TypeError, match=r"`model_attr`='backbone' is a Module, not a CLIP model"):
        NullspaceUnlearning(request, model_attr="backbone").setup(trainer, Nested(), "test")
    module = Nested()
    del module.tokenizer
    with pytest.raises(ValueError, match=r"no tokenizer: pass `tokenizer="):
        NullspaceUnlearning(request).setup(trainer, module, "test")


def test_callback_refuses_request_names_the_module_does_not_have():
    user = UserModule(tiny_clip(), tokenizer())
    user.classnames = ("circle", "square", "triangle")
    request = ForgetRequest(CLASSES, DOMAINS, **FORGET)
    with pytest.raises(RequestError, match=r"class name\(s\) \['star'\].*UserModule.classnames.*fix"):
        NullspaceUnlearning(request).setup(L.Trainer(**QUIET), user, "test")
    user.classnames, user.domains = CLASSES, ("photo", "sketchy")
    with pytest.raises(RequestError, match=r"domain name\(s\) \['sketch'\].*'sketchy'"):
        NullspaceUnlearning(request).setup(L.Trainer(**QUIET), user, "test")


def test_callback_validates_its_arguments_eagerly():
    request = ForgetRequest(CLASSES, DOMAINS, **FORGET)
    with pytest.raises(TypeError, match="`request` must be a ForgetRequest"):
        NullspaceUnlearning(["star"])
    with pytest.raises(ValueError, match=r"`model_attr`='clip\.' must be a dotted attribute path"):
        NullspaceUnlearning(request, model_attr="clip.")
    with pytest.raises(ValueError, match=r"unknown UnlearnConfig field\(s\) \['alfa'\]"):
        NullspaceUnlearning(request, alfa=0.5)
    with pytest.raises(ValueError, match="`method`='fast' is not one of"):
        NullspaceUnlearning(request, method="fast")
    with pytest.raises(TypeError, match="`tokenizer` must be callable"):
        NullspaceUnlearning(request, tokenizer="open_clip")
    assert NullspaceUnlearning(request.to_dict()).edit_id == NullspaceUnlearning(request).edit_id


def test_unsupported_strategies_are_refused_with_a_fix():
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
    for strategy in [FSDPStrategy(), DeepSpeedStrategy.__new__(DeepSpeedStrategy)]:
        with pytest.raises(UnsupportedStrategyError, match=rf"`strategy`={type(strategy).__name__}.*strategy='ddp'"):
            check_strategy(strategy, "NullspaceUnlearning")
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False)
    request = ForgetRequest(CLASSES, DOMAINS, **FORGET)
    with pytest.raises(UnsupportedStrategyError, match=r"'ddp_spawn'.*cannot be pickled.*strategy='ddp'"):
        NullspaceUnlearning(request).setup(trainer, UserModule(tiny_clip(), tokenizer()), "test")
    module = make_module()
    module.trainer = trainer
    with pytest.raises(UnsupportedStrategyError, match=r"'ddp_spawn'.*strategy='ddp'"):
        module.setup("test")
    with pytest.raises(TypeError, match="do not add NullspaceUnlearning"):
        NullspaceUnlearning(request).setup(L.Trainer(**QUIET), make_module(), "test")


def test_broadcast_maps_from_rank_zero_reach_every_edit():
    class TwoRanks:  # what DDPStrategy offers compute_edit_ (rank 0 here): rank 0's maps win
        root_device, world_size, global_rank = torch.device("cpu"), 2, 0

        def broadcast(self, obj, src=0):
            return {k: torch.eye(v.shape[0]) * 0.5 for k, v in obj.items()} if isinstance(obj, dict) else obj

        def all_gather(self, t):  # both ranks hold the same values
            return torch.stack([t, t])

        def reduce_boolean_decision(self, decision, all=True):  # no rank failed
            return decision
    clip = tiny_clip()
    config = UnlearnConfig(method="text")
    result = compute_edit_(clip, tokenizer(), ForgetRequest(CLASSES, DOMAINS, **FORGET), config, strategy=TwoRanks())
    assert torch.equal(projector(clip), torch.eye(128) * 0.5) and torch.equal(result.maps["image"], projector(clip))


def test_fit_resume_never_applies_the_edit_twice_and_keeps_it_frozen(loader, counter, tmp_path):
    request = ForgetRequest(CLASSES, DOMAINS, **FORGET)
    user = UserModule(tiny_clip(), tokenizer())
    trainer = L.Trainer(callbacks=[NullspaceUnlearning(request, method="text")], max_epochs=1,
                        limit_train_batches=2, default_root_dir=tmp_path, **QUIET)
    vis_before = user.clip.visual.conv1.weight.detach().clone()
    with pytest.warns(UserWarning, match="optimiser holds the edit's frozen weights"):
        trainer.fit(user, loader)
    P = projector(user.clip)
    assert len(counter) == 1 and not torch.equal(P, torch.eye(128))
    assert not torch.equal(user.clip.visual.conv1.weight, vis_before)  # the rest trained...
    ckpt = tmp_path / "fit.ckpt"
    trainer.save_checkpoint(ckpt)
    assert torch.equal(projector(user.clip), P)  # ...the edit did not

    saved = torch.load(ckpt, weights_only=False)  # mark the saved edit to see which one a resumed run uses
    saved["state_dict"]["clip.visual.parametrizations.proj.0.P.weight"] *= 0.5
    torch.save(saved, ckpt)
    resumed = UserModule(tiny_clip(), tokenizer())
    trainer = L.Trainer(callbacks=[NullspaceUnlearning(request, method="text")], max_epochs=2,
                        limit_train_batches=2, default_root_dir=tmp_path, **QUIET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(resumed, loader, ckpt_path=ckpt, weights_only=False)
    assert len(edits(resumed.clip)) == 1, "resuming must not stack a second edit"
    assert torch.equal(projector(resumed.clip), P * 0.5), "the checkpoint's edit is the one in force"

    other = ForgetRequest(CLASSES, DOMAINS, forget_classes=["heart"])
    trainer = L.Trainer(callbacks=[NullspaceUnlearning(other, method="text")], **QUIET)
    with pytest.raises(RequestError, match=r"another request.*global: forget classes \['heart'\]"):
        trainer.test(UserModule(tiny_clip(), tokenizer()), loader, ckpt_path=ckpt, weights_only=False)


def test_plain_checkpoint_gets_the_edit_computed_on_its_weights(loader, counter, tmp_path):
    user = UserModule(tiny_clip(), tokenizer())
    with torch.no_grad():
        user.clip.visual.ln_post.weight.mul_(1.5)  # "fine-tuned" weights, saved without any edit
    trainer = L.Trainer(default_root_dir=tmp_path, **QUIET)
    trainer.test(user, loader, verbose=False)
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    request = ForgetRequest(CLASSES, DOMAINS, **FORGET)
    fresh = UserModule(tiny_clip(), tokenizer())
    trainer = L.Trainer(callbacks=[NullspaceUnlearning(request, method="text")], **QUIET)
    trainer.test(fresh, loader, ckpt_path=tmp_path / "plain.ckpt", verbose=False, weights_only=False)
    # computed in setup (before the checkpoint is read), then again on the checkpoint's weights
    assert len(counter) == 2 and len(edits(fresh.clip)) == 1
    torch.testing.assert_close(fresh.clip.visual.ln_post.weight, user.clip.visual.ln_post.weight)
    expected = tiny_clip()
    expected.load_state_dict(user.clip.state_dict())
    compute_edit_(expected, tokenizer(), request, UnlearnConfig(method="text"))
    assert torch.equal(projector(fresh.clip), projector(expected))  # computed on the checkpoint's weights
