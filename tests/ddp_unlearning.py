"""Run by tests/test_lightning.py (not collected by pytest): CLIPUnlearning and the NullspaceUnlearning
callback under strategy="ddp" on 2 CPU processes (gloo). Lightning's ddp launcher re-runs this script
for rank 1. Each rank writes ``<out>/rank<r>.pt``: its projector weights and its test metrics, and the
projectors of a multimodal whole-domain edit and of a warm-started class edit (the prototype synthesis
shared by the two ranks).

    python tests/ddp_unlearning.py OUT_DIR [N_PER_CELL]
"""
import sys
from pathlib import Path

import lightning as L
import open_clip
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from lightning_unlearn import ForgetRequest, embedded, prototypes  # noqa: E402
from lightning_unlearn.callback import NullspaceUnlearning  # noqa: E402
from lightning_unlearn.data import World  # noqa: E402
from lightning_unlearn.data.datasets import WorldDataset  # noqa: E402
from lightning_unlearn.module import CLIPUnlearning  # noqa: E402
from lightning_helpers import FORGET, BATCH, SHARED_CONFIG, UserModule, tiny_clip  # noqa: E402


def main(out: Path, n_per_cell: int) -> None:
    torch.set_num_threads(1)
    loader = torch.utils.data.DataLoader(WorldDataset(World("test", n_per_cell)), batch_size=BATCH)
    kwargs = dict(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False)
    trainer = L.Trainer(**kwargs)
    module = CLIPUnlearning(**FORGET, unlearn={"method": "text"}, model=tiny_clip(), arch="world-clip")
    metrics = trainer.test(module, loader, verbose=False)[0]
    P_module = module.clip.visual.parametrizations.proj[0].P.weight.detach().clone()

    user = UserModule(tiny_clip(), open_clip.get_tokenizer(embedded.MODEL_NAME))
    request = ForgetRequest(user.classnames, user.domains, **FORGET)
    trainer = L.Trainer(callbacks=[NullspaceUnlearning(request, method="text")], **kwargs)
    user_metrics = trainer.test(user, loader, verbose=False)[0]
    P_callback = user.clip.visual.parametrizations.proj[0].P.weight.detach().clone()

    trainer = L.Trainer(**kwargs)  # multimodal: each rank synthesises half of every batch's prototypes
    synthesised, synthesize = [], prototypes.synthesize

    def counted(*a, **kw):  # the images this rank synthesises
        p = synthesize(*a, **kw)
        synthesised.append(p.cos.numel())
        return p
    prototypes.synthesize = counted
    shared = CLIPUnlearning(forget_domains=["sketch"], unlearn=SHARED_CONFIG, model=tiny_clip(), arch="world-clip")
    trainer.test(shared, loader, verbose=False)
    P_shared = shared.clip.visual.parametrizations.proj[0].P.weight.detach().clone()
    n_shared = sum(synthesised)
    warm = CLIPUnlearning(**FORGET, unlearn=SHARED_CONFIG | {"proto_start": "class"}, model=tiny_clip(),
                          arch="world-clip")  # the class stage of a warm start shared too
    L.Trainer(**kwargs).test(warm, loader, verbose=False)
    P_warm = warm.clip.visual.parametrizations.proj[0].P.weight.detach().clone()
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"rank": trainer.global_rank, "world_size": trainer.world_size, "module": metrics,
                "callback": user_metrics, "P_module": P_module, "P_callback": P_callback, "P_shared": P_shared,
                "P_warm": P_warm, "synthesised": n_shared},
               out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 2)
