"""CLIPUnlearning: structure made in __init__, the edit computed once per module, checkpoints, fitting with
the edit frozen, its option groups, and bad input. The helpers are tests/test_lightning.py's."""
import json
import pickle

import lightning as L
import pytest
import torch

from lightning_unlearn import ForgetRequest, RequestError, edits, embedded
from lightning_unlearn.data import CLASSES, DOMAINS
from lightning_unlearn.module import CLIPUnlearning, Evaluation, FineTuning
from lightning_helpers import FORGET, QUIET, make_module, plain_keys, projector, tiny_clip


def test_structure_is_made_in_init_and_hparams_are_plain_data():
    module = make_module()
    keys = set(module.state_dict())
    assert {"clip.visual.parametrizations.proj.original", "clip.visual.parametrizations.proj.0.P.weight",
            "computed_edit_id"} <= keys
    assert not module.computed and torch.equal(projector(module.clip), torch.eye(128))
    assert not any(p.requires_grad for p in module.parameters())
    hp = dict(module.hparams)
    json.dumps(hp)  # names, request dict, config dict, arch: no model, no tokenizer
    assert "model" not in hp and "tokenizer" not in hp and hp["arch"] == "world-clip"
    assert hp["request"] == ForgetRequest(CLASSES, DOMAINS, **FORGET).to_dict() and hp["unlearn"]["method"] == "text"
    assert torch.equal(module.clip.visual.proj, tiny_clip().visual.proj)  # identity placeholders


def test_edit_is_computed_once_in_setup_for_every_stage(loader, counter):
    module = make_module()
    trainer = L.Trainer(**QUIET)
    val = trainer.validate(module, loader, verbose=False)[0]
    assert module.computed and len(counter) == 1
    P = projector(module.clip)
    assert not torch.equal(P, torch.eye(128))
    test = trainer.test(module, loader, verbose=False)[0]
    preds = trainer.predict(module, loader)
    assert len(counter) == 1 and torch.equal(projector(module.clip), P)
    assert {k.split("/", 1)[1]: v for k, v in val.items()} == {k.split("/", 1)[1]: v for k, v in test.items()}
    for key in ["forget_accuracy", "retain_accuracy", "same_class_other_domains_accuracy", "unrelated_accuracy",
                "accuracy_sketch", "forget_accuracy_macro"]:
        assert f"test/{key}" in test
    pred = torch.cat([p["pred"] for p in preds])
    cls = torch.cat([p["target_class"] for p in preds])
    assert len(pred) == len(loader.dataset) and preds[0]["scores"].shape[1] == len(CLASSES)
    assert abs(float((pred == cls).float().mean()) - test["test/accuracy"]) < 1e-6


def test_checkpoint_restores_the_edit_without_recomputing(loader, counter, tmp_path):
    module = make_module()
    trainer = L.Trainer(default_root_dir=tmp_path, **QUIET)
    before = trainer.test(module, loader, verbose=False)[0]
    ckpt = tmp_path / "edit.ckpt"
    trainer.save_checkpoint(ckpt)
    assert len(counter) == 1

    reloaded = CLIPUnlearning.load_from_checkpoint(ckpt, weights_only=True)  # arch in hparams: no model= needed
    assert reloaded.computed and torch.equal(projector(reloaded.clip), projector(module.clip))
    assert trainer.test(reloaded, loader, verbose=False)[0] == before
    assert len(counter) == 1, "neither load_from_checkpoint nor testing the reloaded module may recompute the edit"

    fresh = make_module(unlearn={"method": "text", "alpha": 0.5})  # another config: its checkpoint is refused...
    with pytest.raises(RequestError, match="load_from_checkpoint"):
        trainer.test(fresh, loader, ckpt_path=ckpt, verbose=False, weights_only=True)
    fresh = make_module()  # ...the same one gets the checkpoint's edit
    assert trainer.test(fresh, loader, ckpt_path=ckpt, verbose=False, weights_only=True)[0] == before
    assert torch.equal(projector(fresh.clip), projector(module.clip)) and fresh.computed

    folded = reloaded.folded_model()
    assert set(folded.state_dict()) == plain_keys() and not edits(folded) and edits(reloaded.clip)
    x = next(iter(loader))[0]
    with torch.no_grad():
        torch.testing.assert_close(folded.encode_image(x), reloaded.clip.encode_image(x))


