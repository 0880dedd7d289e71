"""Lightning integration: the NullspaceUnlearning callback, checkpoints, DDP, the LightningCLI, the data
modules, the examples, and bad input (CLIPUnlearning alone: tests/test_module.py). A random-init tiny
"world-clip" and the text-only method keep it fast."""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_unlearn.integration as integration_mod
from lightning_unlearn import ForgetRequest, RequestError, edits, embedded, zeroshot
from lightning_unlearn.callback import NullspaceUnlearning
from lightning_unlearn.integration import UnsupportedStrategyError, check_strategy, compute_edit_
from lightning_unlearn.data import CLASSES, DOMAINS, World
from lightning_unlearn.edit import UnlearnConfig, edit_modules
from lightning_unlearn.metrics import UnlearningAccuracy
from lightning_unlearn.module import CLIPUnlearning

ROOT = Path(__file__).resolve().parents[1]
FORGET = dict(forget_classes=["star"], forget_domains=["sketch"])
BATCH = 40
N_PER_CELL = 2
#: A multimodal whole-domain edit kept short for the DDP test (tests/ddp_unlearning.py): 160 prototypes.
SHARED_CONFIG = {"proto_steps": 10}
QUIET = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False)


def tiny_clip():
    """The embedded architecture with seeded random weights (identical in every process)."""
    embedded.register()
    torch.manual_seed(0)
    return open_clip.create_model(embedded.MODEL_NAME).eval()


def tokenizer():
    return open_clip.get_tokenizer(embedded.MODEL_NAME)


def make_module(**kw):
    kw = {**FORGET, "unlearn": {"method": "text"}, "model": tiny_clip(), "arch": embedded.MODEL_NAME, **kw}
    return CLIPUnlearning(**kw)


class UserModule(L.LightningModule):
    """A user's own zero-shot module: it knows nothing about unlearning."""

    def __init__(self, clip, tokenizer, lr: float = 0.05):
        super().__init__()
        self.clip, self.tokenizer, self.lr = clip, tokenizer, lr
        self.classnames, self.domains = CLASSES, DOMAINS
        self.accuracy = UnlearningAccuracy(ForgetRequest(CLASSES, DOMAINS, **FORGET))

    def _classifier(self):
        return zeroshot.classifier(self.clip, self.tokenizer, self.classnames, ("a {c}.",))

    def on_fit_start(self):
        self.T = self._classifier()

    def on_test_start(self):
        self.T = self._classifier()

    def training_step(self, batch, batch_idx):
        h = F.normalize(self.clip.encode_image(batch[0]).float(), dim=-1)
        return F.cross_entropy(20 * h @ self.T, batch[1])

    def configure_optimizers(self):  # deliberately every parameter, the edit's frozen ones included
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def test_step(self, batch, batch_idx):
        h = F.normalize(self.clip.encode_image(batch[0]).float(), dim=-1)
        self.accuracy.update(h @ self.T, batch[1], batch[2])

    def on_test_epoch_end(self):
        self.log_dict({f"test/{k}": v for k, v in self.accuracy.compute().items()}, sync_dist=True)
        self.accuracy.reset()


def world_loader():
    """The rendered test world, rendered once, in batches of BATCH."""
    from lightning_unlearn.data.datasets import WorldDataset
    ds = WorldDataset(World("test", N_PER_CELL))
    items = [ds[i] for i in range(len(ds))]  # render once for every test
    return torch.utils.data.DataLoader(items, batch_size=BATCH)


def count_edits(monkeypatch) -> list:
    """Counts calls of the engine's unlearn_ made through the Lightning layer."""
    calls = []
    real = integration_mod.unlearn_

    def counting(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)
    monkeypatch.setattr(integration_mod, "unlearn_", counting)
    return calls


@pytest.fixture(scope="module")
def loader():
    return world_loader()


@pytest.fixture
def counter(monkeypatch):
    return count_edits(monkeypatch)


def projector(clip) -> torch.Tensor:
    return clip.visual.parametrizations.proj[0].P.weight.detach().clone()


def plain_keys():
    return set(tiny_clip().state_dict())


# ---- the callback -------------------------------------------------------------------------------

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


# ---- DDP, the CLI, data modules, examples ------------------------------------------------------

