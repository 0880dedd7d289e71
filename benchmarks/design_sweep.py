"""How the library's defaults were chosen: design variants side by side on six fixed requests.

    python benchmarks/design_sweep.py --json runs/design_sweep.json

Requests (fixed before results): global star, global hexagon; domain-specific star/sketch,
heart/photo; whole domain painting, sketch. Every variant is UnlearnConfig() with the listed
overrides; prototypes are synthesised once per (request, prototype settings) and reused across
variants (synthesis is deterministic for a seed, so this changes no number, only the run time).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.unlearning import prepare  # noqa: E402
from lightning_unlearn.zeroshot import request_accuracy  # noqa: E402
from lightning_unlearn import EditError, ForgetRequest, restore_, unlearn_  # noqa: E402

REQUESTS = [("global", {"forget_classes": ["star"]}), ("global", {"forget_classes": ["hexagon"]}),
            ("domain-specific", {"forget_classes": ["star"], "forget_domains": ["sketch"]}),
            ("domain-specific", {"forget_classes": ["heart"], "forget_domains": ["photo"]}),
            ("domain", {"forget_domains": ["painting"]}), ("domain", {"forget_domains": ["sketch"]})]
VARIANTS = {
    "paper: projector, protect classes": {"solver": "projector", "protect": "classes", "center": False},
    "paper: projector, no protection": {"solver": "projector", "protect": "none", "center": False},
    "CCUP regularized (multimodal)": {"solver": "regularized", "protect": "classes", "center": False},
    "two-sided, text only": {"method": "text"},
    "two-sided multimodal (default)": {},
    "  without the text stage M1": {"text_first": False},
    "  without attribute bank": {"retain_prompts": ()},
    "  pooled site (D x D)": {"site": "pooled"},
    "  margin 0.5": {"margin": 0.5},
    "  margin 1.0": {"margin": 1.0},
    "  sink margin 0.5": {"sink_margin": 0.5},
    "  image weight 1000": {"image_weight": 1000.0},
    "  8 prototypes per cell": {"n_prototypes": 8},
    "  150 prototype steps": {"proto_steps": 150},
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--n-per-cell", type=int, default=30)
    args = p.parse_args(argv)
    emb, batches, colour_T = prepare(args.n_per_cell)
    rows = []
    for paradigm, kw in REQUESTS:
        request = ForgetRequest(emb.classnames, emb.domains, **kw)
        before = request_accuracy(emb.model, emb, batches, request, colour_T)
        for name, overrides in VARIANTS.items():
            torch.manual_seed(0)
            t0 = time.perf_counter()
            try:
                unlearn_(emb.model, emb.tokenizer, request, progress=False, **overrides)
            except (ValueError, EditError) as e:  # refused (text-only two-sided on whole domains): no edit
                print(f"{request.describe()[:60]:60s} {name:36s} refused: {e}", flush=True)
                after = before
            else:
                after = request_accuracy(emb.model, emb, batches, request, colour_T)
                restore_(emb.model)
            seconds = time.perf_counter() - t0
            row = {"paradigm": paradigm, "forget": request.describe(), "variant": name.strip(),
                   "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
                   "before": before, "after": after, "seconds": round(seconds, 2)}
            rows.append(row)
            sc = after["same_class_other_domains_acc"]
            print(f"{request.describe()[:60]:60s} {name:36s} forget {before['forget_acc']:.3f}->{after['forget_acc']:.3f}"
                  f" retain {before['retain_acc']:.3f}->{after['retain_acc']:.3f}"
                  f" same {'-' if sc is None else format(sc, '.3f')} colour {after['unrelated_acc']:.3f}", flush=True)
    table = ["| variant | " + " | ".join(f"{p} {kw}" for p, kw in
                                         [(r[0], next(iter(r[1].values()))[0]) for r in REQUESTS]) + " |",
             "|---|" + "---|" * len(REQUESTS)]
    for name in VARIANTS:
        cells = []
        for r in (x for x in rows if x["variant"] == name.strip()):
            b, a = r["before"], r["after"]
            cells.append(f"{a['forget_acc']:.2f} / {100 * (b['retain_acc'] - a['retain_acc']):+.1f} / "
                         f"{100 * (b['unrelated_acc'] - a['unrelated_acc']):+.1f}")
        table.append(f"| {name.strip()} | " + " | ".join(cells) + " |")
    print("\ncells: forget accuracy after / retain drop (points) / colour drop (points)")
    print("\n".join(table))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows, "n_per_cell": args.n_per_cell}, indent=1))


if __name__ == "__main__":
    main()
