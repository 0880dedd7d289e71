"""Helpers of the Lightning tests (tests/test_lightning.py, test_module.py, test_callback.py): a
random-init tiny "world-clip", a user's own zero-shot module, the rendered test world and a counter of
the edits the Lightning layer computes. Their fixtures (``loader``, ``counter``) are in conftest.py."""
from pathlib import Path

import lightning as L
import open_clip
import torch
import torch.nn.functional as F

import lightning_unlearn.integration as integration_mod
from lightning_unlearn import ForgetRequest, embedded, zeroshot
from lightning_unlearn.data import CLASSES, DOMAINS, World
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


def projector(clip) -> torch.Tensor:
    return clip.visual.parametrizations.proj[0].P.weight.detach().clone()


def plain_keys():
    return set(tiny_clip().state_dict())