def test_checkpoint_of_another_request_is_refused(loader, tmp_path):
    module = make_module()
    trainer = L.Trainer(default_root_dir=tmp_path, **QUIET)
    trainer.test(module, loader, verbose=False)
    trainer.save_checkpoint(tmp_path / "star.ckpt")
    other = make_module(forget_classes=["heart"])
    with pytest.raises(RequestError, match=r"edit id .*load_from_checkpoint"):
        trainer.test(other, loader, ckpt_path=tmp_path / "star.ckpt", verbose=False, weights_only=True)


def test_folded_model_needs_the_edit():
    with pytest.raises(RuntimeError, match="compute_edit"):
        make_module().folded_model()
    module = make_module()
    module.compute_edit()  # works without a Trainer
    assert module.computed and set(module.folded_model().state_dict()) == plain_keys()


def test_fit_trains_only_what_is_asked_and_keeps_the_edit_frozen(loader, tmp_path):
    module = make_module(finetune={"trainable": ["visual.ln_post"], "lr": 1e-2})
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, default_root_dir=tmp_path,
                        **QUIET)
    before = {k: v.clone() for k, v in module.clip.state_dict().items() if "ln_post" in k or ".P." in k}
    trainer.fit(module, loader, loader)
    after = module.clip.state_dict()
    assert not torch.equal(after["visual.ln_post.weight"], before["visual.ln_post.weight"])
    P_key = "visual.parametrizations.proj.0.P.weight"
    assert not torch.equal(after[P_key], torch.eye(128)) and module.computed
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert id(module.clip.visual.parametrizations.proj[0].P.weight) not in optimised
    assert optimised == {id(p) for p in module.clip.visual.ln_post.parameters()}


def test_fit_with_nothing_trainable_is_a_clear_error(loader):
    with pytest.raises(ValueError, match=r"nothing to train.*`finetune=\{'trainable': \[...\]\}`"):
        L.Trainer(max_epochs=1, **QUIET).fit(make_module(), loader)
    with pytest.raises(ValueError, match=r"`trainable` prefix 'visual.nope' matches no"):
        make_module(finetune={"trainable": ["visual.nope"]})


def test_bf16_mixed_precision(loader):
    fp32 = L.Trainer(**QUIET).test(make_module(), loader, verbose=False)[0]
    module = make_module()
    bf16 = L.Trainer(precision="bf16-mixed", **QUIET).test(module, loader, verbose=False)[0]
    assert module.computed and bf16.keys() == fp32.keys()
    assert all(torch.isfinite(torch.tensor(v)) for v in bf16.values())
    assert abs(bf16["test/accuracy"] - fp32["test/accuracy"]) <= 0.1
    assert projector(module.clip).dtype == torch.float32  # the edit itself stays float32


def test_module_bad_input():
    with pytest.raises(RequestError, match=r"\['starr'\].*classnames"):
        CLIPUnlearning(ForgetRequest(["starr", "moon"], DOMAINS, forget_classes=["starr"]), classnames=CLASSES,
                       model=tiny_clip(), arch="world-clip")
    with pytest.raises(RequestError, match="did you mean"):
        make_module(forget_classes=["starr"])
    with pytest.raises(ValueError, match=r"`arch`='ViT-B-322'.*did you mean"):
        CLIPUnlearning(**FORGET, arch="ViT-B-322")
    with pytest.raises(FileNotFoundError, match="`weights`="):
        CLIPUnlearning(**FORGET, arch="world-clip", weights="/nonexistent/w.safetensors")
    with pytest.raises(ValueError, match=r"unknown UnlearnConfig field\(s\) \['methd'\].*'method'"):
        make_module(unlearn={"methd": "text"})
    with pytest.raises(ValueError, match="`classnames` and `domains` are required"):
        CLIPUnlearning(**FORGET, model=tiny_clip(), arch="RN50")
    with pytest.raises(TypeError, match="strategy='ddp'"):
        pickle.dumps(make_module())  # what ddp_spawn would do


