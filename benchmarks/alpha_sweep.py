"""Controlled forgetting: forget and retain accuracy against alpha, one request per paradigm.

    python benchmarks/alpha_sweep.py --json runs/alpha_sweep.json --png runs/alpha_sweep.png

Each alpha recomputes the edit with the same seed; the (deterministic) prototypes are synthesised
once per request and reused, so only alpha changes
(``alpha`` scales the removed components: 0 = no edit, 1 = full removal). Depth beside it: the
output audit (``lightning_unlearn.audit``, probes fitted on the val split, scored on the test split),
``probe_balanced_acc`` in the plot, the whole audit in the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.unlearning import QUICK, depth, prepare  # noqa: E402
from lightning_unlearn.zeroshot import request_accuracy  # noqa: E402
from lightning_unlearn.data.datasets import rendered_batches  # noqa: E402
from lightning_unlearn import ForgetRequest, restore_, unlearn_  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--png", type=Path, default=None)
    p.add_argument("--n-per-cell", type=int, default=30)
    p.add_argument("--alphas", default="0,0.25,0.5,0.75,0.9,1")
    args = p.parse_args(argv)
    alphas = [float(a) for a in args.alphas.split(",")]
    emb, batches, colour_T = prepare(args.n_per_cell)
    fit_batches = rendered_batches("val", args.n_per_cell, emb.preprocess)
    curves = []
    for paradigm, kw in QUICK:
        request = ForgetRequest(emb.classnames, emb.domains, **kw)
        points, before = [], depth(emb.model, emb, request, fit_batches, batches)
        for alpha in alphas:
            torch.manual_seed(0)
            unlearn_(emb.model, emb.tokenizer, request, alpha=alpha, progress=False)
            m = request_accuracy(emb.model, emb, batches, request, colour_T)
            audit = depth(emb.model, emb, request, fit_batches, batches, before=before)  # a joint-site edit
            restore_(emb.model)
            points.append({"alpha": alpha, **m, "probe_balanced_acc": audit["probe_balanced_acc"], "audit": audit})
            print(f"{paradigm:16s} alpha {alpha:.2f} forget {m['forget_acc']:.3f} retain {m['retain_acc']:.3f} "
                  f"unrelated {m['unrelated_acc']:.3f} probe {audit['probe_balanced_acc']:.3f}", flush=True)
        curves.append({"paradigm": paradigm, "forget": request.describe(), "points": points})
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"curves": curves, "n_per_cell": args.n_per_cell}, indent=1))
    png = args.png or args.json.with_suffix(".png")
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), sharey=True)
    for ax, c in zip(axes, curves):
        a = [q["alpha"] for q in c["points"]]
        for key, style in [("forget_acc", "o-"), ("retain_acc", "s-"), ("unrelated_acc", "^--"),
                           ("probe_balanced_acc", "x:")]:
            ax.plot(a, [q[key] for q in c["points"]], style,
                    label="probe (depth)" if key.startswith("probe") else key.replace("_acc", ""))
        ax.set_title(c["forget"].split(" (")[0], fontsize=8)
        ax.set_xlabel("alpha")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    print(f"wrote {args.json} and {png}")


if __name__ == "__main__":
    main()
