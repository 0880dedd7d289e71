"""Unlearning quality of every method on the embedded world, side by side, in one run.

    python benchmarks/unlearning.py --json runs/unlearning.json            # full (see README for time)
    python benchmarks/unlearning.py --json runs/unlearning-quick.json --quick

Requests (fixed before any result was seen):
  global           every class, one at a time (10 runs);
  domain-specific  8 (class, domain) pairs, two per domain: (star, sketch), (moon, sketch),
                   (heart, photo), (square, photo), (circle, cartoon), (cross, cartoon),
                   (arrow, painting), (hexagon, painting);
  domain           every domain, one at a time (4 runs).
Methods: text (text-only nullspace, 2512.14137), regularized (its regularised closed form),
multimodal (text + visual prototypes, 2512.14113: the library defaults), finetune (Kravets &
Namboodiri, benchmarks/finetune_baseline.py), and with --sites both edit sites for multimodal.
``--quick`` runs one request per paradigm on fewer images. Accuracies use the held-out test split.
Every run also records the depth audit (lightning_unlearn.audit) before and after the edit: linear
probes, k-NN, paraphrased prompts and retrieval on the test split, probes fitted on the val split
(same images per cell), at the image embedding, the pooled features and the middle block.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.finetune_baseline import finetune_unlearn  # noqa: E402
from lightning_unlearn import ForgetRequest, UnlearnConfig, restore_, unlearn_  # noqa: E402
from lightning_unlearn.audit import audit_features, extract  # noqa: E402
from lightning_unlearn.data import CLASSES, DOMAINS, QUICK_REQUESTS, rendered_batches  # noqa: E402
from lightning_unlearn.load import load_clip  # noqa: E402
from lightning_unlearn.zeroshot import classifier, evaluate, split_accuracy  # noqa: E402

DOMAIN_SPECIFIC = [("star", "sketch"), ("moon", "sketch"), ("heart", "photo"), ("square", "photo"),
                   ("circle", "cartoon"), ("cross", "cartoon"), ("arrow", "painting"), ("hexagon", "painting")]
REQUESTS = ([("global", {"forget_classes": [c]}) for c in CLASSES]
            + [("domain-specific", {"forget_classes": [c], "forget_domains": [d]}) for c, d in DOMAIN_SPECIFIC]
            + [("domain", {"forget_domains": [d]}) for d in DOMAINS])
QUICK = list(QUICK_REQUESTS)  # the demo's requests, one per paradigm
METHODS = {"text": {"method": "text"}, "regularized": {"method": "text", "solver": "regularized"},
           "multimodal": {}}


def measure(model, emb, batches, request, colour_T) -> dict:
    res = evaluate(model, emb.tokenizer, emb.classnames, emb.templates, batches, emb.domains, progress=False,
                   extra={"colour": (colour_T, lambda b: b[3])})
    return split_accuracy(res["correct"], res["total"], request) | {"unrelated_acc": res["colour_accuracy"]}


def prepare(n_per_cell: int):
    """The embedded model, the rendered held-out test set and the colour classifier."""
    torch.manual_seed(0)
    emb = load_clip("embedded")
    return emb, rendered_batches("test", n_per_cell, emb.preprocess), classifier(emb.model, emb.tokenizer, emb.colours,
                                                              emb.colour_templates)


def depth(model, emb, request, fit_batches, test_batches, features=None) -> dict:
    """The depth audit of ``model`` for ``request`` (``features``: the model's (fit, test) features,
    when already extracted)."""
    fit, test = features or (extract(model, fit_batches), extract(model, test_batches))
    return audit_features(model, emb.tokenizer, request, fit, test, templates=emb.templates)


def run(args) -> dict:
    emb, batches, colour_T = prepare(args.n_per_cell)
    fit_batches = rendered_batches("val", args.n_per_cell, emb.preprocess)
    model = emb.model
    unedited = extract(model, fit_batches), extract(model, batches)  # one extraction for every "before"
    methods = dict(METHODS)
    if args.sites:
        base = UnlearnConfig().site
        other = "pooled" if base == "joint" else "joint"
        methods[f"multimodal-{other}"] = {"site": other}
    if args.set:  # e.g. --set margin=1.0: every multimodal run with that config override
        methods["multimodal"] = dict(args.set)
    requests = [r for r in (QUICK if args.quick else REQUESTS) if not args.paradigms or r[0] in args.paradigms]
    names = args.methods.split(",") if args.methods else list(methods) + ["finetune"]
    runs = []
    t_start = time.perf_counter()
    for paradigm, kw in requests:
        request = ForgetRequest(emb.classnames, emb.domains, **kw)
        before = measure(model, emb, batches, request, colour_T)
        audit_before = depth(model, emb, request, fit_batches, batches, unedited)
        for name in names:
            if name == "finetune":
                edited, info = finetune_unlearn(model, emb.tokenizer, request, emb.templates,
                                                max_steps=args.finetune_steps)
                after, seconds, extra = measure(edited, emb, batches, request, colour_T), info["seconds"], info
                audit_after = depth(edited, emb, request, fit_batches, batches)
            else:
                u = unlearn_(model, emb.tokenizer, request, progress=False, **methods[name])
                after, seconds, extra = measure(model, emb, batches, request, colour_T), u.seconds, {
                    "rank": u.ranks.get("image")}
                audit_after = depth(model, emb, request, fit_batches, batches)
                restore_(model)
            row = {"paradigm": paradigm, "method": name, "forget": request.describe(),
                   **{f"{k}_before": before[k] for k in before}, **{f"{k}_after": after[k] for k in after},
                   "edit_seconds": round(seconds, 3), **{k: v for k, v in extra.items() if k != "seconds"},
                   "audit_before": audit_before, "audit_after": audit_after}
            runs.append(row)
            print(f"{paradigm:16s} {name:18s} forget {row['forget_acc_before']:.3f}->{row['forget_acc_after']:.3f} "
                  f"retain {row['retain_acc_before']:.3f}->{row['retain_acc_after']:.3f} "
                  f"unrelated {row['unrelated_acc_before']:.3f}->{row['unrelated_acc_after']:.3f} {seconds:.1f}s  "
                  f"probe {audit_before['probe_balanced_acc']:.2f}->{audit_after['probe_balanced_acc']:.2f} "
                  f"recall {audit_before['probe_recall']:.2f}->{audit_after['probe_recall']:.2f} "
                  f"paraphrase {audit_before['paraphrase_acc']:.2f}->{audit_after['paraphrase_acc']:.2f} "
                  f"| {request.describe()}", flush=True)
    return {"runs": runs, "n_per_cell": args.n_per_cell, "quick": args.quick, "defaults": asdict(UnlearnConfig()),
            "overrides": dict(args.set),
            "total_seconds": round(time.perf_counter() - t_start, 1)}


def summary(result: dict) -> tuple[str, dict]:
    rows, table = {}, []
    for r in result["runs"]:
        rows.setdefault((r["paradigm"], r["method"]), []).append(r)
    lines = ["| paradigm | method | runs | forget after (mean / worst) | retain drop (mean / worst) | "
             "same class other domains drop | unrelated drop (worst) | edit s (mean) | "
             "probe bal. acc raw after (mean / worst) | probe recall after (mean / worst) | "
             "paraphrase after (mean / worst) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (paradigm, method), rs in rows.items():
        drop = lambda k: [100 * (x[f"{k}_before"] - x[f"{k}_after"]) for x in rs  # noqa: E731
                          if x[f"{k}_before"] is not None]
        fa = [x["forget_acc_after"] for x in rs]
        sc = drop("same_class_other_domains_acc")
        s = {"forget_after_mean": sum(fa) / len(fa), "forget_after_worst": max(fa),
             "retain_drop_mean": sum(drop("retain_acc")) / len(rs), "retain_drop_worst": max(drop("retain_acc")),
             "same_class_drop_mean": sum(sc) / len(sc) if sc else None,
             "unrelated_drop_worst": max(drop("unrelated_acc")),
             "edit_seconds_mean": sum(x["edit_seconds"] for x in rs) / len(rs)}
        for key in ("probe_balanced_acc", "probe_recall", "paraphrase_acc"):
            v = [x["audit_after"][key] for x in rs]
            s |= {f"{key}_after_mean": sum(v) / len(v), f"{key}_after_worst": max(v)}
        table.append(s | {"paradigm": paradigm, "method": method, "runs": len(rs)})
        lines.append(f"| {paradigm} | {method} | {len(rs)} | {s['forget_after_mean']:.3f} / {s['forget_after_worst']:.3f}"
                     f" | {s['retain_drop_mean']:.2f} / {s['retain_drop_worst']:.2f} | "
                     f"{'-' if s['same_class_drop_mean'] is None else format(s['same_class_drop_mean'], '.2f')} | "
                     f"{s['unrelated_drop_worst']:.2f} | {s['edit_seconds_mean']:.2f} | "
                     + " | ".join(f"{s[k + '_after_mean']:.3f} / {s[k + '_after_worst']:.3f}"
                                  for k in ("probe_balanced_acc", "probe_recall", "paraphrase_acc")) + " |")
    return "\n".join(lines) + "\n\n" + depth_table(result["runs"]), {"summary": table}


DEPTH_KEYS = ("probe_balanced_acc", "probe_balanced_acc_normalised", "probe_recall", "probe_retain_acc",
              "knn_recall", "paraphrase_acc", "retrieval_precision", "probe_balanced_acc@pooled",
              "probe_recall@pooled", "probe_balanced_acc@block3", "probe_recall@block3")


def depth_table(runs: list[dict]) -> str:
    """Per run: the depth audit of the forgotten cells, before -> after."""
    keys = [k for k in DEPTH_KEYS if k in runs[0]["audit_after"]]
    lines = ["| method | forget | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for r in runs:
        b, a = r["audit_before"], r["audit_after"]
        lines.append(f"| {r['method']} | {r['forget'].split(' (')[0]} | "
                     + " | ".join(f"{fmt(b[k])} -> {fmt(a[k])}" for k in keys) + " |")
    return "\n".join(lines)


def _key_value(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    return key, json.loads(value)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--n-per-cell", type=int, default=None, help="test images per cell, and val images per cell for the audit probes (100 full, 30 quick)")
    p.add_argument("--methods", default=None, help="comma list of text,regularized,multimodal,finetune")
    p.add_argument("--sites", action="store_true", help="also run multimodal at the other edit site")
    p.add_argument("--finetune-steps", type=int, default=None, help="step cap of the baseline (default 30)")
    p.add_argument("--paradigms", default=None, help="comma list of global,domain-specific,domain (default all)")
    p.add_argument("--set", action="append", default=[], type=_key_value, metavar="KEY=JSON",
                   help="override an UnlearnConfig field for multimodal, e.g. --set margin=1.0 (repeatable)")
    args = p.parse_args(argv)
    args.paradigms = args.paradigms.split(",") if args.paradigms else None
    args.n_per_cell = args.n_per_cell or (30 if args.quick else 100)
    args.finetune_steps = args.finetune_steps or 30
    result = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))  # the raw runs first, whatever happens below
    table, summ = summary(result)
    result |= summ
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(table)
    print(f"total {result['total_seconds']} s; wrote {args.json}")


if __name__ == "__main__":
    main()
