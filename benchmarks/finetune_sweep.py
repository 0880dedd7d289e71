"""Tuning the fine-tuning baseline for the embedded model, on the val split only.

    python benchmarks/finetune_sweep.py --json benchmarks/results/finetune_sweep.json \
        --classes star --grid 5e-5:1 1e-2:1 3e-3:1 1e-3:3

Each grid point ``LR:STEPS_PER_EPOCH`` runs :func:`benchmarks.finetune_baseline.finetune_unlearn`
(the official recipe with that learning rate and that many optimiser steps per epoch) on global
requests, and reports whether it met its own stopping criterion (synthetic accuracy <= 0.2), the
time and steps it took, and forget / retain / colour accuracy on ``World("val", n)`` afterwards
(classifier rebuilt from the fine-tuned text tower). The tuned recipe is the converged point with
the smallest retain drop. Synthetic images do not depend on the learning rate: they are
synthesised once per request and reused (``seconds`` then excludes synthesis; it is added back
from the first run's ``synthesis_seconds``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import finetune_baseline as fb  # noqa: E402
from benchmarks.unlearning import prepare  # noqa: E402
from lightning_unlearn.zeroshot import request_accuracy  # noqa: E402
from lightning_unlearn import ForgetRequest  # noqa: E402


def memoise_synthesis():
    original, cache = fb.synthesize_forget_images, {}

    def cached(model, T, targets, labels, recipe, gen):
        key = (targets.numpy().tobytes(), labels.numpy().tobytes(), recipe.high_prob, recipe.synth_steps,
               recipe.seed)
        if key not in cache:
            cache[key] = original(model, T, targets, labels, recipe, gen)
        return cache[key]
    fb.synthesize_forget_images = cached


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--n-per-cell", type=int, default=20)
    p.add_argument("--classes", default="star")
    p.add_argument("--grid", nargs="+", default=["5e-5:1", "1e-2:1", "3e-3:1", "1e-3:3"])
    args = p.parse_args(argv)
    memoise_synthesis()
    emb, batches, colour_T = prepare(args.n_per_cell, split="val")
    rows = json.loads(args.json.read_text())["rows"] if args.json.exists() else []
    synth = {}
    for c in args.classes.split(","):
        request = ForgetRequest(emb.classnames, emb.domains, forget_classes=[c])
        before = request_accuracy(emb.model, emb, batches, request, colour_T)
        for point in args.grid:
            lr, spe = point.split(":")
            recipe = fb.Recipe(lr=float(lr), steps_per_epoch=int(spe))
            torch.manual_seed(0)
            edited, info = fb.finetune_unlearn(emb.model, emb.tokenizer, request, emb.templates, recipe)
            synth.setdefault(c, info["synthesis_seconds"])
            info["seconds_to_criterion"] = info["seconds"] - info["synthesis_seconds"] + synth[c]
            after = request_accuracy(edited, emb, batches, request, colour_T)
            row = {"class": c, "lr": float(lr), "steps_per_epoch": int(spe), "split": "val", "before": before,
                   "after": after, **info}
            rows.append(row)
            print(f"{c:8s} lr {lr:6s} steps/epoch {spe:3s} converged {info['converged']} steps {info['steps']} "
                  f"epochs {info['epochs']} rollbacks {info['rollbacks']} synthetic {info['synthetic_acc_after']:.2f} "
                  f"forget {after['forget_acc']:.3f} retain {before['retain_acc']:.3f}->{after['retain_acc']:.3f} "
                  f"colour {before['unrelated_acc']:.3f}->{after['unrelated_acc']:.3f} "
                  f"{info['seconds_to_criterion']:.0f}s", flush=True)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"rows": rows, "n_per_cell": args.n_per_cell}, indent=1))


if __name__ == "__main__":
    main()