def test_deepcopy_keeps_the_edit(loader):
    import copy
    module = make_module()
    module.compute_edit()
    clone = copy.deepcopy(module)
    assert clone.computed and torch.equal(projector(clone.clip), projector(module.clip))


def test_model_from_an_architecture_and_local_weights_or_a_local_dir(tmp_path):
    from safetensors.torch import save_file
    reference = tiny_clip()
    weights = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(weights, tmp_path / "w.safetensors")
    folder = tmp_path / "local"
    folder.mkdir()
    save_file(weights, folder / "open_clip_model.safetensors")
    config = json.loads(embedded.CONFIG_PATH.read_text())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))

    by_path = CLIPUnlearning(**FORGET, arch="world-clip", weights=str(tmp_path / "w.safetensors"))
    by_dir = CLIPUnlearning(**FORGET, arch=f"local-dir:{folder}", classnames=list(CLASSES), domains=list(DOMAINS))
    for module in (by_path, by_dir):
        assert torch.equal(module.clip.visual.conv1.weight, reference.visual.conv1.weight)
        assert module.preprocess is not None and module.tokenizer is not None
    assert by_dir.hparams["arch"] == f"local-dir:{folder}" and by_path.hparams["weights"].endswith("w.safetensors")
    with pytest.raises(ValueError, match="loads the weights from its folder"):
        CLIPUnlearning(**FORGET, arch=f"local-dir:{folder}", weights="x", classnames=list(CLASSES),
                       domains=list(DOMAINS))


def test_option_groups_take_objects_or_dicts_and_are_saved_as_plain_data():
    by_dict = make_module(evaluation={"templates": ["a {c}."]}, finetune={"trainable": "visual.ln_post", "lr": 0.1})
    by_object = make_module(evaluation=Evaluation(templates=["a {c}."]),
                            finetune=FineTuning(trainable=["visual.ln_post"], lr=0.1))
    for module in (by_dict, by_object):
        assert module.evaluation.templates == ("a {c}.",) and module.evaluation.colours == embedded.Embedded.colours
        assert module.trainable == ("visual.ln_post",) and module.lr == 0.1 and module.weight_decay == 0.0
        assert module.hparams["finetune"] == {"trainable": ["visual.ln_post"], "lr": 0.1, "weight_decay": 0.0}
        assert module.hparams["evaluation"]["templates"] == ["a {c}."]
        json.dumps(dict(module.hparams))
    with pytest.raises(ValueError, match=r"unknown `finetune` field\(s\) \['learning_rate'\]"):
        make_module(finetune={"learning_rate": 0.1})
    with pytest.raises(ValueError, match=r"unknown `evaluation` field\(s\) \['template'\].*'templates'"):
        make_module(evaluation={"template": ["a {c}."]})
    with pytest.raises(TypeError, match="`evaluation` must be None, a dict .* instance of Evaluation, got list"):
        make_module(evaluation=["a {c}."])
    with pytest.raises(ValueError, match="`lr`=-1 must be a number >= 0"):
        make_module(finetune={"lr": -1})
    with pytest.raises(ValueError, match="`colour_templates` are required"):
        make_module(evaluation={"colours": ["red", "blue"]})
    with pytest.raises(TypeError, match="`self_check`=1 must be True or False"):
        make_module(self_check=1)
