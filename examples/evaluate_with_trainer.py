"""Evaluate unlearning with ``Trainer.test``: the CLIPUnlearning module on the embedded world.

    python examples/evaluate_with_trainer.py                                # forget `star` in sketches
    python examples/evaluate_with_trainer.py --forget-domains               # forget `star` everywhere
    python examples/evaluate_with_trainer.py --n-per-cell 3 --method text   # a quick run

"Before" is the same module with ``alpha=0`` (the identity edit, i.e. the original model); "after"
computes the edit in ``setup`` and tests it. Both log forget / retain / per-domain accuracy and the
unrelated colour task through :class:`~lightning_unlearn.metrics.UnlearningAccuracy`. The edited
module is then saved and reloaded with ``load_from_checkpoint`` (nothing is recomputed).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_unlearn.datamodules import WorldDataModule  # noqa: E402
from lightning_unlearn.module import CLIPUnlearning  # noqa: E402

KEYS = ["forget_accuracy", "retain_accuracy", "same_class_other_domains_accuracy", "unrelated_accuracy",
        "accuracy_photo", "accuracy_sketch", "accuracy_cartoon", "accuracy_painting"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-per-cell", type=int, default=20, help="test images per (class, domain) cell")
    p.add_argument("--forget-classes", nargs="+", default=["star"])
    p.add_argument("--forget-domains", nargs="*", default=["sketch"], help="none = every domain")
    p.add_argument("--method", choices=["multimodal", "text"], default="multimodal")
    p.add_argument("--precision", default="32-true", help="Trainer precision, e.g. bf16-mixed")
    args = p.parse_args(argv)

    names = dict(forget_classes=args.forget_classes, forget_domains=args.forget_domains or None)
    data = WorldDataModule(n_per_cell=args.n_per_cell)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=args.precision, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tempfile.mkdtemp())

    before = trainer.test(CLIPUnlearning(**names, unlearn={"alpha": 0.0, "method": "text"}), data, verbose=False)[0]
    module = CLIPUnlearning(**names, unlearn={"method": args.method})  # the embedded model (no arch / weights)
    after = trainer.test(module, data, verbose=False)[0]

    ckpt = Path(trainer.default_root_dir) / "unlearned.ckpt"
    trainer.save_checkpoint(ckpt)
    reloaded = CLIPUnlearning.load_from_checkpoint(ckpt, weights_only=False)
    assert reloaded.computed, "the reloaded module should carry the edit without recomputing it"
    again = trainer.test(reloaded, data, verbose=False)[0]

    print(f"\n{module.request.describe()} ({args.method}, {len(data.dataset('test'))} test images)")
    print(f"{'':36}{'before':>9}{'after':>9}{'reloaded':>10}")
    for key in KEYS:
        if f"test/{key}" in after:
            k = f"test/{key}"
            print(f"{key:36}{before[k]:9.3f}{after[k]:9.3f}{again[k]:10.3f}")
    return {"before": before, "after": after, "reloaded": again}


if __name__ == "__main__":
    main()
