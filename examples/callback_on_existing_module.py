"""Add unlearning to a LightningModule you already have: the NullspaceUnlearning callback.

    python examples/callback_on_existing_module.py                       # forget `star` in sketches
    python examples/callback_on_existing_module.py --n-per-cell 3 --method text   # a quick run

``ZeroShotClassifier`` below stands for your own module: it holds an open_clip model (any attribute
name; the callback finds it, or pass ``model_attr="..."``) and its tokenizer. The callback computes
the edit in ``setup`` and injects it as a frozen layer; your code does not change. The same test
set is evaluated without and with the callback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_unlearn import ForgetRequest, embedded, zeroshot  # noqa: E402
from lightning_unlearn.callback import NullspaceUnlearning  # noqa: E402
from lightning_unlearn.data import World  # noqa: E402
from lightning_unlearn.data.datasets import WorldDataset  # noqa: E402
from lightning_unlearn.metrics import UnlearningAccuracy  # noqa: E402


class ZeroShotClassifier(L.LightningModule):
    """A plain zero-shot classifier: nothing in it knows about unlearning."""

    def __init__(self, clip, tokenizer, classnames, domains, templates, request):
        super().__init__()
        self.clip, self.tokenizer = clip, tokenizer
        self.classnames, self.domains, self.templates = classnames, domains, templates
        self.accuracy = UnlearningAccuracy(request, classnames, domains)

    def on_test_start(self):
        self.T = zeroshot.classifier(self.clip, self.tokenizer, self.classnames, self.templates)

    def test_step(self, batch, batch_idx):
        images, cls, dom = batch[:3]
        h = F.normalize(self.clip.encode_image(images).float(), dim=-1)
        self.accuracy.update(h @ self.T, cls, dom)

    def on_test_epoch_end(self):
        self.log_dict({f"test/{k}": v for k, v in self.accuracy.compute().items()})
        self.accuracy.reset()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-per-cell", type=int, default=20, help="test images per (class, domain) cell")
    p.add_argument("--forget-classes", nargs="+", default=["star"])
    p.add_argument("--forget-domains", nargs="*", default=["sketch"], help="none = every domain")
    p.add_argument("--method", choices=["multimodal", "text"], default="multimodal")
    args = p.parse_args(argv)

    emb = embedded.load_embedded()
    request = ForgetRequest(emb.classnames, emb.domains, forget_classes=args.forget_classes,
                            forget_domains=args.forget_domains or None)
    loader = torch.utils.data.DataLoader(WorldDataset(World("test", args.n_per_cell)), batch_size=200)
    module = ZeroShotClassifier(emb.model, emb.tokenizer, emb.classnames, emb.domains, emb.templates, request)
    quiet = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                 enable_model_summary=False)

    before = L.Trainer(**quiet).test(module, loader, verbose=False)[0]
    unlearning = NullspaceUnlearning(request, method=args.method)  # tokenizer: found as module.tokenizer
    after = L.Trainer(callbacks=[unlearning], **quiet).test(module, loader, verbose=False)[0]

    print(f"\n{request.describe()}")
    print(f"{'':36}{'before':>9}{'after':>9}")
    for key in ["forget_accuracy", "retain_accuracy", "same_class_other_domains_accuracy", "accuracy"]:
        if f"test/{key}" in after:
            print(f"{key:36}{before[f'test/{key}']:9.3f}{after[f'test/{key}']:9.3f}")
    return {"before": before, "after": after}


if __name__ == "__main__":
    main()