def test_ddp_two_cpu_processes_match_a_single_process(loader, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_unlearning.py"), str(tmp_path), str(N_PER_CELL)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert (r0["world_size"], r0["rank"], r1["rank"]) == (2, 0, 1)
    assert torch.equal(r0["P_module"], r1["P_module"]) and torch.equal(r0["P_callback"], r1["P_callback"])
    assert r0["module"] == r1["module"] and r0["callback"] == r1["callback"]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks: bit-equal projectors need the same reduction order
    try:
        module = make_module()
        single = L.Trainer(**QUIET).test(module, loader, verbose=False)[0]
        user = UserModule(tiny_clip(), tokenizer())
        request = ForgetRequest(CLASSES, DOMAINS, **FORGET)
        single_cb = L.Trainer(callbacks=[NullspaceUnlearning(request, method="text")], **QUIET).test(
            user, loader, verbose=False)[0]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(r0["P_module"], projector(module.clip))
    assert torch.equal(r0["P_shared"], r1["P_shared"])  # the synthesis shared by the ranks: the maps of one process
    assert r0["synthesised"] == r1["synthesised"] == 80  # each rank half of the 160 prototypes (40 cells x 4)
    torch.set_num_threads(1)
    try:
        shared = CLIPUnlearning(forget_domains=["sketch"], unlearn=SHARED_CONFIG, model=tiny_clip(),
                                arch=embedded.MODEL_NAME)
        shared.compute_edit()
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(r0["P_shared"], projector(shared.clip))
    assert r0["module"] == pytest.approx(single, nan_ok=True)
    assert r0["callback"] == pytest.approx(single_cb, nan_ok=True)


def test_lightning_cli_validates_a_tiny_config(tmp_path, monkeypatch):
    from lightning_unlearn.lightning_cli import main
    monkeypatch.setattr(sys, "argv", ["lightning_cli"])
    config = tmp_path / "tiny.yaml"
    config.write_text(f"""
seed_everything: 0
trainer: {{accelerator: cpu, devices: 1, logger: false, enable_checkpointing: false, enable_progress_bar: false,
          enable_model_summary: false, default_root_dir: {tmp_path}}}
model:
  arch: world-clip
  forget_classes: [star]
  unlearn: {{method: text}}
data:
  class_path: lightning_unlearn.datamodules.WorldDataModule
  init_args: {{n_per_cell: 1, batch_size: 40}}
""")
    cli = main(["validate", "--config", str(config)])
    assert isinstance(cli.model, CLIPUnlearning) and cli.model.computed
    logged = cli.trainer.callback_metrics
    assert {"val/forget_accuracy", "val/retain_accuracy", "val/unrelated_accuracy"} <= set(logged)
    assert (tmp_path / "config.yaml").is_file()
    with pytest.raises(SystemExit) as exit_:  # the shipped example config parses
        main(["validate", "--config", str(ROOT / "lightning_unlearn" / "configs" / "world.yaml"), "--print_config"])
    assert exit_.value.code == 0


def test_folder_data_module_matches_the_world_and_checks_label_order(tmp_path):
    from lightning_unlearn.data.datasets import write_world
    from lightning_unlearn.datamodules import FolderDataModule, WorldDataModule
    write_world(World("test", 1), tmp_path / "world")
    trainer = L.Trainer(**QUIET)
    from_world = trainer.test(make_module(), WorldDataModule(n_per_cell=1, batch_size=BATCH), verbose=False)[0]
    folder = FolderDataModule(tmp_path / "world", batch_size=BATCH, classnames=list(CLASSES), domains=list(DOMAINS))
    from_folder = trainer.test(make_module(evaluation={"colours": None}), folder, verbose=False)[0]
    assert from_folder == {k: v for k, v in from_world.items() if k != "test/unrelated_accuracy"}
    with pytest.raises(ValueError, match=r"data module's classnames \['arrow', 'circle'.*label i means"):
        trainer.test(make_module(), FolderDataModule(tmp_path / "world"), verbose=False)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        FolderDataModule(tmp_path / "missing")
    with pytest.raises(ValueError, match="`n_per_cell`=0"):
        WorldDataModule(n_per_cell=0)


@pytest.mark.skipif(not embedded.WEIGHTS_PATH.is_file(), reason="the embedded weights are not built yet")
@pytest.mark.parametrize("script", ["callback_on_existing_module.py", "evaluate_with_trainer.py"])
def test_examples_run(script, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--n-per-cell", "1", "--method", "text"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "forget_accuracy" in run.stdout and "retain_accuracy" in run.stdout
