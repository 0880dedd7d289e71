"""Lightning integration: DDP, the LightningCLI, the data modules and the examples (the callback and
the module are tested in test_callback.py and test_module.py; their shared helpers are in
lightning_helpers.py). A random-init tiny "world-clip" and the text-only method keep them fast."""
import os
import subprocess
import sys

import lightning as L
import pytest
import torch
from lightning_helpers import (BATCH, FORGET, N_PER_CELL, QUIET, ROOT, SHARED_CONFIG, UserModule, make_module,
                               projector, tiny_clip, tokenizer)

from lightning_unlearn import ForgetRequest, embedded
from lightning_unlearn.callback import NullspaceUnlearning
from lightning_unlearn.data import CLASSES, DOMAINS, World
from lightning_unlearn.module import CLIPUnlearning


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
    assert torch.equal(r0["P_warm"], r1["P_warm"])
    assert r0["synthesised"] == r1["synthesised"] == 80  # each rank half of the 160 prototypes (40 cells x 4)
    torch.set_num_threads(1)
    try:
        shared = CLIPUnlearning(forget_domains=["sketch"], unlearn=SHARED_CONFIG, model=tiny_clip(),
                                arch=embedded.MODEL_NAME)
        shared.compute_edit()
        warm = CLIPUnlearning(**FORGET, unlearn=SHARED_CONFIG | {"proto_start": "class"}, model=tiny_clip(),
                              arch=embedded.MODEL_NAME)
        warm.compute_edit()
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(r0["P_shared"], projector(shared.clip))
    # a few images per rank (the class stage: 2 of one class's 4): the kernels round differently there
    torch.testing.assert_close(r0["P_warm"], projector(warm.clip), rtol=0, atol=1e-3)
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
